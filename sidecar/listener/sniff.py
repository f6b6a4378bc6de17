"""What the listener filters read from the first bytes of a connection, without consuming them:
the tls_inspector (is it TLS? its SNI and offered ALPN list) and the http_inspector (HTTP/1.x
request line, h2c preface, or neither).

Both take the whole peeked prefix (MSG_PEEK returns everything received so far, each time) and
answer NEED_MORE, a negative (NOT_TLS / NOT_HTTP), TOO_LARGE (Envoy closes the connection) or the
result; any bytes give one of these, never an exception.

tls_inspector: Envoy feeds the bytes to BoringSSL's server handshake and stops it in the SNI
callback, so "TLS" means "a ClientHello BoringSSL gets as far as the servername callback with".
`parse_client_hello` checks what BoringSSL checks on that way: the record layer (handshake type, major
version 3, plaintext length <= 16384), the handshake header (client_hello, body <= 16384 bytes),
the ClientHello structure (RFC 8446 section 4.1.2: session id <= 32 bytes, a non-empty even
cipher suite list, compression methods including null, one well-formed extensions block with no
duplicate and nothing after it), version negotiation between TLS 1.0 and 1.3 (supported_versions
or legacy_version), and the server_name extension exactly as BoringSSL's extract_sni (one host_name
entry, 1..255 bytes, no NUL).  The ALPN list is read as Envoy's onALPN: a malformed list is ignored,
not an error.  Other extensions' contents are not validated (BoringSSL would refuse a few malformed
ones; real clients do not send those).

http_inspector: Envoy runs the request line through its Balsa parser (custom methods allowed).
Observed on envoy 1.40 and mirrored here: the method is checked byte by byte as it arrives (token
characters, ended by a space, tab, VT, FF or CR: anything else is "not HTTP" at once); the rest waits
for the line feed, then the line splits on bytes <= 0x20 into method, target and version, the target
must pass Envoy's isUrlValid and the version must be empty (HTTP/0.9) or HTTP/<digit>.<digit>;
HTTP/1.1 gives "http/1.1", any other valid version "http/1.0".  No line feed within 8192 bytes
closes the connection (http_inspector.read_error)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Sniff(enum.Enum):
    NEED_MORE = "need_more"
    NOT_TLS = "not_tls"
    NOT_HTTP = "not_http"
    # The limit was reached with the answer still unknown: Envoy closes the connection
    # (tls_inspector.client_hello_too_large, http_inspector.read_error).
    TOO_LARGE = "too_large"


NEED_MORE = Sniff.NEED_MORE
NOT_TLS = Sniff.NOT_TLS
NOT_HTTP = Sniff.NOT_HTTP
TOO_LARGE = Sniff.TOO_LARGE


@dataclass(frozen=True, slots=True)
class ClientHello:
    """A ClientHello's server_name (lowercased, "" when absent) and offered ALPN protocols."""

    server_name: str = ""
    alpn: tuple[str, ...] = ()


# -- TLS --------------------------------------------------------------------------------------------

TLS_MAX_CLIENT_HELLO = 16384  # tls_inspector's default max_client_hello_size
_MAX_PLAINTEXT = 16384  # SSL3_RT_MAX_PLAIN_LENGTH
_MAX_HANDSHAKE = 16384  # BoringSSL's ssl_max_handshake_message_len while the server reads a ClientHello
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
_TLS_VERSIONS = frozenset({0x0301, 0x0302, 0x0303, 0x0304})  # Envoy: TLS1_VERSION .. TLS1_3_VERSION


class _Bad(Exception):
    """Malformed input (internal: becomes NOT_TLS)."""


class _Reader:
    """A bounds-checked cursor over bytes (BoringSSL's CBS)."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def left(self) -> int:
        return self.end - self.pos

    def u8(self) -> int:
        if self.pos + 1 > self.end:
            raise _Bad
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        if self.pos + 2 > self.end:
            raise _Bad
        self.pos += 2
        return int.from_bytes(self.data[self.pos - 2 : self.pos], "big")

    def take(self, n: int) -> _Reader:
        if self.pos + n > self.end:
            raise _Bad
        sub = _Reader(self.data, self.pos, self.pos + n)
        self.pos += n
        return sub

    def bytes(self) -> bytes:
        return self.data[self.pos : self.end]


def parse_client_hello(data: bytes, max_size: int = TLS_MAX_CLIENT_HELLO) -> ClientHello | Sniff:
    """The ClientHello at the start of `data`: NEED_MORE, NOT_TLS, TOO_LARGE (still incomplete after
    `max_size` bytes, Envoy's max_client_hello_size) or the ClientHello."""
    result = _client_hello(data[:max_size])
    if result is NEED_MORE and len(data) >= max_size:
        return TOO_LARGE
    return result


def _client_hello(data: bytes) -> ClientHello | Sniff:
    # Reassemble the handshake message from as many records as it spans (RFC 8446 section 5.1).
    message = bytearray()
    pos = 0
    need: int | None = None  # handshake body length, once its header is in
    for _ in range(len(data) // 5 + 1):  # each record consumes at least its 5-byte header
        if len(data) - pos < 5:
            return NEED_MORE
        ctype, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3 : pos + 5], "big")
        if ctype != 22 or major != 3 or length > _MAX_PLAINTEXT or length == 0:
            return NOT_TLS
        if len(data) - pos - 5 < length:
            # Partial record: only its header is checked until the rest arrives (BoringSSL opens
            # whole records), but a handshake header in a previous record may already be refused.
            return NEED_MORE
        message += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if need is None and len(message) >= 4:
            if message[0] != 1:  # the first handshake message must be client_hello
                return NOT_TLS
            need = int.from_bytes(message[1:4], "big")
            if need > _MAX_HANDSHAKE:
                return NOT_TLS
        if need is not None and len(message) >= 4 + need:
            # Bytes after the ClientHello (a second message) are not our business here.
            try:
                return _parse_body(bytes(message[4 : 4 + need]))
            except _Bad:
                return NOT_TLS
    return NEED_MORE


def _parse_body(body: bytes) -> ClientHello | Sniff:
    r = _Reader(body)
    legacy_version = r.u16()
    r.take(32)  # random
    session_id = r.take(r.u8())
    if session_id.left() > 32:
        raise _Bad
    suites = r.take(r.u16())
    if suites.left() < 2 or suites.left() % 2:
        raise _Bad
    compression = r.take(r.u8())
    if compression.left() < 1 or 0 not in compression.bytes():
        raise _Bad
    extensions: dict[int, _Reader] = {}
    if r.left():
        block = r.take(r.u16())
        if r.left():
            raise _Bad  # trailing data after the extensions
        for _ in range(block.left() // 4 + 1):
            if not block.left():
                break
            kind = block.u16()
            if kind in extensions:
                raise _Bad  # tls1_check_duplicate_extensions
            extensions[kind] = block.take(block.u16())
    alpn = _alpn(extensions.get(_EXT_ALPN))
    server_name = _server_name(extensions.get(_EXT_SERVER_NAME))
    if not _negotiable(legacy_version, extensions.get(_EXT_SUPPORTED_VERSIONS)):
        raise _Bad
    return ClientHello(server_name, alpn)


def _alpn(ext: _Reader | None) -> tuple[str, ...]:
    """Envoy's Filter::onALPN: a malformed list sets nothing ("let the real TLS stack do it")."""
    if ext is None:
        return ()
    try:
        names = ext.take(ext.u16())
        if ext.left() or names.left() < 2:
            return ()
        out = []
        for _ in range(names.left()):
            if not names.left():
                break
            n = names.u8()
            if n == 0:
                return ()
            out.append(names.take(n).bytes().decode("latin-1"))
        return tuple(out)
    except _Bad:
        return ()


def _server_name(ext: _Reader | None) -> str:
    """BoringSSL's extract_sni: exactly one entry, of type host_name, 1..255 bytes, no NUL."""
    if ext is None:
        return ""
    names = ext.take(ext.u16())
    name_type = names.u8()
    host = names.take(names.u16())
    if names.left() or ext.left():
        raise _Bad
    raw = host.bytes()
    if name_type != 0 or not raw or len(raw) > 255 or b"\x00" in raw:
        raise _Bad
    # Envoy lowercases the requested server name (ASCII only) before matching.
    return raw.lower().decode("latin-1")


def _negotiable(legacy_version: int, ext: _Reader | None) -> bool:
    """Some version in TLS 1.0 ..= 1.3 is on offer (BoringSSL's negotiate_version)."""
    if ext is None:
        if legacy_version >> 8 != 3:
            return False
        return legacy_version >= 0x0301
    versions = ext.take(ext.u8())
    if ext.left() or not versions.left() or versions.left() % 2:
        raise _Bad
    offered = {versions.u16() for _ in range(versions.left() // 2)}
    return bool(offered & _TLS_VERSIONS)


# -- HTTP -------------------------------------------------------------------------------------------

H2C_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP_MAX_INSPECT = 8192  # http_inspector's MAX_INSPECT_SIZE
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_METHOD_END = frozenset(b" \t\x0b\x0c\r")  # C isspace() but the line feed, which ends the line
_HOST_CHARS = frozenset(b"!$%&'()*+,-.:;=@[]_~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def detect_http(data: bytes) -> str | Sniff:
    """"http/1.1", "http/1.0", "h2c", NOT_HTTP, NEED_MORE or TOO_LARGE for a connection's first bytes."""
    if not data:
        return NEED_MORE
    n = min(len(data), len(H2C_PREFACE))
    if data[:n] == H2C_PREFACE[:n]:
        return "h2c" if n == len(H2C_PREFACE) else NEED_MORE
    if data[0] in b"\r\n":
        return NOT_HTTP
    data = data[:HTTP_MAX_INSPECT]
    end = data.find(b"\n")
    line = data if end < 0 else data[:end]
    # The method, byte by byte as it arrives.
    for i, c in enumerate(line):
        if c in _TCHAR:
            continue
        if c in _METHOD_END and i > 0:
            break
        return NOT_HTTP
    if end < 0:
        return TOO_LARGE if len(data) >= HTTP_MAX_INSPECT else NEED_MORE
    return _request_line(line)


def _request_line(line: bytes) -> str | Sniff:
    tokens = _split(line)
    if len(tokens) < 2:
        return NOT_HTTP
    method, target = tokens[0], tokens[1]
    version = tokens[2] if len(tokens) > 2 else b""
    if len(tokens) > 3 or not _url_valid(target, method == b"CONNECT"):
        return NOT_HTTP
    if version and not (
        len(version) == 8 and version[:5] == b"HTTP/" and version[5:6].isdigit()
        and version[6] == 0x2E and version[7:8].isdigit()
    ):
        return NOT_HTTP
    return "http/1.1" if version == b"HTTP/1.1" else "http/1.0"


def _split(line: bytes) -> list[bytes]:
    """Method, target, then the rest as the version (trailing whitespace dropped); separators are
    bytes <= 0x20, as Balsa splits the first line.  More than three parts means junk after the version."""
    parts: list[bytes] = []
    i, n = 0, len(line)
    for _ in range(3):
        while i < n and line[i] <= 0x20:
            i += 1
        if i >= n:
            break
        j = i
        while j < n and line[j] > 0x20:
            j += 1
        parts.append(line[i:j])
        i = j
    while i < n and line[i] <= 0x20:
        i += 1
    if i < n:
        parts.append(line[i:])
    return parts


def _path_char(c: int) -> bool:
    return c in (9, 12) or 0x21 <= c <= 0x7E


def _url_valid(url: bytes, is_connect: bool) -> bool:
    """Envoy's isUrlValid (balsa_parser.cc), which copies http-parser: origin-form, asterisk,
    absolute-form (scheme://host...) or, for CONNECT, authority-form."""
    if not url:
        return False
    if url[0] in b"/*":
        return all(_path_char(c) for c in url[1:])
    rest = url
    if not is_connect:
        if not chr(url[0]).isascii() or not chr(url[0]).isalpha():
            return False
        i = 1
        while i < len(url) and (chr(url[i]).isascii() and (chr(url[i]).isalnum() or url[i] in b"+-.")):
            i += 1
        rest = url[i:]
        if not rest.startswith(b"://"):
            return False
        rest = rest[3:]
    cut = len(rest)
    for k, c in enumerate(rest):
        if c in b"/?":
            cut = k
            break
    host, path = rest[:cut], rest[cut:]
    return all(c in _HOST_CHARS for c in host) and b"@@" not in host and all(_path_char(c) for c in path)

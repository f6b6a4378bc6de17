"""HTTP/1.1 wire format: what bytes a head becomes, and which bytes are not acceptable.

Parsing itself is llhttp (httptools) in strict mode, driven by http/protocol.py; this module owns the
serialisation side and the validation llhttp leaves to us (RFC 9110 field names, RFC 9112 section 6.3
message framing, hop-by-hop headers).  No sockets, no asyncio."""

from __future__ import annotations

from http import HTTPStatus

from sidecar.http.events import Headers

# RFC 9110 section 7.6.1 + Envoy's ConnectionManagerUtility: connection-specific headers a proxy
# must not forward.  transfer-encoding is re-derived by each hop; `te` is kept only as "trailers".
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)
HOP_BY_HOP_RESPONSE = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


def _reason(code: int) -> bytes:
    try:
        return HTTPStatus(code).phrase.encode()
    except ValueError:
        return b"Unknown"


# Status lines built once (uvicorn's STATUS_LINE): `HTTP/1.1 200 OK\r\n`.
STATUS_LINE: dict[int, bytes] = {
    c: b"HTTP/1.1 %d %s\r\n" % (c, _reason(c)) for c in range(100, 600)
}
REASON: dict[int, bytes] = {c: _reason(c) for c in range(100, 600)}

# RFC 9110 section 5.6.2 token characters: the only bytes allowed in a field name.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def valid_header_name(name: bytes) -> bool:
    if not name:
        return False
    for c in name:
        if c not in _TCHAR:
            return False
    return True


def valid_header_value(value: bytes) -> bool:
    """RFC 9110 section 5.5: no CR, LF or NUL inside a field value."""
    return b"\r" not in value and b"\n" not in value and b"\x00" not in value


def encode_response_head(status: int, headers: Headers) -> bytes:
    line = STATUS_LINE.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
    parts = [line]
    for k, v in headers:
        parts.append(k)
        parts.append(b": ")
        parts.append(v)
        parts.append(b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def encode_request_head(method: bytes, path: bytes, authority: bytes, headers: Headers) -> bytes:
    # Envoy writes :authority as `host` first, then the other headers in order.
    parts = [method, b" ", path, b" HTTP/1.1\r\nhost: ", authority, b"\r\n"]
    for k, v in headers:
        parts.append(k)
        parts.append(b": ")
        parts.append(v)
        parts.append(b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

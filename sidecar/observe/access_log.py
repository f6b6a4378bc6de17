"""Envoy's access log format strings (SubstitutionFormatString): compiled once, rendered per log line.

`compile_text(fmt)` parses a format string into literal and command parts at translate time (an
unknown or malformed command raises FormatError, which translation turns into a ConfigError with
the field path); `TextFormatter.render(rec)` and `JsonFormatter.render(rec)` turn one `LogRecord`
into a line.  The record is filled by the adapters (observe/access_log_emit.py) when a stream or a
TCP connection ends; this module only reads it.

Pure: no I/O, no clock (the record carries the start time), no asyncio.  Semantics follow Envoy's
substitution_formatter / stream_info_formatter: a missing value prints "-" in text and null in
JSON, `%%` is a literal percent, `%CMD(arg):N%` truncates to N characters, and numbers stay numbers
in json_format (RESPONSE_CODE, BYTES_*, DURATION ...)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from sidecar.observe.access_log_time import StartTimeFormat, compile_start_time

# Envoy's default format (configuration/observability/access_log/usage: "Default Format String").
DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

# Envoy's response flags (ResponseFlagUtils' table; the values response_flag_filter accepts).
# fmt: off
FLAG_ORDER = (
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR", "UDO",
)
# fmt: on

Value = str | int | None


class FormatError(ValueError):
    """A format string Envoy would refuse (the message is Envoy's where it has one)."""


class HeaderSource(Protocol):
    def get(self, name: bytes) -> bytes | None: ...


class PeerCert(Protocol):
    @property
    def uri_sans(self) -> tuple[str, ...]: ...
    @property
    def subject(self) -> str: ...


class LogRecord:
    """What one access log line may print: filled by the adapter at stream / connection end.
    Times are seconds (floats) relative to the start; None means "not known" (printed "-").

    No __slots__ on purpose: the defaults live on the class, so a record costs only the attributes
    its adapter sets (a TCP record sets a third of them)."""

    method = path = authority = scheme = b""
    request_headers: HeaderSource | None = None
    response_headers: HeaderSource | None = None
    protocol: str | None = None
    response_code = 0
    response_flags: list[str] | None = None
    response_code_details: str | None = None
    connection_termination_details: str | None = None
    upstream_transport_failure_reason: str | None = None
    bytes_received = 0
    bytes_sent = 0
    duration: float | None = None
    request_duration: float | None = None
    response_duration: float | None = None
    upstream_host: str | None = None
    upstream_cluster: str | None = None
    upstream_cluster_raw: str | None = None
    upstream_local: str | None = None
    downstream_local: str | None = None
    downstream_remote: str | None = None
    downstream_direct_remote: str | None = None
    requested_server_name: str | None = None
    route_name: str | None = None
    peer: PeerCert | None = None
    local_uri_sans: tuple[str, ...] = ()
    upstream_peer_uri_sans: tuple[str, ...] = ()
    tls_version: str | None = None
    is_health_check = False
    # The HCM's tracing decision was ServiceForced (x-envoy-force-trace: x-request-id marked 'a').
    trace_forced = False

    def __init__(self, start_ns: int = 0) -> None:
        self.start_ns = start_ns

    def request_header(self, name: bytes) -> bytes | None:
        """A request header by lowercase name, the pseudo-headers (:method, :path ...) included."""
        if name[:1] == b":":
            v = _PSEUDO.get(name)
            if v is None:
                return None
            got: bytes = getattr(self, v)
            return got or None
        h = self.request_headers
        return h.get(name) if h is not None else None


_PSEUDO = {b":method": "method", b":path": "path", b":authority": "authority", b":scheme": "scheme"}


# -- commands ------------------------------------------------------------------------------------
Getter = Callable[[LogRecord], Value]


def _ms(x: float | None) -> int | None:
    # Envoy prints durations as whole milliseconds, truncated (std::chrono::duration_cast).
    return None if x is None else int(x * 1000)


def _without_port(addr: str | None) -> str | None:
    if addr is None:
        return None
    if addr.startswith("["):
        return addr[1 : addr.find("]")]
    i = addr.rfind(":")
    return addr[:i] if i > 0 and addr.count(":") == 1 else addr


def _flags(rec: LogRecord) -> str:
    f = rec.response_flags
    if not f:
        return "-"  # Envoy prints "-" (not null) for no flags
    # In the order they were raised: Envoy 1.40 keeps them in a vector (StreamInfoImpl::setResponseFlag).
    return ",".join(f)


def _first(sans: tuple[str, ...]) -> str | None:
    # Envoy joins several SANs with ','.
    return ",".join(sans) if sans else None


def _peer_sans(rec: LogRecord) -> str | None:
    return _first(rec.peer.uri_sans) if rec.peer is not None else None


def _peer_subject(rec: LogRecord) -> str | None:
    return (rec.peer.subject or None) if rec.peer is not None else None


# %HOSTNAME%: gethostname(), read once as Envoy does (os.uname is the same system call's answer).
_HOSTNAME = os.uname().nodename


def _hostname(rec: LogRecord) -> str:
    return _HOSTNAME


# name -> getter.  (Every other command Envoy knows is refused by compile_text.)
COMMANDS: Mapping[str, Getter] = {
    "PROTOCOL": lambda r: r.protocol,
    "RESPONSE_CODE": lambda r: r.response_code,
    "RESPONSE_FLAGS": _flags,
    "RESPONSE_CODE_DETAILS": lambda r: r.response_code_details,
    "CONNECTION_TERMINATION_DETAILS": lambda r: r.connection_termination_details,
    "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda r: r.upstream_transport_failure_reason,
    "BYTES_RECEIVED": lambda r: r.bytes_received,
    "BYTES_SENT": lambda r: r.bytes_sent,
    "DURATION": lambda r: _ms(r.duration),
    "REQUEST_DURATION": lambda r: _ms(r.request_duration),
    "RESPONSE_DURATION": lambda r: _ms(r.response_duration),
    "UPSTREAM_HOST": lambda r: r.upstream_host,
    "UPSTREAM_REMOTE_ADDRESS": lambda r: r.upstream_host,
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda r: _without_port(r.upstream_host),
    "UPSTREAM_CLUSTER": lambda r: r.upstream_cluster,
    "UPSTREAM_CLUSTER_RAW": lambda r: r.upstream_cluster_raw,
    "UPSTREAM_LOCAL_ADDRESS": lambda r: r.upstream_local,
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda r: _without_port(r.upstream_local),
    "DOWNSTREAM_LOCAL_ADDRESS": lambda r: r.downstream_local,
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda r: _without_port(r.downstream_local),
    "DOWNSTREAM_REMOTE_ADDRESS": lambda r: r.downstream_remote,
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda r: _without_port(r.downstream_remote),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": lambda r: r.downstream_direct_remote,
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": lambda r: _without_port(r.downstream_direct_remote),
    "REQUESTED_SERVER_NAME": lambda r: r.requested_server_name or None,
    "ROUTE_NAME": lambda r: r.route_name or None,
    "DOWNSTREAM_PEER_URI_SAN": _peer_sans,
    "DOWNSTREAM_PEER_SUBJECT": _peer_subject,
    "DOWNSTREAM_LOCAL_URI_SAN": lambda r: _first(r.local_uri_sans),
    "DOWNSTREAM_TLS_VERSION": lambda r: r.tls_version,
    "UPSTREAM_PEER_URI_SAN": lambda r: _first(r.upstream_peer_uri_sans),
    "HOSTNAME": _hostname,
}
# Commands that take an argument (REQ/RESP/TRAILER: a header; START_TIME: a strftime format).
_ARG_COMMANDS = frozenset(("REQ", "RESP", "TRAILER", "START_TIME"))

# %COMMAND(arg):N%, as Envoy's SubstitutionFormatParser reads it: the argument is everything up to
# the first `)` that closes the command (so START_TIME may hold `%` specifiers).
_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\((.*?)\))?(?::([0-9]+))?%", re.S)


class Literal(str):
    """A literal piece of a format string."""


class Command:
    """One compiled `%COMMAND(arg):N%`."""

    __slots__ = ("arg", "get", "max_length", "name", "start")

    def __init__(self, name: str, arg: str, max_length: int | None) -> None:
        self.name = name
        self.arg = arg
        self.max_length = max_length
        self.start: StartTimeFormat | None = None
        self.get: Getter
        if name == "START_TIME":
            self.start = compile_start_time(arg)
            try:
                self.start.render(0)  # strftime refuses some texts (an embedded NUL): refuse them now
            except ValueError as exc:
                raise FormatError(f"Invalid START_TIME format {arg!r}: {exc}") from None
            self.get = self.start.render_record
        elif name in ("REQ", "RESP", "TRAILER"):
            self.get = _header_getter(name, arg)
        else:
            self.get = COMMANDS[name]

    def value(self, rec: LogRecord) -> Value:
        v = self.get(rec)
        n = self.max_length
        if n is not None and isinstance(v, str) and len(v) > n:
            v = v[:n]
        return v


# An RFC 9110 token, with a leading ':' for pseudo-headers; empty is allowed (it finds nothing).
_HEADER_NAME = re.compile(r":?[A-Za-z0-9!#$&'*+.^_`|~-]*")


def _request_fetcher(name: bytes) -> Callable[[LogRecord], bytes | None]:
    """One request header, resolved at compile time: a pseudo-header reads the record's field."""
    if name[:1] == b":":
        attr = _PSEUDO.get(name)
        if attr is None:
            return lambda r: None
        return lambda r: getattr(r, attr) or None

    def header(r: LogRecord) -> bytes | None:
        h = r.request_headers
        return h.get(name) if h is not None else None

    return header


def _header_getter(kind: str, arg: str) -> Getter:
    names = arg.split("?")
    if len(names) > 2:
        raise FormatError(f"More than 1 alternative header specified in token: {arg}")
    if not all(_HEADER_NAME.fullmatch(n) for n in names):
        raise FormatError("Invalid header configuration. Format string contains invalid characters.")
    main = names[0].lower().encode("latin-1")
    alt = names[1].lower().encode("latin-1") if len(names) == 2 else None
    if kind == "TRAILER":
        return lambda r: None  # HTTP/1.1 trailers are not kept by sidecar: always "-"
    if kind == "REQ":
        first, second = _request_fetcher(main), _request_fetcher(alt) if alt is not None else None

        def req(r: LogRecord) -> Value:
            v = first(r)
            if v is None and second is not None:
                v = second(r)
            return None if v is None else v.decode("latin-1")

        return req

    def resp(r: LogRecord) -> Value:
        h = r.response_headers
        if h is None:
            return None
        v = h.get(main)
        if v is None and alt is not None:
            v = h.get(alt)
        return None if v is None else v.decode("latin-1")

    return resp


Part = Literal | Command

# Commands that take an optional parameter Envoy knows but sidecar does not implement (and never a
# length): REQUESTED_SERVER_NAME(ORIG_OR_HOST ...), RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES).
_NO_LENGTH = frozenset(("START_TIME", "REQUESTED_SERVER_NAME", "RESPONSE_CODE_DETAILS"))


def _check_syntax(name: str, arg: str | None, length: str | None) -> None:
    """Envoy's CommandSyntaxChecker, with its messages."""
    if name not in COMMANDS and name not in _ARG_COMMANDS:
        raise FormatError(f"Not supported field in StreamInfo: {name}")
    if name in ("REQ", "RESP", "TRAILER"):
        if not arg:
            raise FormatError(f"{name} requires parameters")
        return
    if name in _NO_LENGTH:
        if length is not None:
            raise FormatError(f"{name} does not allow length to be specified.")
        if arg and name != "START_TIME":
            raise FormatError(f"{name}({arg}) is not supported by sidecar yet")
        return
    if arg is not None or length is not None:
        raise FormatError(f"{name} does not take any parameters or length")


def parse(fmt: str) -> list[Part]:
    """The parts of a format string; FormatError for what Envoy refuses."""
    parts: list[Part] = []
    lit: list[str] = []
    i = 0
    n = len(fmt)
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            lit.append(fmt[i:])
            break
        lit.append(fmt[i:j])
        if fmt.startswith("%%", j):
            lit.append("%")  # Envoy's escape for a literal percent
            i = j + 2
            continue
        m = _COMMAND.match(fmt, j)
        if m is None:
            raise FormatError(f"Incorrect configuration: {fmt}. Couldn't find valid command at position {j}")
        name, arg, length = m.group(1), m.group(2), m.group(3)
        _check_syntax(name, arg, length)
        if lit:
            text = "".join(lit)
            if text:
                parts.append(Literal(text))
            lit = []
        parts.append(Command(name, arg or "", int(length) if length is not None else None))
        i = m.end()
    text = "".join(lit)
    if text:
        parts.append(Literal(text))
    return parts


def _compile_text(parts: tuple[Part, ...], empty: str) -> Callable[[LogRecord], str]:
    """One function per format: `f"{L0}{E if (v1 := G1(rec)) is None else v1}..."`, built once.
    The source holds only generated names (the literals and getters are passed in, never spliced
    into the code), and an f-string with walrus-bound values is about twice as fast as a loop over
    the parts.  Ints format themselves; a max length truncates the text."""
    env: dict[str, Any] = {"E": empty}
    pieces: list[str] = []
    for i, p in enumerate(parts):
        if isinstance(p, Literal):
            env[f"L{i}"] = str(p)
            pieces.append(f"{{L{i}}}")
            continue
        assert isinstance(p, Command)
        env[f"G{i}"] = p.get
        if p.max_length is None:
            pieces.append(f"{{E if (v{i} := G{i}(rec)) is None else v{i}}}")
        else:
            pieces.append(f"{{E if (v{i} := G{i}(rec)) is None else str(v{i})[:{p.max_length:d}]}}")
    source = 'def render(rec):\n    return f"' + "".join(pieces) + '"\n'
    exec(compile(source, "<access log format>", "exec"), env)  # generated names only, see above
    fn: Callable[[LogRecord], str] = env["render"]
    return fn


class TextFormatter:
    """text_format / text_format_source / the legacy `format`: one line of text."""

    __slots__ = ("omit_empty", "parts", "render", "source")

    def __init__(self, fmt: str, omit_empty: bool = False) -> None:
        self.source = fmt
        self.parts = tuple(parse(fmt))
        self.omit_empty = omit_empty
        self.render: Callable[[LogRecord], str] = _compile_text(self.parts, "" if omit_empty else "-")


JsonTemplate = Any  # nested dicts/lists of compiled values


class _JsonString:
    """A json_format string value: one command alone keeps its type; anything else is a string."""

    __slots__ = ("parts", "single")

    def __init__(self, fmt: str) -> None:
        self.parts = tuple(parse(fmt))
        self.single = self.parts[0] if len(self.parts) == 1 and isinstance(self.parts[0], Command) else None

    def value(self, rec: LogRecord) -> Value:
        if self.single is not None:
            return self.single.value(rec)
        out: list[str] = []
        for p in self.parts:
            if type(p) is Literal:
                out.append(p)
            else:
                assert isinstance(p, Command)
                v = p.value(rec)
                out.append("-" if v is None else str(v))
        return "".join(out)


def _compile_json(value: Any, path: str) -> JsonTemplate:
    if isinstance(value, str):
        return _JsonString(value)
    if isinstance(value, dict):
        return {k: _compile_json(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # a Struct number is a double; Envoy prints 5, not 5.0
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    raise FormatError(f"{path}: only string, number, bool and nested struct values are supported")


class JsonFormatter:
    """json_format: one JSON object per line; keys sorted for a stable line."""

    __slots__ = ("omit_empty", "template", "typed")

    def __init__(self, struct: Mapping[str, Any], omit_empty: bool = False, typed: bool = True) -> None:
        self.template = {k: _compile_json(v, k) for k, v in struct.items()}
        self.omit_empty = omit_empty
        # FileAccessLog's deprecated json_format renders every command as a string.
        self.typed = typed

    def _fill(self, t: dict[str, Any], rec: LogRecord) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in t.items():
            if isinstance(v, _JsonString):
                got: Any = v.value(rec)
                if not self.typed and type(got) is int:
                    got = str(got)
            elif isinstance(v, dict):
                got = self._fill(v, rec)
            else:
                got = v
            if self.omit_empty and (got is None or got == "" or got == {}):
                continue
            out[k] = got
        return out

    def render(self, rec: LogRecord) -> str:
        return json.dumps(self._fill(self.template, rec), separators=(",", ":"), sort_keys=True) + "\n"


Formatter = TextFormatter | JsonFormatter

"""HTTP/1.1 wire format: what bytes a head becomes, and which bytes are not acceptable.

Parsing itself is llhttp (httptools) in strict mode, driven by http/protocol.py; this module owns the
serialisation side and the validation llhttp leaves to us (RFC 9110 field names, RFC 9112 section 6.3
message framing, hop-by-hop headers).  No sockets, no asyncio."""

from __future__ import annotations

from sidecar.http.events import Headers

# RFC 9110 section 7.6.1 + Envoy's ConnectionManagerUtility: connection-specific headers a proxy
# must not forward.  transfer-encoding is re-derived by each hop; `te` is kept only as "trailers".
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)
HOP_BY_HOP_RESPONSE = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


# Envoy's CodeUtility::toString: the reason phrases its HTTP/1 codec writes.  Any other code is
# "Unknown" (so 418 is "418 Unknown", not Python's "I'm a Teapot").  Checked against Envoy 1.40 for
# every code 200..599 (direct_response); 425 and 599 are newer than the codes.cc most copies show.
_ENVOY_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information",
    204: "No Content", 205: "Reset Content", 206: "Partial Content", 207: "Multi-Status",
    208: "Already Reported", 226: "IM Used", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Found", 303: "See Other", 304: "Not Modified", 305: "Use Proxy", 307: "Temporary Redirect",
    308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 402: "Payment Required",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
    411: "Length Required", 412: "Precondition Failed", 413: "Payload Too Large", 414: "URI Too Long",
    415: "Unsupported Media Type", 416: "Range Not Satisfiable", 417: "Expectation Failed",
    421: "Misdirected Request", 422: "Unprocessable Entity", 423: "Locked", 424: "Failed Dependency",
    425: "Too Early", 426: "Upgrade Required", 428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported", 506: "Variant Also Negotiates", 507: "Insufficient Storage",
    508: "Loop Detected", 510: "Not Extended", 511: "Network Authentication Required",
    599: "Last Unassigned Server Error Code",
}  # fmt: skip


def _reason(code: int) -> bytes:
    return _ENVOY_REASONS.get(code, "Unknown").encode()


# Status lines built once (uvicorn's STATUS_LINE): `HTTP/1.1 200 OK\r\n`.
STATUS_LINE: dict[int, bytes] = {c: b"HTTP/1.1 %d %s\r\n" % (c, _reason(c)) for c in range(100, 1000)}
STATUS_LINE_10: dict[int, bytes] = {c: b"HTTP/1.0 %d %s\r\n" % (c, _reason(c)) for c in range(100, 1000)}
REASON: dict[int, bytes] = {c: _reason(c) for c in range(100, 1000)}


def status_line(status: int, http10: bool = False) -> bytes:
    line = (STATUS_LINE_10 if http10 else STATUS_LINE).get(status)
    if line is None:
        line = b"HTTP/1.%d %d Unknown\r\n" % (0 if http10 else 1, status)
    return line


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


def chunked_only(value: bytes) -> bool:
    """Whether a request's Transfer-Encoding is the one coding a proxy must decode and may forward
    as is: a single `chunked` (RFC 9112 section 6.1).  Envoy answers any other value, a coding list
    ending in chunked included ("gzip, chunked"), with 501; llhttp strict lets such a list through."""
    return value.strip(b" \t").lower() == b"chunked"


def status_for_parse_error(reason: str) -> int:
    """The status Envoy answers a request llhttp can't parse with, from llhttp's error reason:
    501 for a transfer coding it can't decode, 426 for a version other than HTTP/1.x (Envoy's
    "Upgrade Required"), 400 for everything else (CL with TE, bad chunk sizes, bad tokens ...)."""
    r = reason.lower()
    if "invalid `transfer-encoding`" in r:
        return 501
    if "invalid http version" in r:
        return 426
    return 400


def encode_response_head(status: int, headers: Headers, http10: bool = False) -> bytes:
    # One join over "name: value" pieces: the fastest way found to build a head in CPython
    # (about half the cost of appending four parts per header).
    if not headers:
        return status_line(status, http10) + b"\r\n"
    return status_line(status, http10) + b"\r\n".join([b": ".join(h) for h in headers]) + b"\r\n\r\n"


def encode_request_head(method: bytes, path: bytes, authority: bytes, headers: Headers) -> bytes:
    # Envoy writes :authority as `host` first, then the other headers in order.
    if not headers:
        return b"".join((method, b" ", path, b" HTTP/1.1\r\nhost: ", authority, b"\r\n\r\n"))
    lines = b"\r\n".join([b": ".join(h) for h in headers])
    return b"".join((method, b" ", path, b" HTTP/1.1\r\nhost: ", authority, b"\r\n", lines, b"\r\n\r\n"))


def encode_chunk(data: bytes) -> bytes:
    """One chunk (RFC 9112 section 7.1).  Empty data encodes to nothing: a zero-size chunk is the
    last chunk, and writing one for an empty read would end the body early."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

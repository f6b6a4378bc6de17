"""Local replies: every response the proxy makes up itself, byte for byte as Envoy writes them.

Envoy's `sendLocalReply` writes `content-length`, `content-type: text/plain` then the connection
manager adds `date` and `server`; with no body the codec appends `content-length: 0` last.  Bodies
are part of the contract (people grep for them), so they live here and nowhere else."""

from __future__ import annotations

from sidecar.http import date
from sidecar.http.codec_h1 import status_line
from sidecar.http.events import Headers

# Bodies (Envoy's exact strings; see ENVOY-CONTRACT.md "Local replies").
NO_HEALTHY_UPSTREAM = b"no healthy upstream"
UPSTREAM_TIMEOUT = b"upstream request timeout"
UPSTREAM_RESET_PREFIX = b"upstream connect error or disconnect/reset before headers. reset reason: "
UPSTREAM_RETRIED_PREFIX = (
    b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: "
)
BAD_REQUEST = b"Bad Request"
NOT_IMPLEMENTED = b"Not Implemented"
UPGRADE_REQUIRED = b"Upgrade Required"
HEADERS_TOO_LARGE = b"Request Header Fields Too Large"
PAYLOAD_TOO_LARGE = b"Payload Too Large"
REQUEST_TIMEOUT = b"request timeout"
STREAM_IDLE_TIMEOUT = b"stream timeout"

# Reset reasons as Envoy names them in the body (Http::StreamResetReason -> string).
RESET_CONNECTION_FAILURE = b"remote connection failure"
RESET_CONNECTION_TERMINATION = b"connection termination"
RESET_LOCAL = b"local reset"
RESET_OVERFLOW = b"overflow"
RESET_PROTOCOL_ERROR = b"protocol error"
RESET_CONNECT_TIMEOUT = b"connection timeout"


def encode(
    status: int,
    body: bytes | None,
    server: bytes | None,
    close: bool = False,
    extra: Headers | None = None,
    content_type: bytes = b"text/plain",
    head_only: bool = False,
    http10: bool = False,
    keep_alive: bool = False,
) -> bytes:
    """The whole HTTP/1.1 response.  `server` None means no server header (PASS_THROUGH)."""
    parts = [status_line(status, http10)]
    if body:
        parts.append(b"content-length: %d\r\ncontent-type: %s\r\n" % (len(body), content_type))
    if extra:
        for k, v in extra:
            parts.append(b"%s: %s\r\n" % (k, v))
    parts.append(b"date: ")
    parts.append(date.current())
    parts.append(b"\r\n")
    if server is not None:
        parts.append(b"server: %s\r\n" % server)
    if close:
        parts.append(b"connection: close\r\n")
    elif keep_alive:
        parts.append(b"connection: keep-alive\r\n")
    if not body:
        parts.append(b"content-length: 0\r\n")
    parts.append(b"\r\n")
    if body and not head_only:
        parts.append(body)
    return b"".join(parts)

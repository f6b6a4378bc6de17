"""The connection manager's per-request timers, as Envoy arms them for HTTP/1 (one stream per request):

| timer (HCM field)                          | starts          | stops                  | fires with (Envoy's body)              |
|--------------------------------------------|-----------------|------------------------|----------------------------------------|
| request_headers_timeout                    | first byte      | headers complete       | 408 `request header timeout`, close    |
| request_timeout                            | first byte      | request complete       | 408 `request timeout`, close           |
| stream_idle_timeout (default 5 min)        | first byte      | response complete      | no I/O for that long: see below        |
| common_http_protocol_options.max_stream_duration | first byte | response complete    | see below                              |

stream_idle_timeout and max_stream_duration answer 408 (and close) while the request is still
arriving, 504 while waiting for the upstream (`stream timeout` / `downstream duration timeout`), and
reset the connection once the response has started.  All deadlines go through http/timeouts.py (no
timer per request); idleness is checked lazily against the connection's last I/O time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.http.timeouts import Deadline

if TYPE_CHECKING:
    from sidecar.http.protocol import Http1ServerConnection

HEADERS_TIMEOUT = b"request header timeout"
REQUEST_TIMEOUT = b"request timeout"
IDLE_TIMEOUT = b"stream timeout"
DURATION_TIMEOUT = b"downstream duration timeout"


class StreamTimers:
    """The armed timers of the request a connection is currently reading or answering."""

    __slots__ = ("conn", "duration", "headers", "idle", "request")

    def __init__(self, conn: Http1ServerConnection) -> None:
        self.conn = conn
        rt = conn.rt
        cfg = rt.cfg
        t = rt.timeouts
        self.headers: Deadline | None = (
            t.add(cfg.request_headers_timeout, self._on_headers) if cfg.request_headers_timeout > 0 else None
        )
        self.request: Deadline | None = (
            t.add(cfg.request_timeout, self._on_request) if cfg.request_timeout > 0 else None
        )
        self.idle: Deadline | None = (
            t.add(cfg.stream_idle_timeout, self._on_idle) if cfg.stream_idle_timeout > 0 else None
        )
        self.duration: Deadline | None = (
            t.add(cfg.max_stream_duration, self._on_duration) if cfg.max_stream_duration > 0 else None
        )

    def headers_done(self) -> None:
        if self.headers is not None:
            self.headers.cancel()
            self.headers = None

    def request_done(self) -> None:
        if self.request is not None:
            self.request.cancel()
            self.request = None

    def cancel(self) -> None:
        for d in (self.headers, self.request, self.idle, self.duration):
            if d is not None:
                d.cancel()
        self.headers = self.request = self.idle = self.duration = None

    def _on_headers(self) -> None:
        self.headers = None
        self.conn.stream_timeout(HEADERS_TIMEOUT, always_408=True)

    def _on_request(self) -> None:
        self.request = None
        self.conn.stream_timeout(REQUEST_TIMEOUT, always_408=True)

    def _on_duration(self) -> None:
        self.duration = None
        self.conn.stream_timeout(DURATION_TIMEOUT)

    def _on_idle(self) -> None:
        self.idle = None
        conn = self.conn
        rt = conn.rt
        timeout = rt.cfg.stream_idle_timeout
        # Re-arm for whatever is left since the last byte either way (no timer reset per read).
        left = conn.last_io + timeout - rt.loop.time()
        if left > 0.001:
            self.idle = rt.timeouts.add(left, self._on_idle)
            return
        conn.stream_timeout(IDLE_TIMEOUT)

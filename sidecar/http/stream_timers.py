"""The connection manager's per-request timers, as Envoy arms them for HTTP/1 (one stream per request):

| timer (HCM field)                          | starts          | stops                  | fires with (Envoy's body)              |
|--------------------------------------------|-----------------|------------------------|----------------------------------------|
| request_headers_timeout                    | first byte      | headers complete       | 408 `request header timeout`, close    |
| request_timeout                            | first byte      | request complete       | 408 `request timeout`, close           |
| stream_idle_timeout (default 5 min)        | first byte      | response complete      | no I/O for that long: see below        |
| common_http_protocol_options.max_stream_duration | first byte | response complete    | see below                              |

stream_idle_timeout and max_stream_duration answer 408 (and close) while the request is still
arriving, 504 while waiting for the upstream (`stream timeout` / `downstream duration timeout`), and
reset the connection once the response has started.

Nothing is armed per request: each configured timeout is one loop timer per connection that, when it
fires, compares the connection's request clock (`msg_begin`, `last_io`, `head_done`, `body_done`,
kept by http/protocol.py) with its deadline and either acts or re-arms for what is left."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.http.protocol import Http1ServerConnection

HEADERS_TIMEOUT = b"request header timeout"
REQUEST_TIMEOUT = b"request timeout"
IDLE_TIMEOUT = b"stream timeout"
DURATION_TIMEOUT = b"downstream duration timeout"


class StreamTimers:
    """The configured request timers of one downstream connection."""

    __slots__ = ("conn", "handles", "loop")

    def __init__(self, conn: Http1ServerConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop
        self.handles: list[asyncio.TimerHandle | None] = []
        cfg = conn.rt.cfg
        now = loop.time()
        # (timeout, request clock, "stopped" flag or "", Envoy's body, always 408)
        for spec in (
            (cfg.request_headers_timeout, "msg_begin", "head_done", HEADERS_TIMEOUT, True),
            (cfg.request_timeout, "msg_begin", "body_done", REQUEST_TIMEOUT, True),
            (cfg.stream_idle_timeout, "last_io", "", IDLE_TIMEOUT, False),
            (cfg.max_stream_duration, "msg_begin", "", DURATION_TIMEOUT, False),
        ):
            if spec[0] > 0:
                slot = len(self.handles)
                self.handles.append(loop.call_at(now + spec[0], self._fire, slot, spec))

    def cancel(self) -> None:
        for h in self.handles:
            if h is not None:
                h.cancel()
        self.handles = []

    def _fire(self, slot: int, spec: tuple[float, str, str, bytes, bool]) -> None:
        """Act if the request in flight is past this timer's deadline, else look again when it
        would be (or one period from now when no request is in flight or the timer's phase is over)."""
        c = self.conn
        if slot >= len(self.handles) or c.closed:
            return
        timeout, clock, stopped, body, always_408 = spec
        now = self.loop.time()
        again = now + timeout
        if c.msg_begin and not (stopped and getattr(c, stopped)):
            deadline = getattr(c, clock) + timeout
            if deadline <= now:
                c.stream_timeout(body, always_408)
            else:
                again = deadline
        if self.handles and not c.closed:
            self.handles[slot] = self.loop.call_at(max(again, now + 0.001), self._fire, slot, spec)

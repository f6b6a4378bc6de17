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
from collections.abc import Callable
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
        for timeout, check in (
            (cfg.request_headers_timeout, self._headers),
            (cfg.request_timeout, self._request),
            (cfg.stream_idle_timeout, self._idle),
            (cfg.max_stream_duration, self._duration),
        ):
            if timeout > 0:
                slot = len(self.handles)
                self.handles.append(loop.call_at(now + timeout, self._fire, slot, timeout, check))

    def cancel(self) -> None:
        for h in self.handles:
            if h is not None:
                h.cancel()
        self.handles = []

    def _fire(self, slot: int, timeout: float, check: Callable[[float, float], float]) -> None:
        """`check(now, timeout)` returns 0 when it acted, else the time to look again."""
        if slot >= len(self.handles) or self.conn.closed:
            return
        now = self.loop.time()
        again = check(now, timeout)
        if self.handles and not self.conn.closed:
            self.handles[slot] = self.loop.call_at(max(again, now + 0.001) if again else now + timeout,
                                                   self._fire, slot, timeout, check)  # fmt: skip

    # Each check: the deadline of the request in flight, or a later look when there is none.
    def _headers(self, now: float, timeout: float) -> float:
        c = self.conn
        if not c.msg_begin or c.head_done:
            return now + timeout
        if c.msg_begin + timeout > now:
            return c.msg_begin + timeout
        c.stream_timeout(HEADERS_TIMEOUT, always_408=True)
        return 0.0

    def _request(self, now: float, timeout: float) -> float:
        c = self.conn
        if not c.msg_begin or c.body_done:
            return now + timeout
        if c.msg_begin + timeout > now:
            return c.msg_begin + timeout
        c.stream_timeout(REQUEST_TIMEOUT, always_408=True)
        return 0.0

    def _idle(self, now: float, timeout: float) -> float:
        c = self.conn
        if not c.msg_begin:
            return now + timeout
        if c.last_io + timeout > now:
            return c.last_io + timeout
        c.stream_timeout(IDLE_TIMEOUT)
        return 0.0

    def _duration(self, now: float, timeout: float) -> float:
        c = self.conn
        if not c.msg_begin:
            return now + timeout
        if c.msg_begin + timeout > now:
            return c.msg_begin + timeout
        c.stream_timeout(DURATION_TIMEOUT)
        return 0.0

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

A route may replace the last two for its requests (the connection manager calls `route_idle` /
`route_duration` once it has chosen the route, as Envoy's refreshIdleTimeout and
refreshDurationTimeout do): RouteAction.idle_timeout (0 switches the idle timer off) and
RouteAction.max_stream_duration (a duration from the stream's start, possibly from its grpc-timeout
header; None switches the duration timer off).  The override belongs to that stream alone.

Nothing is armed per request: each configured timeout is one loop timer per connection that, when it
fires, compares the connection's request clock (`msg_begin`, `last_io`, `head_done`, `body_done`,
kept by http/protocol.py) with its deadline and either acts or re-arms for what is left.  A route
override re-arms a timer only when it makes the deadline earlier."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.http.conn_manager import Stream
    from sidecar.http.protocol import Http1ServerConnection

HEADERS_TIMEOUT = b"request header timeout"
REQUEST_TIMEOUT = b"request timeout"
IDLE_TIMEOUT = b"stream timeout"
DURATION_TIMEOUT = b"downstream duration timeout"

# (timeout, request clock, "stopped" flag or "", Envoy's body, always 408)
Spec = tuple[float, str, str, bytes, bool]


class StreamTimers:
    """The configured request timers of one downstream connection."""

    __slots__ = ("armed", "conn", "duration_for", "handles", "idle_for", "loop", "slots")

    def __init__(self, conn: Http1ServerConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop
        self.handles: list[asyncio.TimerHandle | None] = []
        self.armed: list[float] = []
        self.slots: dict[bytes, int] = {}  # IDLE_TIMEOUT / DURATION_TIMEOUT -> slot, when routes override
        # The active stream's overrides: (stream, idle timeout) and (stream, absolute deadline or None).
        self.idle_for: tuple[Stream, float] | None = None
        self.duration_for: tuple[Stream, float | None] | None = None
        rt = conn.rt
        cfg = rt.cfg
        now = loop.time()
        for spec in (
            (cfg.request_headers_timeout, "msg_begin", "head_done", HEADERS_TIMEOUT, True),
            (cfg.request_timeout, "msg_begin", "body_done", REQUEST_TIMEOUT, True),
            (cfg.stream_idle_timeout, "last_io", "", IDLE_TIMEOUT, False),
            (cfg.max_stream_duration, "msg_begin", "", DURATION_TIMEOUT, False),
        ):
            routed = (spec[3] is IDLE_TIMEOUT and rt.route_idle) or (
                spec[3] is DURATION_TIMEOUT and rt.route_duration
            )
            if spec[0] > 0 or routed:
                slot = len(self.handles)
                if routed:
                    self.slots[spec[3]] = slot
                self.armed.append(now + spec[0] if spec[0] > 0 else 0.0)
                self.handles.append(
                    loop.call_at(now + spec[0], self._fire, slot, spec) if spec[0] > 0 else None
                )

    def cancel(self) -> None:
        for h in self.handles:
            if h is not None:
                h.cancel()
        self.handles = []

    # -- route overrides (Envoy's refreshIdleTimeout / refreshDurationTimeout) ---------------------
    def route_idle(self, stream: Stream, timeout: float) -> None:
        """RouteAction.idle_timeout for `stream` (0: no idle timer for it)."""
        self.idle_for = (stream, timeout)
        if timeout > 0:
            self._earlier(IDLE_TIMEOUT, self.conn.last_io + timeout)

    def route_duration(self, stream: Stream, deadline: float | None) -> None:
        """The stream's max duration deadline (loop time) under its route, or None for none."""
        self.duration_for = (stream, deadline)
        if deadline is not None:
            self._earlier(DURATION_TIMEOUT, deadline)

    def _earlier(self, body: bytes, when: float) -> None:
        slot = self.slots.get(body)
        if slot is None or slot >= len(self.handles) or self.conn.closed:
            return
        h = self.handles[slot]
        if h is None or when < self.armed[slot]:
            if h is not None:
                h.cancel()
            spec = self._spec(body)
            self.armed[slot] = when
            self.handles[slot] = self.loop.call_at(when, self._fire, slot, spec)

    def _spec(self, body: bytes) -> Spec:
        cfg = self.conn.rt.cfg
        if body is IDLE_TIMEOUT:
            return (cfg.stream_idle_timeout, "last_io", "", IDLE_TIMEOUT, False)
        return (cfg.max_stream_duration, "msg_begin", "", DURATION_TIMEOUT, False)

    def _deadline(self, spec: Spec) -> float | None:
        """The active request's deadline for this timer, or None when it has none (no request in
        flight, the timer's phase is over, or its route switched it off)."""
        c = self.conn
        timeout, clock, stopped, body, _ = spec
        if not c.msg_begin or (stopped and getattr(c, stopped)):
            return None
        if body is IDLE_TIMEOUT:
            over = self.idle_for
            if over is not None and over[0] is c.active:
                timeout = over[1]
        elif body is DURATION_TIMEOUT:
            dur = self.duration_for
            if dur is not None and dur[0] is c.active:
                return dur[1]
        if timeout <= 0:
            return None
        at: float = getattr(c, clock)
        return at + timeout

    def _fire(self, slot: int, spec: Spec) -> None:
        """Act if the request in flight is past this timer's deadline, else look again when it
        would be (or one period from now when it has none; not at all when the connection manager
        has no such timeout and only routes set one)."""
        c = self.conn
        if slot >= len(self.handles) or c.closed:
            return
        now = self.loop.time()
        again: float | None = now + spec[0] if spec[0] > 0 else None
        deadline = self._deadline(spec)
        if deadline is not None:
            if deadline <= now:
                c.stream_timeout(spec[3], spec[4])
            elif again is None or deadline < again:
                again = deadline
        if not self.handles or c.closed:
            return
        if again is None:
            self.handles[slot] = None
            return
        again = max(again, now + 0.001)
        self.armed[slot] = again
        self.handles[slot] = self.loop.call_at(again, self._fire, slot, spec)

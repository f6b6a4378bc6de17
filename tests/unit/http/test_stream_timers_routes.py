"""A route's idle_timeout and max_stream_duration in the connection's stream timers
(http/stream_timers.py): they replace the connection manager's for their stream only, and arm a
timer only when they make a deadline earlier.  A fake clock; no sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidecar.http.stream_timers import DURATION_TIMEOUT, IDLE_TIMEOUT, StreamTimers


class Handle:
    def __init__(self, loop: Loop, when: float, cb: Callable[[], None]) -> None:
        self.loop, self.when, self.cb, self.cancelled = loop, when, cb, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self.now = 100.0
        self.handles: list[Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb: Callable[..., None], *args: Any) -> Handle:
        h = Handle(self, when, lambda: cb(*args))
        self.handles.append(h)
        return h

    def advance(self, to: float) -> None:
        for _ in range(10_000):
            due = sorted((h for h in self.handles if not h.cancelled and h.when <= to), key=lambda h: h.when)
            if not due:
                break
            h = due[0]
            self.handles.remove(h)
            self.now = h.when
            h.cb()
        self.now = to

    @property
    def pending(self) -> list[float]:
        return sorted(h.when for h in self.handles if not h.cancelled)


class Cfg:
    def __init__(self, idle: float = 0.0, duration: float = 0.0) -> None:
        self.request_headers_timeout = 0.0
        self.request_timeout = 0.0
        self.stream_idle_timeout = idle
        self.max_stream_duration = duration


class Rt:
    def __init__(self, cfg: Cfg, route_idle: bool, route_duration: bool) -> None:
        self.cfg, self.route_idle, self.route_duration = cfg, route_idle, route_duration


class Conn:
    """The request clock http/protocol.py keeps, and a record of what fired."""

    def __init__(self, rt: Rt) -> None:
        self.rt = rt
        self.closed = False
        self.msg_begin = 0.0
        self.last_io = 0.0
        self.head_done = self.body_done = False
        self.active: object | None = None
        self.fired: list[tuple[float, bytes]] = []
        self.loop: Loop | None = None

    def begin(self, at: float) -> object:
        self.msg_begin = self.last_io = at
        self.active = object()
        return self.active

    def stream_timeout(self, body: bytes, always_408: bool) -> None:
        assert self.loop is not None
        self.fired.append((self.loop.now, body))
        self.active = None
        self.msg_begin = 0.0


def setup(
    idle: float = 0.0, duration: float = 0.0, route_idle: bool = True, route_duration: bool = True
) -> tuple[Loop, Conn, StreamTimers]:
    loop = Loop()
    conn = Conn(Rt(Cfg(idle, duration), route_idle, route_duration))
    conn.loop = loop
    return loop, conn, StreamTimers(conn, loop)  # type: ignore[arg-type]


def test_a_shorter_route_idle_timeout_fires_first() -> None:
    loop, conn, timers = setup(idle=300.0)
    stream = conn.begin(100.0)
    timers.route_idle(stream, 0.3)  # type: ignore[arg-type]
    loop.advance(100.29)
    assert conn.fired == []
    loop.advance(101.0)
    assert conn.fired == [(100.3, IDLE_TIMEOUT)]


def test_activity_pushes_the_route_idle_deadline() -> None:
    loop, conn, timers = setup(idle=300.0)
    stream = conn.begin(100.0)
    timers.route_idle(stream, 0.3)  # type: ignore[arg-type]
    conn.last_io = 100.2
    loop.advance(100.45)
    assert conn.fired == []
    loop.advance(101.0)
    assert conn.fired == [(100.5, IDLE_TIMEOUT)]


def test_zero_switches_the_idle_timer_off_for_that_stream_only() -> None:
    loop, conn, timers = setup(idle=0.4)
    first = conn.begin(100.0)
    timers.route_idle(first, 0.0)  # type: ignore[arg-type]
    loop.advance(105.0)
    assert conn.fired == []
    conn.begin(105.0)  # the next request has no override: the connection manager's timer again
    loop.advance(106.0)
    assert [(round(t, 6), b) for t, b in conn.fired] == [(105.4, IDLE_TIMEOUT)]


def test_a_longer_route_idle_timeout_outlasts_the_connection_managers() -> None:
    loop, conn, timers = setup(idle=0.4)
    stream = conn.begin(100.0)
    timers.route_idle(stream, 1.5)  # type: ignore[arg-type]
    loop.advance(101.4)
    assert conn.fired == []
    loop.advance(102.0)
    assert conn.fired == [(101.5, IDLE_TIMEOUT)]


def test_only_routes_set_an_idle_timeout() -> None:
    loop, conn, timers = setup(idle=0.0)
    assert loop.pending == []  # nothing armed until a route asks
    stream = conn.begin(100.0)
    timers.route_idle(stream, 0.3)  # type: ignore[arg-type]
    loop.advance(101.0)
    assert conn.fired == [(100.3, IDLE_TIMEOUT)]
    assert loop.pending == []  # and nothing left armed for a connection without requests


def test_route_duration_deadline() -> None:
    loop, conn, timers = setup(duration=10.0)
    stream = conn.begin(100.0)
    timers.route_duration(stream, 100.3)  # type: ignore[arg-type]
    loop.advance(101.0)
    assert conn.fired == [(100.3, DURATION_TIMEOUT)]


def test_route_duration_switched_off() -> None:
    loop, conn, timers = setup(duration=0.4)
    stream = conn.begin(100.0)
    timers.route_duration(stream, None)  # type: ignore[arg-type]
    loop.advance(103.0)
    assert conn.fired == []


def test_overrides_without_a_routed_slot_do_nothing() -> None:
    loop, conn, timers = setup(idle=0.0, duration=0.0, route_idle=False, route_duration=False)
    stream = conn.begin(100.0)
    timers.route_idle(stream, 0.3)  # type: ignore[arg-type]
    timers.route_duration(stream, 100.1)  # type: ignore[arg-type]
    assert loop.pending == []

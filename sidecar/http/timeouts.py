"""Route timeouts without a timer per request, and the timeout arithmetic of Envoy's router and
connection manager.

Every request of a route shares that route's timeout, so deadlines enter a per-timeout FIFO in
increasing order and one loop timer, armed for the oldest live deadline, serves them all.  Arming is
an append and a read of the loop clock; cancelling is clearing the entry (the FIFO drops dead entries
when they reach its head, and compacts itself when dead entries pile up behind a long-lived one).
Envoy arms a real timer per request; the effect seen on the wire is the same.  Only timeouts that come
from the configuration go through the queues (a value a request chose would add a queue per value).

The arithmetic (pure, in integer milliseconds as Envoy keeps them) is at the end: the request headers
that set a route's timeouts (FilterUtility::finalTimeout / setTimeoutHeaders), the grpc-timeout header
(Grpc::Common::getGrpcTimeout / toGrpcTimeout) and a route's max_stream_duration
(ConnectionManagerImpl::ActiveStream::refreshDurationTimeout)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from sidecar.model.route import MaxStreamDuration


class Deadline:
    """A handle: `cancel()` before it fires and the callback never runs."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class DeadlineQueue:
    """Deadlines `timeout` seconds after they are added, for one timeout value."""

    __slots__ = ("_armed", "_entries", "_loop", "_timer", "timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self.timeout = timeout
        self._entries: deque[Deadline] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0.0

    def add(self, callback: Callable[[], None]) -> Deadline:
        d = Deadline(self._loop.time() + self.timeout, callback)
        entries = self._entries
        entries.append(d)
        if self._timer is None:
            self._arm(d.when)
        elif len(entries) & 1023 == 0:
            self._compact()
        return d

    def _arm(self, when: float) -> None:
        self._armed = when
        self._timer = self._loop.call_at(when, self._fire)

    def _compact(self) -> None:
        self._entries = deque(d for d in self._entries if d.callback is not None)

    def _fire(self) -> None:
        self._timer = None
        entries = self._entries
        now = self._loop.time()
        while entries:
            d = entries[0]
            if d.callback is None:
                entries.popleft()
                continue
            if d.when > now:
                self._arm(d.when)
                return
            entries.popleft()
            cb = d.callback
            d.callback = None
            cb()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._entries.clear()


class TimerDeadline(Deadline):
    """A Deadline on its own loop timer (a timeout value past Timeouts' queue limit)."""

    __slots__ = ("handle",)

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, callback: Callable[[], None]) -> None:
        super().__init__(loop.time() + timeout, callback)
        self.handle = loop.call_at(self.when, self._fire)

    def _fire(self) -> None:
        cb = self.callback
        self.callback = None
        if cb is not None:
            cb()

    def cancel(self) -> None:
        self.callback = None
        self.handle.cancel()


# Queues are kept for the life of the worker: values from the configuration are few, but a request
# may choose its own (x-envoy-upstream-rq-timeout-ms, grpc-timeout), so past this many distinct
# values a deadline gets its own timer instead of a new queue.
MAX_QUEUES = 64


class Timeouts:
    """One DeadlineQueue per distinct timeout value, per worker."""

    __slots__ = ("_loop", "_queues")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, DeadlineQueue] = {}

    def add(self, timeout: float, callback: Callable[[], None]) -> Deadline:
        q = self._queues.get(timeout)
        if q is None:
            if len(self._queues) >= MAX_QUEUES:
                return TimerDeadline(self._loop, timeout, callback)
            q = self._queues[timeout] = DeadlineQueue(self._loop, timeout)
        return q.add(callback)


# --- the arithmetic ------------------------------------------------------------------------------

UINT64_MAX = (1 << 64) - 1
GRPC_TIMEOUT_MAX = 99_999_999  # TimeoutValue is at most 8 digits (gRPC over HTTP/2, "Requests")
_SPACE = b" \t\n\v\f\r"  # absl::ascii_isspace
_GRPC_UNITS = {ord("H"): 3_600_000, ord("M"): 60_000, ord("S"): 1000, ord("m"): 1}


def ms(seconds: float) -> int:
    """A configured duration (seconds at millisecond precision) in milliseconds."""
    return round(seconds * 1000)


def parse_int(raw: bytes, limit: int = UINT64_MAX, signed: bool = False) -> int | None:
    """absl::SimpleAtoi: optional ASCII whitespace around, an optional sign ('-' only when
    `signed`), decimal digits; None when malformed or outside [-limit-1, limit]."""
    text = raw.strip(_SPACE)
    negative = False
    if text[:1] in (b"+", b"-"):
        negative = text[:1] == b"-"
        text = text[1:]
    if not text or not text.isdigit() or (negative and not signed):
        return None
    value = -int(text) if negative else int(text)
    if value > limit or value < -limit - 1:
        return None
    return value


def grpc_timeout_ms(raw: bytes | None) -> int | None:
    """The grpc-timeout header in milliseconds (Grpc::Common::getGrpcTimeout): a value of at most 8
    digits and a unit (H, M, S, m, u, n; u and n rounded up); None when absent or malformed."""
    if not raw:
        return None
    value = parse_int(raw[:-1], (1 << 63) - 1, signed=True)
    if value is None or not 0 <= value <= GRPC_TIMEOUT_MAX:
        return None
    unit = raw[-1]
    factor = _GRPC_UNITS.get(unit)
    if factor is not None:
        return value * factor
    if unit == ord("u"):
        return -(-value // 1000)
    if unit == ord("n"):
        return -(-value // 1_000_000)
    return None


def format_grpc_timeout(timeout_ms: int) -> bytes:
    """Grpc::Common::toGrpcTimeout: milliseconds while they fit in 8 digits, then seconds, minutes,
    hours (truncating), clipped at 99999999H."""
    value = timeout_ms
    units = b"mSMH"
    unit = 0
    if value > GRPC_TIMEOUT_MAX:
        value //= 1000
        unit = 1
    for _ in range(3):  # bounded: at most S -> M -> H
        if value <= GRPC_TIMEOUT_MAX:
            break
        if unit == 3:
            value = GRPC_TIMEOUT_MAX
            break
        value //= 60
        unit += 1
    if value > GRPC_TIMEOUT_MAX:
        value = GRPC_TIMEOUT_MAX
    return b"%d%c" % (value, units[unit])


def final_timeouts(
    global_ms: int,
    per_try_ms: int,
    expected: bytes | None,
    upstream: bytes | None,
    per_try: bytes | None,
    respect_expected: bool,
) -> tuple[int, int, bool]:
    """FilterUtility::finalTimeout with the request's steering headers (values as they arrived, a
    repeated header joined with ','): x-envoy-upstream-rq-timeout-ms sets the global timeout (with
    router respect_expected_rq_timeout, an x-envoy-expected-rq-timeout-ms from an egress Envoy wins
    and the former is left alone); x-envoy-upstream-rq-per-try-timeout-ms sets the per-try one; a
    per-try timeout not below a global one is dropped.  Returns (global, per-try, whether
    x-envoy-upstream-rq-timeout-ms was consumed).  Unparseable values are ignored."""
    consumed = False
    if respect_expected and expected is not None:
        value = parse_int(expected)
        if value is not None:
            global_ms = value
    elif upstream is not None:
        value = parse_int(upstream)
        if value is not None:
            global_ms = value
        consumed = True
    if per_try:
        value = parse_int(per_try)
        if value is not None:
            per_try_ms = value
    if global_ms != 0 and per_try_ms >= global_ms:
        per_try_ms = 0
    return global_ms, per_try_ms, consumed


def expected_timeout_ms(global_ms: int, per_try_ms: int, elapsed_ms: int, hedging: bool = False) -> int:
    """x-envoy-expected-rq-timeout-ms for an attempt made `elapsed_ms` after the downstream request
    completed (FilterUtility::setTimeoutHeaders): the per-try timeout (unless hedging on per-try
    timeouts lets an attempt run on), else the global one, never past what is left of the global one
    (1 when nothing is); 0 means the header is not set."""
    expected = global_ms if hedging else per_try_ms or global_ms
    if expected <= 0:
        return 0
    if global_ms > 0:
        expected = 1 if elapsed_ms >= global_ms else min(expected, global_ms - elapsed_ms)
    return expected


def stream_duration_ms(route: MaxStreamDuration, hcm_ms: int, grpc_ms: int | None) -> int | None:
    """The stream's max duration under a route's max_stream_duration (refreshDurationTimeout), from
    the stream's start; None for no timer.  With grpc_timeout_header_max and a grpc-timeout header,
    that header capped by the max (0: no cap) minus the offset (0 when the offset is not below it: a
    timer that fires at once); otherwise the route's max_stream_duration (0 disables), else the
    connection manager's."""
    if grpc_ms is None or route.grpc_timeout_header_max is None:
        if route.max_stream_duration is not None:
            own = ms(route.max_stream_duration)
            return own or None
        return hcm_ms or None
    timeout = grpc_ms
    cap = ms(route.grpc_timeout_header_max)
    if cap and timeout > cap:
        timeout = cap
    offset = ms(route.grpc_timeout_header_offset)
    if timeout and offset:
        timeout = timeout - offset if offset < timeout else 0
    return timeout

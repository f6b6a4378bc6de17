"""Route timeouts without a timer per request.

Every request of a route shares that route's timeout, so deadlines enter a per-timeout FIFO in
increasing order and one loop timer, armed for the oldest live deadline, serves them all.  Arming is
an append and a read of the loop clock; cancelling is clearing the entry (the FIFO drops dead entries
when they reach its head, and compacts itself when dead entries pile up behind a long-lived one).
Envoy arms a real timer per request; the effect seen on the wire is the same."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


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


class Timeouts:
    """One DeadlineQueue per distinct timeout value, per worker."""

    __slots__ = ("_loop", "_queues")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, DeadlineQueue] = {}

    def add(self, timeout: float, callback: Callable[[], None]) -> Deadline:
        q = self._queues.get(timeout)
        if q is None:
            q = self._queues[timeout] = DeadlineQueue(self._loop, timeout)
        return q.add(callback)

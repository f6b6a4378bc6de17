"""The route-timeout queue: fires in order, at the right time, never after cancel, and stays small."""

import asyncio

from sidecar.http.timeouts import DeadlineQueue, Timeouts


class FakeLoop:
    """Just enough of a loop: a clock we move and call_at handles we run by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.calls: list[tuple[float, object]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb: object) -> asyncio.TimerHandle:
        self.calls.append((when, cb))
        loop = self

        class H:
            def cancel(self) -> None:
                loop.calls = [c for c in loop.calls if c[1] is not cb]

        return H()  # type: ignore[return-value]

    def advance(self, to: float) -> None:
        self.now = to
        for _ in range(1000):
            due = [c for c in self.calls if c[0] <= self.now]
            if not due:
                return
            self.calls.remove(due[0])
            due[0][1]()  # type: ignore[operator]


def test_fires_each_deadline_at_its_time_in_order() -> None:
    loop = FakeLoop()
    q = DeadlineQueue(loop, 1.5)  # type: ignore[arg-type]
    fired: list[str] = []
    q.add(lambda: fired.append("a"))
    loop.now = 100.5
    q.add(lambda: fired.append("b"))
    loop.advance(101.4)
    assert fired == []
    loop.advance(101.5)
    assert fired == ["a"]
    loop.advance(102.0)
    assert fired == ["a", "b"]


def test_cancelled_deadlines_never_fire_and_do_not_delay_others() -> None:
    loop = FakeLoop()
    q = DeadlineQueue(loop, 1.0)  # type: ignore[arg-type]
    fired: list[int] = []
    handles = [q.add(lambda i=i: fired.append(i)) for i in range(5)]
    for h in handles[:4]:
        h.cancel()
    loop.advance(101.0)
    assert fired == [4]


def test_dead_entries_are_compacted() -> None:
    loop = FakeLoop()
    q = DeadlineQueue(loop, 10.0)  # type: ignore[arg-type]
    keep = q.add(lambda: None)  # a long-lived head keeps the timer on the oldest entry
    for _ in range(10000):
        q.add(lambda: None).cancel()
    assert len(q._entries) < 2048
    assert keep.callback is not None


def test_timeouts_keeps_one_queue_per_value() -> None:
    loop = FakeLoop()
    t = Timeouts(loop)  # type: ignore[arg-type]
    fired: list[float] = []
    t.add(2.0, lambda: fired.append(2.0))
    t.add(1.0, lambda: fired.append(1.0))
    loop.advance(101.0)
    assert fired == [1.0]
    loop.advance(102.0)
    assert fired == [1.0, 2.0]
    assert len(t._queues) == 2

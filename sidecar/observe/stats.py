"""Counters and gauges with Envoy's stat names, shared by every worker process.

Handles are made at config time, never per request.  Values live in one anonymous shared mapping
(created before the workers fork) laid out as `workers x slots` signed 64-bit integers; a worker
increments its own row, the admin server sums the rows at scrape time.  This is the "plain
per-worker counters gathered at scrape time" of DEPENDENCIES.md, without prometheus-client's
multiprocess mode.

Hot path use:  `stats.counter("http.ingress.downstream_rq_total")` returns a `Counter` whose
`inc()` is one indexed add on a memoryview."""

from __future__ import annotations

import mmap
import threading
from collections.abc import Iterator

_SLOT = 8


class Counter:
    """A monotonically increasing value (Envoy counter)."""

    __slots__ = ("_i", "_mv", "name")

    def __init__(self, name: str, mv: memoryview, index: int) -> None:
        self.name = name
        self._mv = mv
        self._i = index

    def inc(self, n: int = 1) -> None:
        self._mv[self._i] += n


class Gauge(Counter):
    """A value that goes up and down (Envoy gauge), summed over workers."""

    __slots__ = ()

    def dec(self, n: int = 1) -> None:
        self._mv[self._i] -= n

    def set(self, v: int) -> None:
        self._mv[self._i] = v


class Stats:
    """The stat registry.  `max_slots` bounds the number of distinct stats (the mapping is fixed
    once workers fork); asking for more raises, which config translation turns into an error."""

    def __init__(self, workers: int = 1, max_slots: int = 65536) -> None:
        self.workers = max(1, workers)
        self.max_slots = max_slots
        self._map = mmap.mmap(-1, self.workers * max_slots * _SLOT, flags=mmap.MAP_SHARED)
        self._all = memoryview(self._map).cast("q")
        self._index: dict[str, int] = {}
        self._kinds: dict[str, str] = {}
        self._handles: dict[str, Counter] = {}
        self._row = 0
        self._lock = threading.Lock()

    # -- set-up ----------------------------------------------------------------------------------
    def select_worker(self, row: int) -> None:
        """Called in each worker after fork: handles made later write to this worker's row.
        Handles made before the fork are re-pointed too."""
        self._row = row
        for name, h in self._handles.items():
            h._mv = self._row_view()
            h._i = self._index[name]

    def _row_view(self) -> memoryview:
        start = self._row * self.max_slots
        return self._all[start : start + self.max_slots]

    def _slot(self, name: str, kind: str) -> int:
        i = self._index.get(name)
        if i is None:
            with self._lock:
                i = len(self._index)
                if i >= self.max_slots:
                    raise RuntimeError(f"too many stats (>{self.max_slots})")
                self._index[name] = i
                self._kinds[name] = kind
        return i

    def counter(self, name: str) -> Counter:
        h = self._handles.get(name)
        if h is None:
            h = Counter(name, self._row_view(), self._slot(name, "counter"))
            self._handles[name] = h
        return h

    def gauge(self, name: str) -> Gauge:
        h = self._handles.get(name)
        if h is None:
            h = Gauge(name, self._row_view(), self._slot(name, "gauge"))
            self._handles[name] = h
        assert isinstance(h, Gauge)
        return h

    # -- reading (admin) ---------------------------------------------------------------------------
    def value(self, name: str) -> int:
        i = self._index[name]
        return sum(self._all[w * self.max_slots + i] for w in range(self.workers))

    def items(self) -> Iterator[tuple[str, str, int]]:
        """(name, kind, value summed over workers), sorted by name as Envoy prints them."""
        for name in sorted(self._index):
            yield name, self._kinds[name], self.value(name)

    def used(self, name: str) -> bool:
        """Envoy's `usedonly`: a counter that was ever incremented / a gauge ever set."""
        return self.value(name) != 0

"""Counters and gauges with Envoy's stat names, shared by every worker process.

Handles are made at config time, never per request.  Values live in one anonymous shared mapping
(created before the workers fork) laid out as `workers x slots` signed 64-bit integers; a worker
increments its own row, the admin server sums the rows at scrape time.  This is the "plain
per-worker counters gathered at scrape time" of DEPENDENCIES.md, without prometheus-client's
multiprocess mode.

Two ways to count:
- `stats.counter(name)` / `stats.gauge(name)`: a handle whose `inc()` is one indexed add on the
  shared memoryview.  For anything not on the per-request path.
- `stats.block(obj, prefix, counters, gauges)`: the per-request path keeps plain `int` attributes on
  its own slotted object (`st.downstream_rq_total += 1`, no call at all) and `flush()` copies them
  into this worker's row.  Each worker flushes on a short timer; `items()`/`value()` flush the calling
  process first, so a single-process sidecar's admin always reads exact values."""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import xxhash

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

    def __init__(self, workers: int = 1, max_slots: int = 65536, shared_names: bool = False) -> None:
        self.workers = max(1, workers)
        self.max_slots = max_slots
        self._map = mmap.mmap(-1, self.workers * max_slots * _SLOT, flags=mmap.MAP_SHARED)
        self._all = memoryview(self._map).cast("q")
        # shared_names: stats made after the workers fork (config from xDS, applied in every process)
        # get their slot from a name table shared by the processes (an open-addressing table of
        # 64-bit name hashes, under a lock made before fork), so every process agrees on it.
        self._names: memoryview | None = None
        self._names_lock: Any = None
        if shared_names:
            import multiprocessing

            self._names_map = mmap.mmap(-1, max_slots * _SLOT, flags=mmap.MAP_SHARED)
            self._names = memoryview(self._names_map).cast("q")
            self._names_lock = multiprocessing.get_context("fork").Lock()
        self._index: dict[str, int] = {}
        self._kinds: dict[str, str] = {}
        self._handles: dict[str, Counter] = {}
        self._row = 0
        self._lock = threading.Lock()
        # (object, ((attribute, slot), ...)) for plain-int stat blocks; plus custom flush hooks.
        self._blocks: list[tuple[object, tuple[tuple[str, int], ...]]] = []
        self._hooks: list[Callable[[memoryview], None]] = []

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

    def _shared_slot(self, name: str) -> int:
        assert self._names is not None
        h = xxhash.xxh64_intdigest(name.encode()) & 0x7FFFFFFFFFFFFFFF or 1  # 0 marks a free cell
        n = self.max_slots
        with self._names_lock:
            for k in range(n):
                i = (h + k) % n
                cell = self._names[i]
                if cell == h:
                    return i
                if cell == 0:
                    self._names[i] = h
                    return i
        raise RuntimeError(f"too many stats (>{self.max_slots})")

    def _slot(self, name: str, kind: str) -> int:
        i = self._index.get(name)
        if i is None and self._names is not None:
            i = self._index[name] = self._shared_slot(name)
            self._kinds[name] = kind
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

    def block(self, obj: object, prefix: str, counters: Iterable[str], gauges: Iterable[str] = ()) -> None:
        """Register `obj`'s int attributes as the stats `prefix + attr` (see the module doc)."""
        pairs = []
        row = self._row_view()
        for attr in counters:
            known = prefix + attr in self._index
            i = self._slot(prefix + attr, "counter")
            if known:
                # A replacement (a listener or cluster updated by xDS) keeps counting from where the
                # one it replaces got, as Envoy's stats outlive config; gauges start from zero.
                setattr(obj, attr, row[i])
            pairs.append((attr, i))
        for attr in gauges:
            pairs.append((attr, self._slot(prefix + attr, "gauge")))
        self._blocks.append((obj, tuple(pairs)))

    def hook(self, fn: Callable[[memoryview], None]) -> None:
        """`fn(row)` runs at every flush (for values kept in lists or dicts)."""
        self._hooks.append(fn)

    def slot(self, name: str, kind: str = "counter") -> int:
        """The index of `name` in a row (for flush hooks)."""
        return self._slot(name, kind)

    def flush(self) -> None:
        row = self._row_view()
        for obj, pairs in self._blocks:
            for attr, i in pairs:
                row[i] = getattr(obj, attr)
        for fn in self._hooks:
            fn(row)

    def forget(self, obj: object) -> None:
        """Stop flushing `obj` (its config went away); its last values stay in the row."""
        self._blocks = [b for b in self._blocks if b[0] is not obj]

    # -- reading (admin) ---------------------------------------------------------------------------
    def value(self, name: str) -> int:
        self.flush()
        return self._sum(name)

    def _sum(self, name: str) -> int:
        i = self._index[name]
        return sum(self._all[w * self.max_slots + i] for w in range(self.workers))

    def items(self) -> Iterator[tuple[str, str, int]]:
        """(name, kind, value summed over workers), sorted by name as Envoy prints them."""
        self.flush()
        rows = [self._all[w * self.max_slots : (w + 1) * self.max_slots] for w in range(self.workers)]
        index = self._index
        for name in sorted(index):
            i = index[name]
            yield name, self._kinds[name], sum(r[i] for r in rows)

    def used(self, name: str) -> bool:
        """Envoy's `usedonly`: a counter that was ever incremented / a gauge ever set."""
        return self._sum(name) != 0

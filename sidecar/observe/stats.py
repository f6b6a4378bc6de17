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
  process first, so a single-process sidecar's admin always reads exact values.

The flush walks only the blocks that changed lately, so that an idle sidecar holding 10,000 clusters
(each a block) does no work per cluster.  A block unchanged for QUIET_FLUSHES flushes goes *cold*: its
object's class is swapped for a generated subclass whose stat attributes are data descriptors, so the
first write to any of them (`+= 1`, `-= 1`, `setattr`) swaps the class back and puts the block back in
the walk.  A hot block pays nothing per write (plain slot stores, as before); a cold one pays one
Python call on its first write.  Flush hooks given an `owner` block run only while that block is hot
(so the owner's hooked containers must change only together with one of its stat attributes, as
ClusterStats.codes changes with upstream_rq_completed)."""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

import xxhash

_SLOT = 8


T = TypeVar("T")
_KIND_CODES = {"counter": ord("c"), "gauge": ord("g")}
_KIND_NAMES = {code: name for name, code in _KIND_CODES.items()}

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


# A block unchanged for this many flushes (0.5 s apart in runtime.py) stops being walked.
QUIET_FLUSHES = 2


class _Block:
    """One registered object: its (attribute, slot) pairs and its own flush hooks."""

    __slots__ = ("cold", "coolable", "hooks", "obj", "pairs", "quiet")

    def __init__(self, obj: object, pairs: tuple[tuple[str, int], ...]) -> None:
        self.obj = obj
        self.pairs = pairs
        self.hooks: list[Callable[[memoryview], None]] = []
        self.quiet = 0
        self.cold = False
        self.coolable = True


class _Wake:
    """A stat attribute of a cold block: reads pass through to the real attribute; a write first
    turns the block hot again (the object gets its own class back), then stores as usual."""

    __slots__ = ("inner", "name", "wake")

    def __init__(self, name: str, base: type, wake: Callable[[object], None]) -> None:
        self.name = name
        self.wake = wake
        # The base class's slot (member descriptor) or property; None: the instance __dict__.
        self.inner: Any = None
        for klass in base.__mro__:
            found = klass.__dict__.get(name)
            if found is not None:
                if hasattr(found, "__set__"):
                    self.inner = found
                break

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if self.inner is not None:
            return self.inner.__get__(obj, owner)
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None

    def __set__(self, obj: object, value: Any) -> None:
        self.wake(obj)
        setattr(obj, self.name, value)


def _own_class(obj: object) -> type:
    """The class a cold object had before it was cooled (its cold class's only base)."""
    base = type(obj).__base__
    assert base is not None
    return base


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
        # The kind of each slot, by slot index (b"c" counter, b"g" gauge): a bytearray rather than a
        # dict by name, which at 10,000 clusters (half a million stats) is tens of megabytes.
        self._kinds = bytearray(max_slots)
        self._handles: dict[str, Counter] = {}
        self._row = 0
        self._lock = threading.Lock()
        # Plain-int stat blocks by id(object) (the entry holds the object, so the id stays unique);
        # `_hot` the ones the next flush walks; hooks with no owner run at every flush.
        self._entries: dict[int, _Block] = {}
        # shared(): stat-block objects by scope, with their reference counts; and scope by id(obj).
        self._shared: dict[str, list[Any]] = {}
        self._shared_ids: dict[int, str] = {}
        self._hot: dict[int, _Block] = {}
        self._hooks: list[Callable[[memoryview], None]] = []
        self._cold_classes: dict[tuple[type, frozenset[str]], type] = {}
        # Blocks visited by flushes so far (an observable for tests and benchmarks).
        self.walked = 0

    # -- set-up ----------------------------------------------------------------------------------
    def select_worker(self, row: int) -> None:
        """Called in each worker after fork: handles made later write to this worker's row.
        Handles made before the fork are re-pointed too."""
        self._row = row
        for name, h in self._handles.items():
            h._mv = self._row_view()
            h._i = self._index[name]
        for b in self._entries.values():  # this worker's row starts empty: walk everything once
            self._heat(b)

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
            self._kinds[i] = _KIND_CODES[kind]
        if i is None:
            with self._lock:
                i = len(self._index)
                if i >= self.max_slots:
                    raise RuntimeError(f"too many stats (>{self.max_slots})")
                self._index[name] = i
                self._kinds[i] = _KIND_CODES[kind]
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
        b = self._entries.get(id(obj))
        if b is None:
            b = self._entries[id(obj)] = _Block(obj, tuple(pairs))
        else:  # a second prefix on the same object
            self._heat(b)
            b.pairs += tuple(pairs)
        self._hot[id(obj)] = b

    def hook(self, fn: Callable[[memoryview], None], owner: object = None) -> None:
        """`fn(row)` runs at every flush (for values kept in lists or dicts); with `owner` (an object
        registered with `block`), only at flushes that walk the owner's block, and until `forget`."""
        b = self._entries.get(id(owner)) if owner is not None else None
        if b is None:
            self._hooks.append(fn)
        else:
            b.hooks.append(fn)

    def slot(self, name: str, kind: str = "counter") -> int:
        """The index of `name` in a row (for flush hooks)."""
        return self._slot(name, kind)

    def flush(self) -> None:
        """Copy the hot blocks into this worker's row; blocks quiet for QUIET_FLUSHES go cold."""
        row = self._row_view()
        hot = self._hot
        if hot:
            quiet: list[_Block] = []
            blocks = list(hot.values())
            self.walked += len(blocks)
            for b in blocks:
                obj = b.obj
                changed = False
                for attr, i in b.pairs:
                    v = getattr(obj, attr)
                    if row[i] != v:
                        row[i] = v
                        changed = True
                for fn in b.hooks:
                    fn(row)
                if changed:
                    b.quiet = 0
                else:
                    b.quiet += 1
                    if b.quiet >= QUIET_FLUSHES and b.coolable:
                        quiet.append(b)
            for b in quiet:
                self._cool(b)
        for fn in self._hooks:
            fn(row)

    def shared(self, scope: str, make: Callable[[], T]) -> T:
        """The stat-block object of `scope` ("http.<stat_prefix>.", "tcp.<stat_prefix>."), made by
        `make` on first use and shared by every user until each has `release`d it.  Envoy's stats
        are shared by name: two filter chains whose connection managers have one stat_prefix (Istio's
        TLS and plaintext chains of a port) count into the same counters.  Two blocks on the same
        slots would overwrite each other at every flush instead of adding up."""
        entry = self._shared.get(scope)
        if entry is not None:
            entry[1] += 1
            return cast(T, entry[0])
        obj = make()
        self._shared[scope] = [obj, 1]
        self._shared_ids[id(obj)] = scope
        return obj

    def release(self, obj: object) -> None:
        """A user of `obj` is gone: `forget` it once no user is left (a block not made by `shared`
        is forgotten at once)."""
        scope = self._shared_ids.get(id(obj))
        if scope is not None:
            entry = self._shared[scope]
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._shared[scope]
            del self._shared_ids[id(obj)]
        self.forget(obj)

    def forget(self, obj: object) -> None:
        """Stop flushing `obj` (its config went away); its last values stay in the row."""
        b = self._entries.pop(id(obj), None)
        if b is None:
            return
        if self._hot.pop(id(obj), None) is not None:  # what it counted since the last flush
            row = self._row_view()
            for attr, i in b.pairs:
                row[i] = getattr(obj, attr)
            for fn in b.hooks:
                fn(row)
        if b.cold:
            obj.__class__ = _own_class(obj)
            b.cold = False

    # -- hot and cold blocks -----------------------------------------------------------------------
    def _cool(self, b: _Block) -> None:
        """Stop walking `b` until one of its attributes is written (see the module doc)."""
        obj = b.obj
        base = type(obj)
        attrs = frozenset(a for a, _ in b.pairs)
        cold = self._cold_classes.get((base, attrs))
        if cold is None:
            wakes = {a: _Wake(a, base, self._wake) for a in attrs}
            cold = type(base.__name__, (base,), {"__slots__": (), "__module__": base.__module__, **wakes})
            self._cold_classes[(base, attrs)] = cold
        try:
            obj.__class__ = cold
        except TypeError:  # a class whose instances cannot change class: keep walking it
            b.coolable = False
            return
        b.cold = True
        del self._hot[id(obj)]

    def _heat(self, b: _Block) -> None:
        if b.cold:
            b.obj.__class__ = _own_class(b.obj)
            b.cold = False
        b.quiet = 0
        self._hot[id(b.obj)] = b

    def _wake(self, obj: object) -> None:
        b = self._entries.get(id(obj))
        if b is not None and b.obj is obj:
            self._heat(b)
        else:  # forgotten (forget restores the class; this is only a safety net)
            obj.__class__ = _own_class(obj)

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
            yield name, _KIND_NAMES[self._kinds[i]], sum(r[i] for r in rows)

    def used(self, name: str) -> bool:
        """Envoy's `usedonly`: a counter that was ever incremented / a gauge ever set."""
        return self._sum(name) != 0


def shared_block(stats: Any, scope: str, make: Callable[[], T]) -> T:
    """`stats.shared(scope, make)`, or a fresh `make()` for a stand-in registry without sharing
    (the throwaway runtimes of tests and of an RDS swap)."""
    fn = getattr(stats, "shared", None)
    return make() if fn is None else cast(T, fn(scope, make))

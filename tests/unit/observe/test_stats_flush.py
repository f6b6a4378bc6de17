"""The stats flush walks only blocks that changed lately: quiet blocks go cold (their class is swapped
for one whose stat attributes wake them on write), so an idle sidecar with many clusters does no
per-cluster work.  Observable: Stats.walked (blocks visited by flushes so far)."""

from __future__ import annotations

from sidecar.observe.stats import QUIET_FLUSHES, Stats
from sidecar.upstream.cluster_manager import ClusterStats


class Block:
    __slots__ = ("active", "extra", "total")

    def __init__(self) -> None:
        self.total = 0
        self.active = 0
        self.extra: dict[str, int] = {}


class DictBlock:  # no __slots__: values live in the instance dict
    def __init__(self) -> None:
        self.total = 0


def _settle(s: Stats) -> None:
    for _ in range(QUIET_FLUSHES + 1):
        s.flush()


def _many(n: int) -> tuple[Stats, list[Block]]:
    s = Stats(max_slots=4 * n)
    blocks = [Block() for _ in range(n)]
    for k, b in enumerate(blocks):
        s.block(b, f"cluster.c{k}.", ("total",), ("active",))
    return s, blocks


def test_quiet_blocks_are_not_walked_and_one_change_walks_one_block() -> None:
    s, blocks = _many(1000)
    _settle(s)
    before = s.walked
    for _ in range(10):
        s.flush()
    assert s.walked == before  # idle: no block visited
    blocks[617].total += 3
    assert type(blocks[617]) is Block  # woken: its own class again
    s.flush()
    assert s.walked == before + 1
    assert s.value("cluster.c617.total") == 3
    assert s.value("cluster.c616.total") == 0


def test_a_gauge_going_down_on_a_cold_block_is_flushed() -> None:
    s, blocks = _many(10)
    blocks[3].active = 2
    _settle(s)
    assert type(blocks[3]) is not Block and isinstance(blocks[3], Block)  # cold
    blocks[3].active -= 1
    assert s.value("cluster.c3.active") == 1
    blocks[3].active = 0
    assert s.value("cluster.c3.active") == 0


def test_reading_a_cold_block_does_not_wake_it() -> None:
    s, blocks = _many(5)
    blocks[1].total = 7
    _settle(s)
    walked = s.walked
    assert blocks[1].total == 7 and blocks[1].active == 0
    s.flush()
    assert s.walked == walked
    assert [v for n, _, v in s.items() if n == "cluster.c1.total"] == [7]


def test_a_block_becomes_cold_only_after_quiet_flushes() -> None:
    s, blocks = _many(3)
    for _ in range(5):  # keeps changing: stays hot
        blocks[0].total += 1
        s.flush()
        assert type(blocks[0]) is Block
    _settle(s)
    assert type(blocks[0]) is not Block
    assert s.value("cluster.c0.total") == 5


def test_owned_hooks_run_only_while_their_block_is_hot() -> None:
    s, blocks = _many(2)
    calls: list[int] = []
    slot = s.slot("cluster.c0.extra_x")

    def hook(row: memoryview) -> None:
        calls.append(1)
        row[slot] = blocks[0].extra.get("x", 0)

    s.hook(hook, blocks[0])
    _settle(s)
    n = len(calls)
    s.flush()
    assert len(calls) == n  # cold: its hook is not run
    blocks[0].extra["x"] = 4
    blocks[0].total += 1  # the container changes together with a stat attribute
    assert s.value("cluster.c0.extra_x") == 4
    assert len(calls) == n + 1


def test_unowned_hooks_run_at_every_flush() -> None:
    s = Stats(max_slots=4)
    calls: list[int] = []
    s.hook(lambda row: calls.append(1))
    for _ in range(4):
        s.flush()
    assert len(calls) == 4


def test_forget_restores_the_class_writes_the_last_values_and_drops_the_hooks() -> None:
    s, blocks = _many(2)
    calls: list[int] = []
    s.hook(lambda row: calls.append(1), blocks[1])
    _settle(s)
    s.forget(blocks[1])  # cold
    assert type(blocks[1]) is Block
    blocks[1].total += 5  # no longer registered: not counted, and no error
    blocks[0].total += 2
    s.flush()
    assert s.value("cluster.c1.total") == 0
    s.forget(blocks[0])  # hot, with a change not yet flushed
    assert s.value("cluster.c0.total") == 2
    n = len(calls)
    s.flush()
    assert len(calls) == n


def test_a_replacement_block_continues_from_a_cold_predecessor() -> None:
    s, blocks = _many(1)
    blocks[0].total = 9
    _settle(s)
    new = Block()
    s.block(new, "cluster.c0.", ("total",), ("active",))
    s.forget(blocks[0])
    assert new.total == 9
    new.total += 1
    assert s.value("cluster.c0.total") == 10


def test_dict_objects_cool_and_wake_too() -> None:
    s = Stats(max_slots=4)
    d = DictBlock()
    s.block(d, "x.", ("total",))
    _settle(s)
    assert type(d) is not DictBlock
    d.total += 2
    assert type(d) is DictBlock
    assert s.value("x.total") == 2


def test_select_worker_walks_every_block_again() -> None:
    s = Stats(workers=2, max_slots=8)
    b = Block()
    b.total = 3
    s.block(b, "c.", ("total",), ("active",))
    _settle(s)
    s.select_worker(1)  # as in a forked worker: its row starts empty
    walked = s.walked
    s.flush()
    assert s.walked == walked + 1
    assert s._all[1 * 8 + s.slot("c.total")] == 3


def test_cluster_stats_response_codes_reach_the_row_after_going_cold() -> None:
    s = Stats(max_slots=4096)
    cs = [ClusterStats(s, f"c{k}") for k in range(20)]
    _settle(s)
    walked = s.walked
    s.flush()
    assert s.walked == walked
    cs[7].upstream_rq_total += 1
    cs[7].response(503)
    cs[7].response(200)
    assert s.value("cluster.c7.upstream_rq_503") == 1
    assert s.value("cluster.c7.upstream_rq_5xx") == 1
    assert s.value("cluster.c7.upstream_rq_2xx") == 1
    assert s.value("cluster.c7.upstream_rq_completed") == 2
    assert s.value("cluster.c6.upstream_rq_completed") == 0

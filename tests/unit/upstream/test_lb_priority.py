"""PriorityPlan (lb/priority.py): Envoy's priority loads, degraded load, panic mode, excluded hosts and
locality weights, from Envoy's documented tables and the cases checked on the envoy binary, plus
hypothesis properties."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.upstream.lb.priority import (
    ALL,
    DEGRADED,
    DEGRADED_HOSTS,
    EXCLUDED,
    HEALTHY,
    HEALTHY_HOSTS,
    UNHEALTHY,
    LocalityScheduler,
    PriorityPlan,
)

H, D, U, X = HEALTHY, DEGRADED, UNHEALTHY, EXCLUDED


def plan(*levels: list[int], **kw: object) -> PriorityPlan:
    """A plan from per-priority state lists (hosts numbered in order, weight 1)."""
    prios = [p for p, states in enumerate(levels) for _ in states]
    states = [s for level in levels for s in level]
    return PriorityPlan(prios, states, [1] * len(states), **kw)  # type: ignore[arg-type]


def healthy_share(n: int, healthy: int) -> list[int]:
    return [H] * healthy + [U] * (n - healthy)


# Envoy docs, "Priority levels": P0 health against P1 at 100 %.
@pytest.mark.parametrize(
    ("p0_healthy", "loads"),
    [(100, (100, 0)), (72, (100, 0)), (71, (99, 1)), (50, (70, 30)), (25, (35, 65)), (0, (0, 100))],
)
def test_documented_priority_spillover(p0_healthy: int, loads: tuple[int, int]) -> None:
    p = plan(healthy_share(100, p0_healthy), [H] * 100)
    assert p.healthy_load == loads
    assert p.degraded_load == (0, 0)
    assert p.panic == (False, False)  # the total is 100: no priority panics


def test_degraded_load_follows_healthy_load() -> None:
    # load_balancer_impl.cc's example: health 10/20/10, degraded 20/10/0 -> 16/28/14 healthy and
    # 28/14/0 degraded (rounding remainder to the first healthy priority); threshold 0: no panic.
    p = plan([H, D, D] + [U] * 11, [H, H, D] + [U] * 11, [H] + [U] * 13, panic_threshold=0)
    assert (p.health, p.degraded) == ((10, 20, 10), (20, 10, 0))
    assert p.healthy_load == (16, 28, 14)
    assert p.degraded_load == (28, 14, 0)
    assert p.choose_priority(15) == (0, False)  # 15 % 100 + 1 = 16 <= 16
    assert p.choose_priority(16) == (1, False)
    assert p.choose_priority(58) == (0, True)  # 59 > 58: the degraded loads start
    assert p.choose_priority(99) == (1, True)


def test_oracle_cases() -> None:
    # Checked on envoy 1.40 (see tests/differential/test_priority.py for the live versions).
    # 2 of 5 healthy: 40 % < 50 %: panic (no overprovisioning in the panic test).
    p = plan([H, H, U, U, U])
    assert p.panic == (True,) and p.fixed == (0, ALL, -1)
    # P0 {healthy, draining, draining}, P1 {healthy, healthy}: 1 / (3 - 2) -> all on P0.
    p = plan([H, X, X], [H, H])
    assert p.healthy_load == (100, 0) and p.panic == (False, False)
    # P0 {healthy, unhealthy, unhealthy}: 140 / 3 = 46 % on P0, the rest on P1.
    p = plan([H, U, U], [H, H])
    assert p.healthy_load == (46, 54)
    # P0 {timeout, timeout, degraded}, P1 {unhealthy, healthy}: P1 healthy 70 %, P0 degraded 30 %.
    p = plan([U, U, D], [U, H])
    assert (p.healthy_load, p.degraded_load) == ((0, 70), (30, 0))


def test_total_panic_spreads_by_host_counts() -> None:
    p = plan([U, U, U], [U])
    assert p.panic == (True, True)
    assert p.healthy_load == (75, 25) and p.degraded_load == (0, 0)
    assert p.source(0) == ((0, ALL, -1), True)
    # Excluded hosts count in the total-panic split.
    assert plan([U, X], [U, U]).healthy_load == (50, 50)


def test_threshold_zero_never_panics_and_loads_still_sum_to_100() -> None:
    p = plan([U, U], [U], panic_threshold=0)
    assert p.panic == (False, False)
    assert p.healthy_load == (100, 0)
    key, panic = p.source(7)
    assert not panic and p.hosts(key) == ()


def test_panic_threshold_is_rounded_and_capped() -> None:
    assert plan(healthy_share(10, 4), panic_threshold=40.4).panic == (False,)
    assert plan(healthy_share(10, 4), panic_threshold=40.5).panic == (True,)
    assert plan(healthy_share(10, 6), panic_threshold=250).panic == (True,)


def test_overprovisioning_factor() -> None:
    # 100: no headroom, P0 at 80 % takes 80 %.
    assert plan(healthy_share(10, 8), [H] * 10, overprovisioning_factor=100).healthy_load == (80, 20)
    assert plan(healthy_share(10, 8), [H] * 10).healthy_load == (100, 0)


def test_weighted_priority_health() -> None:
    # One heavy healthy host of four: by count 35 %, by weight 140 * 7 / 10 -> 98 %.
    prios, states, weights = [0, 0, 0, 0, 1], [H, U, U, U, H], [7, 1, 1, 1, 1]
    assert PriorityPlan(prios, states, weights).healthy_load == (35, 65)
    assert PriorityPlan(prios, states, weights, weighted_priority_health=True).healthy_load == (98, 2)


def test_empty_cluster() -> None:
    p = PriorityPlan([], [], [])
    assert p.healthy_load == (100,) and p.panic == (True,)
    assert p.hosts(p.source(0)[0]) == ()


def test_sources_and_fixed() -> None:
    p = plan([H, D, U, X])
    assert p.hosts((0, HEALTHY_HOSTS, -1)) == (0,)
    assert p.hosts((0, DEGRADED_HOSTS, -1)) == (1,)
    assert p.hosts((0, ALL, -1)) == (0, 1, 2, 3)
    assert p.fixed is None and p.sole_priority == 0  # healthy and degraded loads both
    assert plan([H, H], [H]).fixed == (0, HEALTHY_HOSTS, -1)


def locality_plan(states: list[int], locs: list[str], weights: dict[str, int], **kw: object) -> PriorityPlan:
    return PriorityPlan(
        [0] * len(states),
        states,
        [1] * len(states),
        [("r", z, "") for z in locs],
        [weights.get(z, 0) for z in locs],
        locality_weighted=True,
        **kw,  # type: ignore[arg-type]
    )


def locality_counts(p: PriorityPlan, n: int) -> Counter[int]:
    out: Counter[int] = Counter()
    for i in range(n):
        key, _ = p.source(i)
        out[key[2]] += 1
    return out


def test_locality_weights_documented_table() -> None:
    # Envoy docs, "Locality weighted load balancing": X weight 1, Y weight 2; Y fully available.
    for x_healthy, x_share in ((100, 33), (70, 33), (69, 32), (50, 26), (25, 15), (0, 0)):
        states = healthy_share(100, x_healthy) + [H] * 100
        p = locality_plan(states, ["x"] * 100 + ["y"] * 100, {"x": 1, "y": 2})
        if x_healthy == 0:
            # X has no healthy host: its effective weight is 0, so Y takes everything.
            assert set(locality_counts(p, 300)) == {1}
            continue
        counts = locality_counts(p, 3000)
        # The table's percentages are rounded either way (69 % -> 32.6 % is listed as 32).
        assert abs(100 * counts[0] / 3000 - x_share) <= 1


def test_locality_without_weight_gets_nothing_and_hosts_come_from_the_locality() -> None:
    p = locality_plan([H, H, H, U], ["a", "b", "b", "b"], {"b": 3})
    seen = set()
    for i in range(20):
        key, _ = p.source(i)
        assert key[2] == 1  # "b" (localities sort by region, zone, sub_zone)
        seen.update(p.hosts(key))
    assert seen == {1, 2}
    # No weight at all: no schedule, plain healthy hosts.
    p = locality_plan([H, H], ["a", "b"], {})
    assert p.fixed == (0, HEALTHY_HOSTS, -1)


def test_hash_hosts_with_locality_weights() -> None:
    p = locality_plan([H, H, H], ["a", "b", "b"], {"a": 1, "b": 3})
    hosts, weights = p.hash_hosts(0)
    assert hosts == (0, 1, 2)
    assert weights == pytest.approx((0.25, 0.375, 0.375))
    hosts, weights = plan([H, U, H]).hash_hosts(0)
    assert (hosts, weights) == ((0, 2), (1.0, 1.0))
    # In panic the table covers every host.
    assert plan([H, U, U, U]).hash_hosts(0)[0] == (0, 1, 2, 3)


def test_locality_scheduler_is_an_edf_schedule() -> None:
    s = LocalityScheduler([(0, 1.0), (1, 2.0)])
    assert [s.pick() for _ in range(6)] == [1, 0, 1, 1, 0, 1]


# --- properties ------------------------------------------------------------------------------------

states_st = st.lists(st.sampled_from([H, D, U, X]), min_size=0, max_size=12)


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[int], list[int], list[int]]:
    states = draw(states_st)
    prios = draw(st.lists(st.integers(0, 3), min_size=len(states), max_size=len(states)))
    weights = draw(st.lists(st.integers(1, 5), min_size=len(states), max_size=len(states)))
    return prios, states, weights


@settings(max_examples=300, deadline=None)
@given(
    clusters(),
    st.integers(1, 300),
    st.sampled_from([0.0, 30.0, 50.0, 100.0]),
    st.booleans(),
    st.integers(0, 2**64 - 1),
)
def test_loads_sum_to_100_and_picks_respect_health(
    c: tuple[list[int], list[int], list[int]], factor: int, threshold: float, weighted: bool, h: int
) -> None:
    prios, states, weights = c
    p = PriorityPlan(
        prios,
        states,
        weights,
        overprovisioning_factor=factor,
        panic_threshold=threshold,
        weighted_priority_health=weighted,
    )
    assert sum(p.healthy_load) + sum(p.degraded_load) == 100
    assert all(x >= 0 for x in p.healthy_load + p.degraded_load)
    key, panic = p.source(h)
    for i in p.hosts(key):
        if panic:
            assert key[1] == ALL
        elif key[1] == HEALTHY_HOSTS:
            assert states[i] == HEALTHY
        else:
            assert states[i] == DEGRADED


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=15), st.integers(0, 2**64 - 1))
def test_all_healthy_sends_everything_to_p0(prios: list[int], h: int) -> None:
    # Renumber so that P0 exists (an empty P0 would rightly get nothing).
    prios = [p - min(prios) for p in prios]
    p = PriorityPlan(prios, [H] * len(prios), [1] * len(prios))
    assert p.healthy_load[0] == 100 and not any(p.panic)
    key, panic = p.source(h)
    assert key[0] == 0 and not panic


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=5), st.integers(50, 400))
def test_locality_picks_converge_to_the_weights(weights: list[int], n: int) -> None:
    names = [f"z{i:02d}" for i in range(len(weights))]
    p = locality_plan([H] * len(weights), names, dict(zip(names, weights, strict=True)))
    counts = locality_counts(p, n)
    total = sum(weights)
    for i, w in enumerate(weights):
        # EDF keeps every locality within a few picks (at most one per locality) of its share.
        assert abs(counts[i] - n * w / total) <= len(weights)

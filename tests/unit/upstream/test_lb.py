"""Load balancer picks: exact shares over one period, spread, and the random picker's weights."""

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from sidecar.upstream.lb.random import WeightedRandom
from sidecar.upstream.lb.round_robin import RoundRobin


def test_equal_weights_rotate_from_start() -> None:
    rr = RoundRobin((1, 1, 1), start=1)
    assert [rr.pick() for _ in range(6)] == [1, 2, 0, 1, 2, 0]


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8))
def test_weighted_round_robin_gives_exact_shares_per_period(weights: list[int]) -> None:
    rr = RoundRobin(tuple(weights))
    total = sum(weights)
    counts = Counter(rr.pick() for _ in range(total * 3))
    assert counts == Counter({i: w * 3 for i, w in enumerate(weights)})


def test_weighted_round_robin_spreads_picks() -> None:
    # EDF: a weight-3 host is not picked three times in a row when another host is due.
    rr = RoundRobin((3, 1))
    seq = [rr.pick() for _ in range(8)]
    assert seq.count(0) == 6 and seq.count(1) == 2
    assert "0000" not in "".join(map(str, seq))


@given(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=8))
def test_weighted_random_over_every_value_of_one_period(weights: list[int]) -> None:
    wr = WeightedRandom(tuple(weights))
    total = sum(weights)
    counts = Counter(wr.pick(r) for r in range(total))
    if len(set(weights)) == 1:
        assert counts == Counter({i: total // len(weights) for i in range(len(weights))})
    else:
        assert counts == Counter(dict(enumerate(weights)))

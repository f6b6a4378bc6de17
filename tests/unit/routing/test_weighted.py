"""weighted.pick: random % total walked over the cumulative weights (Envoy's WeightedCluster)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.model.route import ClusterWeight
from sidecar.routing.weighted import pick


def clusters(*weights: int) -> tuple[ClusterWeight, ...]:
    return tuple(ClusterWeight(name=f"c{i}", weight=w) for i, w in enumerate(weights))


def test_intervals_in_configuration_order() -> None:
    cs = clusters(1, 3, 0, 2)
    got = [pick(cs, 6, r).name for r in range(12)]
    assert got == ["c0", "c1", "c1", "c1", "c3", "c3"] * 2


@given(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=6).filter(any))
def test_one_period_matches_the_weights_exactly(weights: list[int]) -> None:
    cs = clusters(*weights)
    total = sum(weights)
    start = 7 * total + 3  # any window of `total` consecutive values is one full period
    counts = Counter(pick(cs, total, r).name for r in range(start, start + total))
    assert counts == Counter({c.name: c.weight for c in cs if c.weight})


@given(
    st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=5).filter(any),
    st.integers(min_value=0),
)
def test_weight_zero_never_picked(weights: list[int], rand: int) -> None:
    assert pick(clusters(*weights), sum(weights), rand).weight > 0


def test_bad_total_is_an_error() -> None:
    with pytest.raises(ValueError, match="exceeds the sum"):
        pick(clusters(1, 1), 3, 2)

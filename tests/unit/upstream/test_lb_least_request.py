"""LEAST_REQUEST: power of two choices never keeps the busier sample; weighted EDF follows
weight / (active + 1) ** bias."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from sidecar.upstream.lb.least_request import LeastRequest


@dataclass
class H:
    rq_active: int


class Recorder:
    """A rand() that replays given values and records the indices they sample."""

    def __init__(self, values: list[int]) -> None:
        self.values = list(values)
        self.used: list[int] = []

    def __call__(self) -> int:
        v = self.values.pop(0)
        self.used.append(v)
        return v


@given(
    st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=2**64 - 1), min_size=4, max_size=4),
    st.integers(min_value=2, max_value=4),
)
def test_p2c_never_keeps_the_busier_candidate(active: list[int], rands: list[int], choices: int) -> None:
    hosts = [H(a) for a in active]
    lb = LeastRequest(tuple([1] * len(hosts)), choice_count=choices)
    rec = Recorder(rands)
    i = lb.pick(hosts, rec)
    sampled = [r % len(hosts) for r in rec.used]
    assert len(sampled) == choices
    assert i in sampled
    assert active[i] == min(active[s] for s in sampled)
    # Ties keep the earliest sample (Envoy replaces only on strictly fewer active requests).
    assert i == next(s for s in sampled if active[s] == active[i])


def test_p2c_prefers_idle_host_over_many_picks() -> None:
    hosts = [H(10), H(0), H(0)]
    lb = LeastRequest((1, 1, 1))
    state = 12345

    def rand() -> int:
        nonlocal state
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        return state >> 11

    counts = Counter(lb.pick(hosts, rand) for _ in range(3000))
    # The busy host wins only when both samples are it: about 1/9 of picks.
    assert counts[0] < 3000 * 0.2
    assert counts[1] > 3000 * 0.35 and counts[2] > 3000 * 0.35


@given(
    st.lists(st.integers(min_value=1, max_value=10), min_size=2, max_size=6).filter(lambda w: len(set(w)) > 1)
)
def test_weighted_without_active_requests_follows_weights(weights: list[int]) -> None:
    hosts = [H(0) for _ in weights]
    lb = LeastRequest(tuple(weights))
    total = sum(weights)
    counts = Counter(lb.pick(hosts, lambda: 0) for _ in range(total * 4))
    for i, w in enumerate(weights):
        assert abs(counts[i] - 4 * w) <= 1


def test_weighted_divides_by_active_requests() -> None:
    # weight 4 with 3 in flight -> effective 1; weight 1 idle -> effective 1: equal shares.
    hosts = [H(3), H(0)]
    lb = LeastRequest((4, 1))
    counts = Counter(lb.pick(hosts, lambda: 0) for _ in range(400))
    assert abs(counts[0] - counts[1]) <= 8


def test_host_weight_formula() -> None:
    lb = LeastRequest((4, 1), active_request_bias=1.0)
    assert lb.weight(0, 3) == 1.0
    lb = LeastRequest((4, 1), active_request_bias=0.0)
    assert lb.weight(0, 3) == 4.0
    lb = LeastRequest((4, 1), active_request_bias=0.5)
    assert lb.weight(0, 3) == 2.0


def test_explicit_bias_uses_edf_even_with_equal_weights() -> None:
    hosts = [H(0), H(0)]
    lb = LeastRequest((1, 1), active_request_bias=1.0, bias_configured=True)
    # EDF over equal weights alternates; no randomness is consumed.
    seq = [lb.pick(hosts, lambda: (_ for _ in ()).throw(AssertionError("rand used"))) for _ in range(4)]
    assert sorted(seq) == [0, 0, 1, 1]

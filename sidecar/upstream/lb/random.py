"""RANDOM: a host chosen with probability proportional to its weight (Envoy's RandomLoadBalancer).

Pure: the caller passes the random value."""

from __future__ import annotations

import bisect
import itertools


class WeightedRandom:
    __slots__ = ("_cumulative", "_total", "_uniform")

    def __init__(self, weights: tuple[int, ...]) -> None:
        self._uniform = len(set(weights)) <= 1
        self._cumulative = list(itertools.accumulate(weights))
        self._total = self._cumulative[-1] if weights else 0

    def pick(self, rand: int) -> int:
        """`rand` is a non-negative random integer (e.g. random.getrandbits(64))."""
        n = len(self._cumulative)
        if self._uniform:
            return rand % n
        return bisect.bisect_right(self._cumulative, rand % self._total)

"""LEAST_REQUEST: Envoy's LeastRequestLoadBalancer (power of two choices, or weighted EDF).

With equal endpoint weights Envoy samples `choice_count` hosts at random, with replacement, and keeps
the one with the fewest active requests; on a tie the earlier sample stays (least_request_lb.cc
unweightedHostPickNChoices).  With unequal weights (or an explicit active_request_bias) it runs an
earliest-deadline-first schedule whose weight for a host is re-computed each time that host is
picked: `load_balancing_weight / (active_requests + 1) ** active_request_bias` (hostWeight).

Pure: the caller passes the hosts' active request counts (anything with `rq_active`) and a source of
random 64-bit integers."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from typing import Protocol


class HasActive(Protocol):
    @property
    def rq_active(self) -> int: ...


class LeastRequest:
    __slots__ = ("_bias", "_choices", "_heap", "_n", "_now", "_order", "_weights")

    def __init__(
        self,
        weights: tuple[int, ...],
        choice_count: int = 2,
        active_request_bias: float = 1.0,
        bias_configured: bool = False,
    ) -> None:
        self._weights = weights
        self._n = len(weights)
        self._choices = choice_count
        self._bias = active_request_bias
        # EDF state (Envoy's EdfScheduler): entries (deadline, insertion order, index); `_now` is the
        # deadline of the last pick, the base for the next deadline of the picked host.
        self._heap: list[tuple[float, int, int]] | None = None
        self._now = 0.0
        self._order = 0
        if self._n and (len(set(weights)) > 1 or bias_configured):
            self._heap = []
            for i, w in enumerate(weights):
                # At build time no request is active: the weight is the endpoint weight.
                self._push(i, float(w))

    def _push(self, i: int, weight: float) -> None:
        assert self._heap is not None
        if weight <= 0:
            weight = 1e-12  # only a zero bias and weight can get here; keep the host schedulable
        heapq.heappush(self._heap, (self._now + 1.0 / weight, self._order, i))
        self._order += 1

    def weight(self, i: int, active: int) -> float:
        """Envoy's hostWeight for host `i` with `active` requests in flight."""
        w = float(self._weights[i])
        bias = self._bias
        if bias == 1.0:
            return w / (active + 1)
        if bias != 0.0:
            return w / math.pow(active + 1, bias)
        return w

    def pick(self, hosts: Sequence[HasActive], rand: Callable[[], int]) -> int:
        """Index into `hosts` (the same order as the weights); at least one host."""
        heap = self._heap
        if heap is None:
            n = self._n
            best = rand() % n
            best_active = hosts[best].rq_active
            for _ in range(self._choices - 1):
                j = rand() % n
                a = hosts[j].rq_active
                if a < best_active:
                    best, best_active = j, a
            return best
        deadline, _, i = heapq.heappop(heap)
        self._now = deadline
        self._push(i, self.weight(i, hosts[i].rq_active))
        return i

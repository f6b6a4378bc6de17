"""ROUND_ROBIN: plain rotation when weights are equal, earliest-deadline-first when they differ.

Envoy's RoundRobinLoadBalancer uses an EDF scheduler over host weights so that a host of weight w
gets w/sum of the picks, spread out rather than in bursts; with equal weights it is plain rotation.
Pure: state is a cursor (or the EDF heap) and nothing else."""

from __future__ import annotations

import heapq


class RoundRobin:
    __slots__ = ("_cursor", "_heap", "_n", "_weights")

    def __init__(self, weights: tuple[int, ...], start: int = 0) -> None:
        self._weights = weights
        self._n = len(weights)
        # Envoy starts each worker's rotation at a random offset (seed) so workers don't move in
        # step; `start` carries that offset.
        self._cursor = start % self._n if self._n else 0
        self._heap: list[tuple[float, int, int]] | None = None
        if self._n and len(set(weights)) > 1:
            # (deadline, tie-break order, index); deadline advances by 1/weight per pick.
            self._heap = [(1.0 / w, i, i) for i, w in enumerate(weights) if w > 0]
            heapq.heapify(self._heap)

    def pick(self) -> int:
        """Index of the next host; the caller guarantees at least one host."""
        heap = self._heap
        if heap is None:
            i = self._cursor
            self._cursor = i + 1 if i + 1 < self._n else 0
            return i
        deadline, order, i = heap[0]
        heapq.heapreplace(heap, (deadline + 1.0 / self._weights[i], order, i))
        return i

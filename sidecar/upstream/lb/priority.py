"""Priority levels, degraded hosts, panic mode and locality weights: which host set a pick uses.

Envoy's LoadBalancerBase / ZoneAwareLoadBalancerBase / HostSetImpl (docs: arch overview, load
balancing: priority levels, degraded endpoints, locality weighted, overprovisioning factor, panic
threshold, excluded endpoints), computed once per health or membership change by `PriorityPlan`:

- each host has a coarse state: HEALTHY, DEGRADED, UNHEALTHY or EXCLUDED (Envoy's excluded hosts:
  EDS DRAINING, pending a first health check, immediate health-check failure).  Excluded hosts leave
  every denominator below but stay in "all hosts";
- a priority's health is min(100, overprovisioning_factor * healthy / (hosts - excluded)) in integer
  arithmetic (counts, or weights with weighted_priority_health), and the same for degraded;
- the normalized total availability is min(100, sum of both over priorities); the load (percent,
  summing to exactly 100) goes to healthy priorities first, each min(left, health * 100 / total),
  then to degraded ones, and any rounding remainder to the first priority with healthy (else
  degraded) availability;
- a priority is in panic when 100 * (healthy + degraded) / (hosts - excluded) < healthy_panic_threshold
  (a percent rounded to an integer), unless the total availability is 100: then no priority panics.
  When every priority panics the load follows host counts (excluded ones included).  A panicking
  priority balances over all its hosts; a threshold of 0 never panics;
- a pick draws h: priority = the first whose cumulative load reaches h % 100 + 1 (healthy loads, then
  degraded loads); with locality_weighted_lb_config, a locality of that priority by an EDF schedule over
  locality_weight * min(1, overprovisioning_factor / 100 * eligible / (hosts - excluded)) per locality.

Ring hash and Maglev (ThreadAwareLoadBalancerBase) build one table per priority over its healthy hosts
(all hosts in panic), host weights normalised within each locality and scaled by the raw locality
weights when locality-weighted: `hash_hosts(p)`.

Pure: no I/O, no clock; the caller passes the random/hash values."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

HEALTHY, DEGRADED, UNHEALTHY, EXCLUDED = 0, 1, 2, 3

# Source kinds: the host list a pick balances over (Envoy's HostsSource::SourceType).
ALL, HEALTHY_HOSTS, DEGRADED_HOSTS = 0, 1, 2
SourceKey = tuple[int, int, int]  # (priority, kind, locality index or -1)


class LocalityScheduler:
    """Envoy's EdfScheduler over localities: each pick pops the earliest deadline (ties: insertion
    order) and re-adds that locality at deadline + 1 / weight."""

    __slots__ = ("_heap", "_order", "_weights")

    def __init__(self, weights: Sequence[tuple[int, float]]) -> None:
        self._weights = dict(weights)
        self._heap = [(1.0 / w, k, i) for k, (i, w) in enumerate(weights)]
        heapq.heapify(self._heap)
        self._order = len(self._heap)

    def pick(self) -> int:
        deadline, _, i = self._heap[0]
        heapq.heapreplace(self._heap, (deadline + 1.0 / self._weights[i], self._order, i))
        self._order += 1
        return i


class PriorityPlan:
    """Everything a pick needs, derived from the hosts' priorities, localities and states."""

    __slots__ = (
        "_hash",
        "_schedulers",
        "_sources",
        "degraded",
        "degraded_load",
        "fixed",
        "health",
        "healthy_load",
        "locality_weighted",
        "n_priorities",
        "panic",
        "sole_priority",
    )

    def __init__(
        self,
        priorities: Sequence[int],
        states: Sequence[int],
        weights: Sequence[int],
        localities: Sequence[tuple[str, str, str]] = (),
        locality_weights: Sequence[int] = (),
        *,
        overprovisioning_factor: int = 140,
        panic_threshold: float = 50.0,
        weighted_priority_health: bool = False,
        locality_weighted: bool = False,
    ) -> None:
        n = len(priorities)
        if not localities:
            localities = [("", "", "")] * n
        if not locality_weights:
            locality_weights = [0] * n
        count = max(priorities, default=0) + 1
        self.n_priorities = count
        self.locality_weighted = locality_weighted
        per: list[list[int]] = [[] for _ in range(count)]
        for i, p in enumerate(priorities):
            per[p].append(i)
        of = overprovisioning_factor
        health = [0] * count
        degraded = [0] * count
        sizes = [0] * count  # hosts - excluded
        panic_pct = [0.0] * count
        for p, hosts in enumerate(per):
            h = [i for i in hosts if states[i] == HEALTHY]
            d = [i for i in hosts if states[i] == DEGRADED]
            x = [i for i in hosts if states[i] == EXCLUDED]
            size = len(hosts) - len(x)
            sizes[p] = size
            if size <= 0:
                continue
            if weighted_priority_health:
                hw = sum(weights[i] for i in h)
                dw = sum(weights[i] for i in d)
                tw = sum(weights[i] for i in hosts) - sum(weights[i] for i in x)
            else:
                hw, dw, tw = len(h), len(d), size
            health[p] = min(100, of * hw // tw) if tw else 0
            degraded[p] = min(100, of * dw // tw) if tw else 0
            # isHostSetInPanic counts hosts, whatever weighted_priority_health says.
            panic_pct[p] = 100.0 * len(h) / size + 100.0 * len(d) / size
        self.health = tuple(health)
        self.degraded = tuple(degraded)
        total = min(100, sum(health) + sum(degraded))
        healthy_load = [0] * count
        degraded_load = [0] * count
        if total > 0:
            left = 100
            first_h = first_d = -1
            for p in range(count):
                if first_h < 0 and health[p] > 0:
                    first_h = p
                healthy_load[p] = min(left, health[p] * 100 // total)
                left -= healthy_load[p]
            for p in range(count):
                if first_d < 0 and degraded[p] > 0:
                    first_d = p
                degraded_load[p] = min(left, degraded[p] * 100 // total)
                left -= degraded_load[p]
            if left:
                if first_h >= 0:
                    healthy_load[first_h] += left
                else:
                    degraded_load[first_d] += left
        threshold = min(100, int(panic_threshold + 0.5))
        panic = [False] * count
        if threshold == 0 and total == 0:
            healthy_load = [100] + [0] * (count - 1)  # nothing to pick; the loads must sum to 100
        elif total < 100:
            panic = [panic_pct[p] < threshold for p in range(count)]
            if total == 0 and not all(panic):
                # Only a tiny overprovisioning_factor gets here (hosts available, availability
                # rounded to 0): Envoy's choosePriority then falls back to P0's healthy hosts.
                healthy_load = [100] + [0] * (count - 1)
            if all(panic):
                # recalculateLoadInTotalPanic: by host counts, excluded hosts included.
                all_hosts = sum(len(hosts) for hosts in per)
                degraded_load = [0] * count
                if all_hosts == 0:
                    healthy_load = [100] + [0] * (count - 1)
                else:
                    healthy_load = [100 * len(hosts) // all_hosts for hosts in per]
                    first = next(p for p in range(count) if per[p])
                    healthy_load[first] += 100 - sum(healthy_load)
        self.healthy_load = tuple(healthy_load)
        self.degraded_load = tuple(degraded_load)
        self.panic = tuple(panic)
        self._sources: dict[SourceKey, tuple[int, ...]] = {}
        self._schedulers: dict[tuple[int, int], LocalityScheduler] = {}
        self._hash: list[tuple[tuple[int, ...], tuple[float, ...]]] = []
        for p, hosts in enumerate(per):
            self._build_priority(p, hosts, states, weights, localities, locality_weights, of)
        # `fixed`: the one source every pick lands on, when there is one (the common case: one
        # priority, no locality weighting), so that pick() can skip choosing.
        # `sole_priority`: the priority every pick lands on, when one has all the load (ring hash
        # and Maglev need no choice then).
        loaded = [p for p in range(count) if healthy_load[p] or degraded_load[p]]
        self.sole_priority = loaded[0] if len(loaded) == 1 else None
        chosen = [(p, False) for p in range(count) if healthy_load[p]]
        chosen += [(p, True) for p in range(count) if degraded_load[p]]
        self.fixed: SourceKey | None = None
        if len(chosen) == 1:
            p, deg = chosen[0]
            kind = DEGRADED_HOSTS if deg else HEALTHY_HOSTS
            if self.panic[p]:
                self.fixed = (p, ALL, -1)
            elif (p, kind) not in self._schedulers:
                self.fixed = (p, kind, -1)

    def _build_priority(
        self,
        p: int,
        hosts: list[int],
        states: Sequence[int],
        weights: Sequence[int],
        localities: Sequence[tuple[str, str, str]],
        locality_weights: Sequence[int],
        of: int,
    ) -> None:
        src = self._sources
        src[(p, ALL, -1)] = tuple(hosts)
        src[(p, HEALTHY_HOSTS, -1)] = tuple(i for i in hosts if states[i] == HEALTHY)
        src[(p, DEGRADED_HOSTS, -1)] = tuple(i for i in hosts if states[i] == DEGRADED)
        # Localities of this priority in Envoy's order (LocalityLess: region, zone, sub_zone); the
        # weight of a locality is the one its LocalityLbEndpoints carried (the last one wins).
        by_loc: dict[tuple[str, str, str], list[int]] = {}
        lw: dict[tuple[str, str, str], int] = {}
        for i in hosts:
            by_loc.setdefault(localities[i], []).append(i)
            if locality_weights[i]:
                lw[localities[i]] = locality_weights[i]
        order = sorted(by_loc)
        loc_weights = [lw.get(loc, 0) for loc in order]
        in_panic = self.panic[p]
        if not self.locality_weighted:
            chosen = src[(p, ALL if in_panic else HEALTHY_HOSTS, -1)]
            # The endpoint weights themselves: the ring and table builders normalise them.
            self._hash.append((chosen, tuple(float(weights[i]) for i in chosen)))
            return
        # ThreadAwareLoadBalancerBase's normalizeLocalityWeights.
        lw_sum = sum(loc_weights)
        hh: list[int] = []
        hw: list[float] = []
        for loc, w in zip(order, loc_weights, strict=True):
            members = [i for i in by_loc[loc] if in_panic or states[i] == HEALTHY]
            s = sum(weights[i] for i in members)
            if w and lw_sum and s:
                hh.extend(members)
                hw.extend(weights[i] * (w / lw_sum) / s for i in members)
        self._hash.append((tuple(hh), tuple(hw)))
        for kind, state in ((HEALTHY_HOSTS, HEALTHY), (DEGRADED_HOSTS, DEGRADED)):
            entries: list[tuple[int, float]] = []
            for li, (loc, w) in enumerate(zip(order, loc_weights, strict=True)):
                members = by_loc[loc]
                eligible = tuple(i for i in members if states[i] == state)
                src[(p, kind, li)] = eligible
                size = len(members) - sum(1 for i in members if states[i] == EXCLUDED)
                if size and eligible and w:
                    # HostSetImpl::effectiveLocalityWeight.
                    entries.append((li, w * min(1.0, of / 100.0 * len(eligible) / size)))
            if entries:
                self._schedulers[(p, kind)] = LocalityScheduler(entries)

    def choose_priority(self, h: int) -> tuple[int, bool]:
        """(priority, degraded?) for a 64-bit random or hash value (LoadBalancerBase::choosePriority)."""
        x = h % 100 + 1
        acc = 0
        for p, load in enumerate(self.healthy_load):
            acc += load
            if x <= acc:
                return p, False
        for p, load in enumerate(self.degraded_load):
            acc += load
            if x <= acc:
                return p, True
        return 0, False  # unreachable: the loads sum to 100

    def source(self, h: int) -> tuple[SourceKey, bool]:
        """(the source to balance over, whether it is a panic pick) for a random value `h`
        (ZoneAwareLoadBalancerBase::hostSourceToUse).  Advances a locality schedule."""
        p, deg = self.choose_priority(h)
        if self.panic[p]:
            return (p, ALL, -1), True
        kind = DEGRADED_HOSTS if deg else HEALTHY_HOSTS
        sched = self._schedulers.get((p, kind))
        if sched is not None:
            return (p, kind, sched.pick()), False
        return (p, kind, -1), False

    def hosts(self, key: SourceKey) -> tuple[int, ...]:
        """Indices (into the host list the plan was built from) of a source."""
        return self._sources.get(key, ())

    def hash_hosts(self, p: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """The hosts of priority `p`'s ring / Maglev table and their relative weights (normalised
        ones when locality-weighted; an empty tuple when no host qualifies)."""
        return self._hash[p]

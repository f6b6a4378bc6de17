"""A cluster's load balancer for one set of host states: priority, then locality, then the lb_policy.

Built by the cluster manager whenever membership or health changes (never per request): a
`PriorityPlan` (lb/priority.py) says which host list a pick uses, and each list gets the picker of
the cluster's lb_policy (lb/round_robin, random, least_request, ring_hash, maglev), made on first use
and carried over from the previous Balancer while the list's hosts and weights are unchanged (a
round-robin cursor keeps its place; a Maglev table costs tens of ms).  Ring hash and Maglev keep one
table per priority, as Envoy's ThreadAwareLoadBalancerBase does; the other policies one picker per
host list (Envoy's EdfLoadBalancerBase schedulers per HostsSource).

When every pick lands on one list (one priority, no locality schedule: the common case), `pick`
goes straight to its picker.  A pick in a panicking priority counts lb_healthy_panic."""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from sidecar.model.cluster import Cluster, LbPolicy
from sidecar.upstream.lb.least_request import LeastRequest
from sidecar.upstream.lb.maglev import Maglev
from sidecar.upstream.lb.priority import ALL, PriorityPlan, SourceKey
from sidecar.upstream.lb.random import WeightedRandom
from sidecar.upstream.lb.ring_hash import RingHash, host_key
from sidecar.upstream.lb.round_robin import RoundRobin

if TYPE_CHECKING:
    from sidecar.upstream.cluster_manager import Host

_Lb = RoundRobin | WeightedRandom | LeastRequest | RingHash | Maglev
# (what it was built for, the hosts it indexes, the picker or None when the list is empty)
_Entry = tuple[tuple[object, ...], tuple["Host", ...], _Lb | None]


class _PanicCounter(Protocol):
    lb_healthy_panic: int


class Balancer:
    __slots__ = ("_cfg", "_fast", "_hosts", "_lbs", "_rand", "_rand64", "_stats", "hashing", "plan")

    def __init__(
        self,
        cfg: Cluster,
        hosts: Sequence[Host],
        states: Sequence[int],
        stats: _PanicCounter,
        rand: random.Random,
        previous: Balancer | None = None,
    ) -> None:
        self._cfg = cfg
        self._hosts = hosts
        self._stats = stats
        self._rand = rand
        self._rand64 = functools.partial(rand.getrandbits, 64)
        self.hashing = cfg.lb_policy in (LbPolicy.RING_HASH, LbPolicy.MAGLEV)
        self.plan = plan = PriorityPlan(
            [h.endpoint.priority for h in hosts],
            states,
            [h.weight for h in hosts],
            [h.endpoint.locality for h in hosts],
            [h.endpoint.locality_weight for h in hosts],
            overprovisioning_factor=cfg.overprovisioning_factor,
            panic_threshold=cfg.healthy_panic_threshold,
            weighted_priority_health=cfg.weighted_priority_health,
            locality_weighted=cfg.locality_weighted_lb,
        )
        self._lbs: dict[SourceKey | int, _Entry] = {}
        if previous is not None:
            for key in previous._lbs:
                self._entry(key, previous._lbs)
        # The one list every pick uses, with whether those picks are panic picks.
        self._fast: tuple[tuple[Host, ...], _Lb | None, bool] | None = None
        if self.hashing:
            p = plan.sole_priority
            if p is not None:
                _, fh, lb = self._lbs.get(p) or self._entry(p)
                self._fast = (fh, lb, plan.panic[p])
        elif plan.fixed is not None and not (cfg.fail_traffic_on_panic and any(plan.panic)):
            key = plan.fixed
            _, fh, lb = self._lbs.get(key) or self._entry(key)
            self._fast = (fh, lb, key[1] == ALL and plan.panic[key[0]])

    def _entry(self, key: SourceKey | int, old: dict[SourceKey | int, _Entry] | None = None) -> _Entry:
        """The picker for a host list (a source key, or a priority for ring hash / Maglev)."""
        plan = self.plan
        hosts_all = self._hosts
        if isinstance(key, int):
            idx, w = plan.hash_hosts(key)
            weights: tuple[float, ...] = w
        else:
            idx = plan.hosts(key)
            weights = tuple(float(hosts_all[i].weight) for i in idx)
        hosts = tuple(hosts_all[i] for i in idx)
        built_for = tuple(zip((h.address for h in hosts), weights, strict=True))
        prev = old.get(key) if old is not None else None
        lb = prev[2] if prev is not None and prev[0] == built_for else self._build(hosts, weights)
        entry: _Entry = (built_for, hosts, lb)
        self._lbs[key] = entry
        return entry

    def _build(self, hosts: tuple[Host, ...], weights: tuple[float, ...]) -> _Lb | None:
        if not hosts:
            return None
        cfg = self._cfg
        policy = cfg.lb_policy
        if policy is LbPolicy.RING_HASH or policy is LbPolicy.MAGLEV:
            keys = tuple(host_key(h.address.host, h.address.port) for h in hosts)
            if policy is LbPolicy.MAGLEV:
                return Maglev(keys, weights, cfg.maglev_table_size)
            return RingHash(keys, weights, cfg.ring_hash_minimum_ring_size, cfg.ring_hash_maximum_ring_size)
        iw = tuple(h.weight for h in hosts)
        if policy is LbPolicy.RANDOM:
            return WeightedRandom(iw)
        if policy is LbPolicy.LEAST_REQUEST:
            bias = cfg.least_request_active_request_bias
            return LeastRequest(
                iw,
                cfg.least_request_choice_count,
                1.0 if bias is None else bias,
                bias_configured=bias is not None,
            )
        return RoundRobin(iw, start=self._rand.randrange(len(iw)))

    def picker(self, key: SourceKey | int) -> object:
        """The lb_policy's picker for a source key (a priority for ring hash / Maglev); for tests."""
        entry = self._lbs.get(key)
        return (entry if entry is not None else self._entry(key))[2]

    def pick(self, hash_key: int | None = None) -> Host | None:
        """The host for the next request, or None (503 `no healthy upstream`).  `hash_key` is the
        request's hash for RING_HASH / MAGLEV; without one Envoy draws a random 64-bit value."""
        fast = self._fast
        if fast is not None:
            hosts, lb, panic = fast
        else:
            plan = self.plan
            if self.hashing:
                if hash_key is None:
                    hash_key = self._rand.getrandbits(64)
                p = plan.choose_priority(hash_key)[0]
                panic = plan.panic[p]
                key: SourceKey | int = p
            else:
                key, panic = plan.source(self._rand.getrandbits(64))
                if panic and self._cfg.fail_traffic_on_panic:
                    self._stats.lb_healthy_panic += 1
                    return None
            entry = self._lbs.get(key)
            if entry is None:
                entry = self._entry(key)
            hosts, lb = entry[1], entry[2]
        if panic:
            self._stats.lb_healthy_panic += 1
        if lb is None:
            return None
        if type(lb) is RoundRobin:
            return hosts[lb.pick()]
        if type(lb) is LeastRequest:
            return hosts[lb.pick(hosts, self._rand64)]
        if type(lb) is WeightedRandom:
            return hosts[lb.pick(self._rand.getrandbits(32))]
        if hash_key is None:
            hash_key = self._rand.getrandbits(64)
        assert type(lb) is RingHash or type(lb) is Maglev
        return hosts[lb.pick(hash_key)]

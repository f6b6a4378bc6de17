"""Live upstream state, per worker: for each cluster its hosts, load balancer, pools and stats.

Config (model.cluster.Cluster) is immutable and swapped by reference; the state here is kept across
config versions while a cluster's `config_hash` is unchanged (ARCHITECTURE.md section 2), so pools
and counters survive an update that does not touch them.  DNS clusters are resolved here, off the
request path, on a timer (dns_refresh_rate)."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
from collections.abc import Iterable, Mapping

from sidecar.model.cluster import Cluster, DiscoveryType, DnsLookupFamily, LbPolicy
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.observe.stats import Stats
from sidecar.upstream.circuit_breaker import Breaker
from sidecar.upstream.lb.least_request import LeastRequest
from sidecar.upstream.lb.maglev import Maglev
from sidecar.upstream.lb.random import WeightedRandom
from sidecar.upstream.lb.ring_hash import RingHash, host_key
from sidecar.upstream.lb.round_robin import RoundRobin
from sidecar.upstream.outlier import OUTLIER_COUNTERS, OUTLIER_GAUGES, OutlierDetector
from sidecar.upstream.pools.http1 import Http1Pool

log = logging.getLogger("sidecar.upstream")

# Response codes that get their own upstream_rq_<code> counter.  Envoy makes these on demand; ours
# are made at config time so every worker process agrees on their slots (observe/stats.py).
TRACKED_CODES = (200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 408, 413, 429, 431, 500, 502, 503, 504)


_CLUSTER_COUNTERS = (
    "upstream_cx_connect_fail",
    "upstream_cx_destroy",
    "upstream_cx_destroy_local_with_active_rq",
    "upstream_cx_destroy_remote_with_active_rq",
    "upstream_cx_none_healthy",
    "upstream_cx_rx_bytes_total",
    "upstream_cx_total",
    "upstream_cx_tx_bytes_total",
    "lb_healthy_panic",
    "upstream_rq_completed",
    "upstream_cx_overflow",
    "upstream_rq_pending_overflow",
    "upstream_rq_per_try_timeout",
    "upstream_rq_retry",
    "upstream_rq_retry_overflow",
    "upstream_rq_retry_limit_exceeded",
    "upstream_rq_rx_reset",
    "upstream_rq_timeout",
    "upstream_rq_total",
    "upstream_rq_tx_reset",
)
_CLUSTER_GAUGES = ("membership_healthy", "membership_total", "upstream_cx_active", "upstream_rq_active")


class ClusterStats:
    """`cluster.<name>.*` of one cluster in this worker, as plain ints (observe/stats.py block).
    Response codes are counted in `codes` (status -> count) and flushed into the class totals
    (upstream_rq_2xx ...) and the TRACKED_CODES counters (upstream_rq_200 ...)."""

    __slots__ = (*_CLUSTER_COUNTERS, *_CLUSTER_GAUGES, "codes")

    # The attributes named in _CLUSTER_COUNTERS / _CLUSTER_GAUGES (set by the loop in __init__),
    # declared for the type checker only: with __slots__ a bare annotation makes no class attribute.
    upstream_cx_connect_fail: int
    upstream_cx_destroy: int
    upstream_cx_destroy_local_with_active_rq: int
    upstream_cx_destroy_remote_with_active_rq: int
    upstream_cx_none_healthy: int
    upstream_cx_rx_bytes_total: int
    upstream_cx_total: int
    upstream_cx_tx_bytes_total: int
    lb_healthy_panic: int
    upstream_rq_completed: int
    upstream_cx_overflow: int
    upstream_rq_pending_overflow: int
    upstream_rq_per_try_timeout: int
    upstream_rq_retry: int
    upstream_rq_retry_overflow: int
    upstream_rq_retry_limit_exceeded: int
    upstream_rq_rx_reset: int
    upstream_rq_timeout: int
    upstream_rq_total: int
    upstream_rq_tx_reset: int
    membership_healthy: int
    membership_total: int
    upstream_cx_active: int
    upstream_rq_active: int

    def __init__(self, stats: Stats, name: str) -> None:
        for attr in _CLUSTER_COUNTERS + _CLUSTER_GAUGES:
            setattr(self, attr, 0)
        self.codes: dict[int, int] = {}
        p = f"cluster.{name}."
        stats.block(self, p, _CLUSTER_COUNTERS, _CLUSTER_GAUGES)
        by_class = [stats.slot(f"{p}upstream_rq_{c}xx") for c in range(1, 6)]
        by_code = {code: stats.slot(f"{p}upstream_rq_{code}") for code in TRACKED_CODES}
        codes = self.codes

        def flush(row: memoryview) -> None:
            totals = [0, 0, 0, 0, 0]
            for code, n in codes.items():
                k = code // 100
                if 1 <= k <= 5:
                    totals[k - 1] += n
                i = by_code.get(code)
                if i is not None:
                    row[i] = n
            for i, n in zip(by_class, totals, strict=True):
                row[i] = n

        stats.hook(flush)

    def response(self, status: int) -> None:
        self.upstream_rq_completed += 1
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1


class Host:
    """One endpoint of one cluster in this worker."""

    __slots__ = (
        "address",
        "cluster",
        "cx_active",
        "cx_connect_fail",
        "endpoint",
        "healthy",
        "hostname",
        "pool",
        "rq_active",
        "rq_error",
        "rq_success",
        "rq_timeout",
        "rq_total",
        "weight",
    )

    def __init__(self, cluster: ClusterState, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.address = endpoint.address
        self.weight = endpoint.weight
        self.hostname = endpoint.hostname
        self.healthy = endpoint.healthy
        # Per-host numbers for /clusters (this worker's): plain ints.
        self.cx_active = self.cx_connect_fail = self.rq_active = self.rq_error = 0
        self.rq_success = self.rq_timeout = self.rq_total = 0
        self.pool = Http1Pool(self, loop)


_Lb = RoundRobin | WeightedRandom | LeastRequest | RingHash | Maglev


class ClusterState:
    __slots__ = (
        "_lb",
        "_lb_for",
        "_merge_timer",
        "_merged_at",
        "_od_next",
        "_od_timer",
        "_rand",
        "_rand64",
        "_registry",
        "breaker",
        "config",
        "detector",
        "hashing",
        "healthy_hosts",
        "hosts",
        "loop",
        "name",
        "panic",
        "stats",
    )

    def __init__(self, config: Cluster, stats: Stats, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.name = config.name
        self.loop = loop
        self.stats = ClusterStats(stats, config.name)
        # circuit_breakers for this cluster in this worker (Envoy shares them across workers).
        self.breaker = Breaker(config.circuit_breakers)
        self.hosts: tuple[Host, ...] = ()
        # The hosts the balancer indexes: the healthy, non-ejected ones, or every host in panic mode.
        self.healthy_hosts: tuple[Host, ...] = ()
        self.panic = False
        self._lb: _Lb | None = None
        # outlier_detection: the pure detector keyed by host address (its state survives endpoint
        # refreshes), ticked every `interval` by a timer armed at the first reported result.
        self._registry = stats
        self.detector: OutlierDetector | None = None
        self._od_timer: asyncio.TimerHandle | None = None
        self._od_next = 0.0
        # Envoy's update_merge_window (ClusterManagerImpl::scheduleUpdate): when the last health
        # update reached the balancer, and the timer delivering merged ones.
        self._merged_at = float("-inf")
        self._merge_timer: asyncio.TimerHandle | None = None
        if config.outlier_detection is not None:
            self.detector = OutlierDetector(config.outlier_detection)
            stats.block(
                self.detector.stats,
                f"cluster.{config.name}.outlier_detection.",
                OUTLIER_COUNTERS,
                OUTLIER_GAUGES,
            )
        # The (address, weight) list the balancer was built for: a DNS refresh that changes nothing
        # keeps it (a Maglev table costs tens of ms to build; a cursor keeps its place).
        self._lb_for: tuple[tuple[SocketAddress, int], ...] | None = None
        self._rand = random.Random()
        self._rand64 = functools.partial(self._rand.getrandbits, 64)
        # True for RING_HASH / MAGLEV: the router computes the route's hash_policy only then.
        self.hashing = config.lb_policy in (LbPolicy.RING_HASH, LbPolicy.MAGLEV)
        if config.type is DiscoveryType.STATIC:
            self.set_endpoints(config.endpoints)

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the host set, keeping the pools of hosts whose address is unchanged."""
        old = {h.address: h for h in self.hosts}
        hosts = []
        for ep in endpoints:
            h = old.pop(ep.address, None)
            if h is None or h.endpoint != ep:
                nh = Host(self, ep, self.loop)
                if h is not None:
                    nh.pool = h.pool
                    nh.pool.host = nh
                h = nh
            hosts.append(h)
        for gone in old.values():
            gone.pool.close()
        self.hosts = tuple(hosts)
        if self.detector is not None:
            self.detector.set_hosts(h.address for h in hosts)
        self._rebuild()

    def _rebuild(self) -> None:
        """healthy_hosts and the balancer from host health and outlier ejections.  Envoy's panic
        mode: when the healthy share, scaled by the default overprovisioning factor 1.4, is below
        common_lb_config.healthy_panic_threshold (50 %), balance over all hosts (lb_healthy_panic)."""
        hosts = self.hosts
        d = self.detector
        healthy = tuple(h for h in hosts if h.healthy and (d is None or not d.ejected(h.address)))
        self.stats.membership_total = len(hosts)
        self.stats.membership_healthy = len(healthy)
        threshold = self.config.healthy_panic_threshold
        self.panic = bool(hosts) and threshold > 0 and 140.0 * len(healthy) / len(hosts) < threshold
        self.healthy_hosts = hosts if self.panic else healthy
        built_for = tuple((h.address, h.weight) for h in self.healthy_hosts)
        if built_for != self._lb_for:
            self._lb = self._build_lb(tuple(h.weight for h in self.healthy_hosts))
            self._lb_for = built_for

    def report(self, host: Host, status: int) -> None:
        """One attempt's result for outlier detection (an HTTP status or LOCAL_ORIGIN_FAILURE);
        the router calls this only when `detector` is set."""
        d = self.detector
        assert d is not None
        if self._od_timer is None:
            self._od_next = self.loop.time() + d.cfg.interval
            self._od_timer = self.loop.call_at(self._od_next, self._on_interval)
        if d.report(host.address, status, self.loop.time(), self._rand.random()):
            self._health_changed()

    def _health_changed(self) -> None:
        """An ejection or return: rebuilt now when the last one is older than update_merge_window,
        else merged and delivered when a window from now ends (Envoy's scheduleUpdate)."""
        now = self.loop.time()
        window = self.config.update_merge_window
        if window <= 0 or now - self._merged_at > window:
            self._apply_merged()
        elif self._merge_timer is None:
            self._merge_timer = self.loop.call_later(window, self._apply_merged)

    def _apply_merged(self) -> None:
        if self._merge_timer is not None:
            self._merge_timer.cancel()
            self._merge_timer = None
        self._merged_at = self.loop.time()
        self._rebuild()

    def _on_interval(self) -> None:
        d = self.detector
        assert d is not None
        now = self.loop.time()
        ejected, returned = d.tick(now, self._rand.random())
        if ejected or returned:
            self._health_changed()
        # On a fixed grid: re-arming from each late firing would drift, and a drifting tick can
        # land exactly update_merge_window after the ejection it lifts (then merged, 1 s late).
        self._od_next = max(self._od_next + d.cfg.interval, now + d.cfg.interval / 2)
        self._od_timer = self.loop.call_at(self._od_next, self._on_interval)

    def _build_lb(self, weights: tuple[int, ...]) -> _Lb | None:
        """The load balancer over healthy_hosts for the cluster's lb_policy (indices = positions)."""
        if not weights:
            return None
        cfg = self.config
        policy = cfg.lb_policy
        if policy is LbPolicy.RANDOM:
            return WeightedRandom(weights)
        if policy is LbPolicy.LEAST_REQUEST:
            bias = cfg.least_request_active_request_bias
            return LeastRequest(
                weights,
                cfg.least_request_choice_count,
                1.0 if bias is None else bias,
                bias_configured=bias is not None,
            )
        if policy is LbPolicy.RING_HASH or policy is LbPolicy.MAGLEV:
            keys = tuple(host_key(h.address.host, h.address.port) for h in self.healthy_hosts)
            if policy is LbPolicy.MAGLEV:
                return Maglev(keys, weights, cfg.maglev_table_size)
            return RingHash(keys, weights, cfg.ring_hash_minimum_ring_size, cfg.ring_hash_maximum_ring_size)
        return RoundRobin(weights, start=self._rand.randrange(len(weights)))

    def pick(self, hash_key: int | None = None) -> Host | None:
        """The host for the next request, or None when no host is healthy (503 `no healthy upstream`).
        `hash_key` is the request's hash for RING_HASH / MAGLEV; without one Envoy hashes a random
        64-bit value (ThreadAwareLoadBalancerBase), i.e. a random host weighted by ring share."""
        lb = self._lb
        if lb is None:
            return None
        if self.panic:
            self.stats.lb_healthy_panic += 1
        if type(lb) is RoundRobin:
            return self.healthy_hosts[lb.pick()]
        if type(lb) is LeastRequest:
            return self.healthy_hosts[lb.pick(self.healthy_hosts, self._rand64)]
        if type(lb) is WeightedRandom:
            return self.healthy_hosts[lb.pick(self._rand.getrandbits(32))]
        if hash_key is None:
            hash_key = self._rand.getrandbits(64)
        assert type(lb) is RingHash or type(lb) is Maglev
        return self.healthy_hosts[lb.pick(hash_key)]

    def close(self) -> None:
        for h in self.hosts:
            h.pool.close()
        for timer in (self._od_timer, self._merge_timer):
            if timer is not None:
                timer.cancel()
        self._od_timer = self._merge_timer = None
        if self.detector is not None:
            self._registry.forget(self.detector.stats)


def _family(f: DnsLookupFamily) -> int:
    if f is DnsLookupFamily.V4_ONLY:
        return socket.AF_INET
    if f is DnsLookupFamily.V6_ONLY:
        return socket.AF_INET6
    return socket.AF_UNSPEC


class ClusterManager:
    """All clusters of this worker.  `get(name)` is the router's one lookup per request."""

    __slots__ = ("_dns_tasks", "clusters", "loop", "stats")

    def __init__(self, stats: Stats, loop: asyncio.AbstractEventLoop) -> None:
        self.stats = stats
        self.loop = loop
        self.clusters: dict[str, ClusterState] = {}
        self._dns_tasks: dict[str, asyncio.Task[None]] = {}

    def get(self, name: str) -> ClusterState | None:
        return self.clusters.get(name)

    def update(self, configs: Mapping[str, Cluster]) -> None:
        """Apply a new cluster set: unchanged clusters keep their state, removed ones close."""
        new: dict[str, ClusterState] = {}
        for name, cfg in configs.items():
            cur = self.clusters.get(name)
            if cur is not None and cur.config.config_hash == cfg.config_hash and cur.config == cfg:
                new[name] = cur
                continue
            state = ClusterState(cfg, self.stats, self.loop)
            if cur is not None:
                # Endpoints will be re-resolved; keep serving the old ones meanwhile.
                if cfg.type is not DiscoveryType.STATIC:
                    state.set_endpoints(h.endpoint for h in cur.hosts)
            new[name] = state
        for name, old in self.clusters.items():
            if new.get(name) is not old:
                if name not in new:
                    old.close()
                task = self._dns_tasks.pop(name, None)
                if task is not None:
                    task.cancel()
        self.clusters = new

    async def initialize(self) -> None:
        """Resolve every DNS cluster once (Envoy's cluster warming), then keep refreshing."""
        waits = []
        for name, state in self.clusters.items():
            if state.config.type in (DiscoveryType.STRICT_DNS, DiscoveryType.LOGICAL_DNS) and name not in self._dns_tasks:
                first: asyncio.Future[None] = self.loop.create_future()
                self._dns_tasks[name] = self.loop.create_task(self._dns_loop(state, first))
                waits.append(first)
        if waits:
            await asyncio.wait(waits, timeout=10.0)

    async def resolve(self, state: ClusterState) -> list[Endpoint]:
        cfg = state.config
        out: list[Endpoint] = []
        for ep in cfg.endpoints:
            addr = ep.address
            v4: list[str] = []
            v6: list[str] = []
            if addr.host.lower() == "localhost" or addr.host.lower().endswith(".localhost"):
                # RFC 6761 section 6.3, as Envoy's resolver (c-ares) answers it: both loopbacks,
                # whatever /etc/hosts says.
                v4, v6 = ["127.0.0.1"], ["::1"]
            else:
                try:
                    infos = await self.loop.getaddrinfo(
                        addr.host, addr.port, family=_family(cfg.dns_lookup_family), type=socket.SOCK_STREAM
                    )
                except OSError as exc:
                    log.warning("cluster %s: DNS resolution of %s failed: %s", cfg.name, addr.host, exc)
                    continue
                for family, _, _, _, sockaddr in infos:
                    ip = str(sockaddr[0])
                    bucket = v6 if family == socket.AF_INET6 else v4
                    if ip not in bucket:
                        bucket.append(ip)
            fam = cfg.dns_lookup_family
            # Envoy: AUTO prefers IPv6 and falls back to IPv4; V4_PREFERRED the reverse; ALL both.
            if fam is DnsLookupFamily.ALL:
                ips = v4 + v6
            elif fam is DnsLookupFamily.V4_ONLY:
                ips = v4
            elif fam is DnsLookupFamily.V6_ONLY:
                ips = v6
            elif fam is DnsLookupFamily.V4_PREFERRED:
                ips = v4 or v6
            else:
                ips = v6 or v4
            for ip in ips:
                out.append(
                    Endpoint(SocketAddress(ip, addr.port), ep.weight, ep.health_status, ep.hostname or addr.host, ep.priority)
                )
        if cfg.type is DiscoveryType.LOGICAL_DNS:
            out = out[:1]
        return out

    async def _dns_loop(self, state: ClusterState, first: asyncio.Future[None]) -> None:
        try:
            while True:
                eps = await self.resolve(state)
                if eps or not state.hosts:
                    state.set_endpoints(eps)
                if not first.done():
                    first.set_result(None)
                await asyncio.sleep(max(0.1, state.config.dns_refresh_rate))
        finally:
            if not first.done():
                first.set_result(None)

    def close(self) -> None:
        for t in self._dns_tasks.values():
            t.cancel()
        for s in self.clusters.values():
            s.close()

"""Live upstream state, per worker: for each cluster its hosts, load balancer, pools and stats.

Config (model.cluster.Cluster) is immutable and swapped by reference; the state here is kept across
config versions while a cluster's `config_hash` is unchanged (ARCHITECTURE.md section 2), so pools
and counters survive an update that does not touch them.  DNS clusters are resolved here, off the
request path, on a timer (dns_refresh_rate).  Host health combines EDS health_status, active health
checks (upstream/health_check_runner.py) and outlier ejections as Envoy's host flags do; each change
rebuilds the cluster's Balancer (upstream/balancer.py: priority, locality, lb_policy), never a pick."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
import socket
from collections.abc import Callable, Iterable, Mapping

from sidecar.model.cluster import Cluster, DiscoveryType, DnsLookupFamily, LbPolicy
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.observe.stats import Stats
from sidecar.upstream.balancer import Balancer
from sidecar.upstream.circuit_breaker import Breaker
from sidecar.upstream.health_check import (
    HC_COUNTERS,
    HC_GAUGES,
    HealthChecker,
    HealthCheckStats,
    HostHealth,
    Transition,
)
from sidecar.upstream.health_check_runner import HealthCheckRunner
from sidecar.upstream.lb.priority import DEGRADED, EXCLUDED, HEALTHY, UNHEALTHY
from sidecar.upstream.original_dst import OriginalDstHosts
from sidecar.upstream.outlier import OUTLIER_COUNTERS, OUTLIER_GAUGES, OutlierDetector
from sidecar.upstream.pools.http1 import Http1Pool

log = logging.getLogger("sidecar.upstream")
_RAND = random.Random()

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
    "membership_change",
    "upstream_rq_completed",
    "upstream_cx_overflow",
    "upstream_cx_protocol_error",
    "upstream_rq_pending_overflow",
    "upstream_rq_per_try_timeout",
    "upstream_rq_per_try_idle_timeout",
    "upstream_rq_retry",
    "upstream_rq_retry_overflow",
    "upstream_rq_retry_limit_exceeded",
    "upstream_rq_rx_reset",
    "upstream_rq_timeout",
    "upstream_rq_total",
    "upstream_rq_tx_reset",
)
_CLUSTER_GAUGES = (
    "membership_degraded",
    "membership_excluded",
    "membership_healthy",
    "membership_total",
    "upstream_cx_active",
    "upstream_rq_active",
)


class ClusterStats:
    """`cluster.<name>.*` of one cluster in this worker, as plain ints (observe/stats.py block).
    Response codes are counted in `codes` (status -> count) and flushed into the class totals
    (upstream_rq_2xx ...) and the TRACKED_CODES counters (upstream_rq_200 ...)."""

    __slots__ = (*_CLUSTER_COUNTERS, *_CLUSTER_GAUGES, "codes")

    # The attributes named in _CLUSTER_COUNTERS / _CLUSTER_GAUGES (set by the loop in __init__),
    # declared for the type checker only: with __slots__ a bare annotation makes no class attribute.
    upstream_cx_connect_fail: int
    upstream_cx_protocol_error: int
    upstream_cx_destroy: int
    upstream_cx_destroy_local_with_active_rq: int
    upstream_cx_destroy_remote_with_active_rq: int
    upstream_cx_none_healthy: int
    upstream_cx_rx_bytes_total: int
    upstream_cx_total: int
    upstream_cx_tx_bytes_total: int
    lb_healthy_panic: int
    membership_change: int
    upstream_rq_completed: int
    upstream_cx_overflow: int
    upstream_rq_pending_overflow: int
    upstream_rq_per_try_timeout: int
    upstream_rq_per_try_idle_timeout: int
    upstream_rq_retry: int
    upstream_rq_retry_overflow: int
    upstream_rq_retry_limit_exceeded: int
    upstream_rq_rx_reset: int
    upstream_rq_timeout: int
    upstream_rq_total: int
    upstream_rq_tx_reset: int
    membership_degraded: int
    membership_excluded: int
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

        stats.hook(flush, self)  # runs only while this block is hot (codes change with upstream_rq_completed)

    def response(self, status: int) -> None:
        self.upstream_rq_completed += 1
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1


class Host:
    """One endpoint of one cluster in this worker."""

    __slots__ = (
        "address",
        "alpn_pools",
        "cluster",
        "cx_active",
        "cx_connect_fail",
        "endpoint",
        "hc",
        "healthy",
        "hostname",
        "pool",
        "rq_active",
        "rq_error",
        "rq_success",
        "rq_timeout",
        "rq_total",
        "state",
        "weight",
    )

    def __init__(self, cluster: ClusterState, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.address = endpoint.address
        self.weight = endpoint.weight
        self.hostname = endpoint.hostname
        self.healthy = endpoint.healthy
        # Active health-check state (None: the cluster has no health check, or the endpoint opted
        # out with disable_active_health_check) and the coarse state the balancer last saw
        # (lb/priority.py: HEALTHY, DEGRADED, UNHEALTHY, EXCLUDED).
        self.hc: HostHealth | None = None
        self.state = HEALTHY
        # Per-host numbers for /clusters (this worker's): plain ints.
        self.cx_active = self.cx_connect_fail = self.rq_active = self.rq_error = 0
        self.rq_success = self.rq_timeout = self.rq_total = 0
        self.pool = Http1Pool(self, loop)
        # Pools whose TLS offers another ALPN (istio.alpn, model.istio.AlpnOverride), made on first use.
        self.alpn_pools: dict[tuple[str, ...], Http1Pool] | None = None

    def pool_for(self, alpn: tuple[str, ...]) -> Http1Pool:
        """The pool for requests whose upstream TLS must offer `alpn` (connections are not shared
        between ALPNs, as Envoy's pools are keyed by the ALPN override too)."""
        pools = self.alpn_pools
        if pools is None:
            pools = self.alpn_pools = {}
        pool = pools.get(alpn)
        if pool is None:
            pool = pools[alpn] = Http1Pool(self, self.pool.loop, alpn)
        return pool

    def close_pools(self) -> None:
        self.pool.close()
        for pool in (self.alpn_pools or {}).values():
            pool.close()

    def health_flags(self) -> tuple[str, ...]:
        """Envoy's /clusters health_flags names for this host, in Envoy's order (HostUtility)."""
        hc = self.hc
        d = self.cluster.detector
        status = self.endpoint.health_status
        out = []
        if hc is not None and hc.failed:
            out.append("failed_active_hc")
        if d is not None and d.ejected(self.address):
            out.append("failed_outlier_check")
        if status in ("UNHEALTHY", "TIMEOUT"):
            out.append("failed_eds_health")
        if hc is not None and hc.degraded:
            out.append("degraded_active_hc")
        if status == "DEGRADED":
            out.append("degraded_eds_health")
        if hc is not None and hc.pending:
            out.append("pending_active_hc")
        if hc is not None and hc.excluded:
            out.append("excluded_via_immediate_hc_fail")
        if hc is not None and hc.timeout:
            out.append("active_hc_timeout")
        if status == "DRAINING":
            out.append("eds_status_draining")
        return tuple(out)


class ClusterState:
    __slots__ = (
        "_hc",
        "_hc_hosts",
        "_merge_timer",
        "_merged_at",
        "_od_next",
        "_od_timer",
        "_rand",
        "_rand64",
        "_registry",
        "balancer",
        "breaker",
        "config",
        "detector",
        "hashing",
        "hc_checker",
        "healthy_hosts",
        "hosts",
        "loop",
        "name",
        "original_dst",
        "panic",
        "pick",
        "stats",
        "warming",
    )

    def __init__(self, config: Cluster, stats: Stats, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.name = config.name
        self.loop = loop
        self.stats = ClusterStats(stats, config.name)
        # circuit_breakers for this cluster in this worker (Envoy shares them across workers).
        self.breaker = Breaker(config.circuit_breakers)
        self.hosts: tuple[Host, ...] = ()
        # The healthy hosts (every priority), and whether some priority is in panic mode.
        self.healthy_hosts: tuple[Host, ...] = ()
        self.panic = False
        self.balancer: Balancer | None = None
        # pick(hash_key=None) -> Host | None: the host for the next request, or None (503 `no
        # healthy upstream`): priority, locality, then the lb_policy (upstream/balancer.py).
        # `hash_key` is the request's hash for RING_HASH / MAGLEV.  The current balancer's bound
        # method itself, re-pointed at each rebuild: the request path makes one call.
        self.pick: Callable[..., Host | None] = _no_host
        # Active health checking: the pure checker (its stats are health_check.*), the runner
        # probing the hosts once start_health_checks() ran, the checked hosts by session key, and
        # `warming` until every host had its first result (Envoy's cluster initialization).
        self.hc_checker: HealthChecker | None = None
        self._hc: HealthCheckRunner | None = None
        self._hc_hosts: dict[object, Host] = {}
        self.warming = False
        if config.health_checks:
            self.hc_checker = HealthChecker(config.health_checks[0], HealthCheckStats())
            stats.block(self.hc_checker.stats, f"cluster.{config.name}.health_check.", HC_COUNTERS, HC_GAUGES)
            self.warming = True
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
        # One generator per worker, not per cluster: a Random carries 2.5 KB of Mersenne state,
        # 25 MB at 10,000 clusters.
        self._rand = _RAND
        self._rand64 = functools.partial(self._rand.getrandbits, 64)
        # True for RING_HASH / MAGLEV: the router computes the route's hash_policy only then.
        self.hashing = config.lb_policy in (LbPolicy.RING_HASH, LbPolicy.MAGLEV)
        if config.type is DiscoveryType.STATIC:
            self.set_endpoints(config.endpoints)
        # type ORIGINAL_DST: hosts made per destination on demand (upstream/original_dst.py); the
        # balancer stays None, so pick() has nothing to give without a destination.
        self.original_dst = (
            OriginalDstHosts(self, config.original_dst, stats, loop) if config.original_dst is not None else None
        )

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the host set, keeping the pools (and health-check state) of hosts whose address
        is unchanged."""
        old = {h.address: h for h in self.hosts}
        checker = self.hc_checker
        hosts = []
        for ep in endpoints:
            h = old.pop(ep.address, None)
            if h is None or h.endpoint != ep:
                nh = Host(self, ep, self.loop)
                if h is not None:
                    nh.pool = h.pool
                    nh.pool.host = nh
                    nh.alpn_pools = h.alpn_pools
                    for pool in (nh.alpn_pools or {}).values():
                        pool.host = nh
                    if _hc_key(h.endpoint) == _hc_key(ep):
                        nh.hc = h.hc
                    elif h.hc is not None and checker is not None:
                        checker.forget(h.hc)
                h = nh
            if checker is not None and h.hc is None and not h.endpoint.disable_active_health_check:
                # Envoy marks a checked cluster's hosts failed until their first check; hosts that
                # a DNS refresh adds are also excluded then with ignore_new_hosts_until_first_hc.
                pending = (
                    self.config.ignore_new_hosts_until_first_hc
                    and self.config.type is not DiscoveryType.STATIC
                )
                h.hc = checker.new_host(pending)
            hosts.append(h)
        for gone in old.values():
            gone.close_pools()
            if gone.hc is not None and checker is not None:
                checker.forget(gone.hc)
        before = _membership(self.hosts)
        self.hosts = tuple(hosts)
        after = _membership(self.hosts)
        # membership_change: once per priority whose host set changed.
        self.stats.membership_change += sum(
            1 for p in before.keys() | after.keys() if before.get(p) != after.get(p)
        )
        if self.detector is not None:
            self.detector.set_hosts(h.address for h in hosts)
        if checker is not None:
            self._hc_hosts = {_hc_key(h.endpoint): h for h in hosts if h.hc is not None}
            if self._hc is not None:
                self._sync_health_checks()
        self._rebuild()

    def _rebuild(self) -> None:
        """Host states (active health check, outlier ejection, EDS health_status, as Envoy's
        coarseHealth and excluded hosts) and the balancer over them (upstream/balancer.py)."""
        hosts = self.hosts
        d = self.detector
        states = []
        n_healthy = n_degraded = n_excluded = 0
        for h in hosts:
            state = _host_state(h, d)
            h.state = state
            states.append(state)
            n_healthy += state == HEALTHY
            n_degraded += state == DEGRADED
            n_excluded += state == EXCLUDED
        st = self.stats
        st.membership_total = len(hosts)
        st.membership_healthy = n_healthy
        st.membership_degraded = n_degraded
        st.membership_excluded = n_excluded
        self.healthy_hosts = tuple(h for h in hosts if h.state == HEALTHY)
        self.balancer = Balancer(self.config, hosts, states, st, self._rand, self.balancer)
        self.pick = self.balancer.pick
        self.panic = any(self.balancer.plan.panic)

    # -- active health checks ------------------------------------------------------------------------
    def start_health_checks(self) -> asyncio.Future[None] | None:
        """Start probing (on the running loop); the future is done once every host had its first
        result.  None when the cluster has no health check."""
        checker = self.hc_checker
        if checker is None:
            return None
        if self._hc is None:
            st = self.stats
            self._hc = HealthCheckRunner(
                self.name,
                checker,
                self.loop,
                lambda: bool(
                    st.upstream_cx_total or st.upstream_cx_tx_bytes_total or st.upstream_cx_rx_bytes_total
                ),
                self._on_health_check,
                cluster=self,
            )
            self._sync_health_checks()
        first = self._hc.first_round()
        first.add_done_callback(self._warmed)
        return first

    def _warmed(self, _: object) -> None:
        if self.warming:
            self.warming = False
            self._rebuild()

    def _sync_health_checks(self) -> None:
        assert self._hc is not None
        self._hc.sync({k: (h.endpoint, h.hc) for k, h in self._hc_hosts.items() if h.hc is not None})

    def _on_health_check(self, key: object, healthy: bool, change: Transition) -> None:
        """A probe's outcome.  A success also lifts an outlier ejection (Envoy's default
        successful_active_health_check_uneject_host)."""
        host = self._hc_hosts.get(key)
        if host is None:
            return
        d = self.detector
        if healthy and d is not None and d.ejected(host.address):
            _uneject(d, host.address, self.loop.time())
            change = Transition.CHANGED
        if change is not Transition.CHANGED:
            return
        if self.warming:
            self._rebuild()  # a warming cluster serves nothing yet: no merge window
        else:
            self._health_changed()

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

    def stop_health_checks(self) -> None:
        """End the probes (the cluster is closing, or a new config version replaced it)."""
        if self._hc is not None:
            self._hc.close()
            self._hc = None
        if self.hc_checker is not None:
            self._registry.forget(self.hc_checker.stats)

    def close(self) -> None:
        if self.original_dst is not None:
            self.original_dst.close()
        self.stop_health_checks()
        for h in self.hosts:
            h.close_pools()
        for timer in (self._od_timer, self._merge_timer):
            if timer is not None:
                timer.cancel()
        self._od_timer = self._merge_timer = None
        if self.detector is not None:
            self._registry.forget(self.detector.stats)


def _no_host(hash_key: int | None = None) -> None:
    return None


def _host_state(h: Host, d: OutlierDetector | None) -> int:
    """Envoy's coarse host health, with excluded hosts apart: EDS DRAINING, a host pending its first
    check or excluded by x-envoy-immediate-health-check-fail is EXCLUDED; a failed active check, an
    outlier ejection, EDS UNHEALTHY/TIMEOUT make it UNHEALTHY; active or EDS degraded, DEGRADED."""
    status = h.endpoint.health_status
    hc = h.hc
    if status == "DRAINING" or (hc is not None and (hc.pending or hc.excluded)):
        return EXCLUDED
    if (
        (hc is not None and hc.failed)
        or status in ("UNHEALTHY", "TIMEOUT")
        or (d is not None and d.ejected(h.address))
    ):
        return UNHEALTHY
    if (hc is not None and hc.degraded) or status == "DEGRADED":
        return DEGRADED
    return HEALTHY


def _hc_key(ep: Endpoint) -> tuple[SocketAddress, int, str]:
    """What a health-check session probes: a change means a new session (Envoy: a new host)."""
    return (ep.address, ep.health_check_port, ep.health_check_hostname)


def _membership(hosts: tuple[Host, ...]) -> dict[int, frozenset[SocketAddress]]:
    out: dict[int, set[SocketAddress]] = {}
    for h in hosts:
        out.setdefault(h.endpoint.priority, set()).add(h.address)
    return {p: frozenset(a) for p, a in out.items()}


def _uneject(d: OutlierDetector, address: SocketAddress, now: float) -> None:
    """Lift an outlier ejection now (DetectorImpl::unejectHost after a passing active check): the
    host's counters restart, as at a timed return."""
    s = d.hosts.get(address)
    if s is None or not s.is_ejected:
        return
    s.ejected_at = -1.0
    s.unejected_at = now
    s.consecutive_5xx = s.consecutive_gateway = s.consecutive_local = 0
    d.stats.ejections_active -= 1


def _family(f: DnsLookupFamily) -> int:
    if f is DnsLookupFamily.V4_ONLY:
        return socket.AF_INET
    if f is DnsLookupFamily.V6_ONLY:
        return socket.AF_INET6
    return socket.AF_UNSPEC


class ClusterManager:
    """All clusters of this worker.  `get(name)` is the router's one lookup per request."""

    __slots__ = ("_dns_tasks", "_running", "clusters", "loop", "stats")

    def __init__(self, stats: Stats, loop: asyncio.AbstractEventLoop) -> None:
        self.stats = stats
        self.loop = loop
        self.clusters: dict[str, ClusterState] = {}
        self._dns_tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False  # initialize() ran: clusters added later start their health checks

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
                # Endpoints will be re-resolved; keep serving the old ones meanwhile.  (An
                # ORIGINAL_DST cluster's hosts are per destination, made again on demand.)
                if cfg.type is not DiscoveryType.STATIC and cfg.original_dst is None:
                    state.set_endpoints(h.endpoint for h in cur.hosts)
            if self._running:
                state.start_health_checks()
            new[name] = state
        for name, old in self.clusters.items():
            if new.get(name) is not old:
                if name not in new:
                    old.close()
                else:
                    old.stop_health_checks()  # its replacement probes now
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
        # Active health checks: a cluster is ready once each host had its first check (Envoy's
        # ClusterImplBase::onInitDone); a check ends within its timeout, so the wait is bounded.
        self._running = True
        checks: list[asyncio.Future[None]] = []
        longest = 0.0
        for state in self.clusters.values():
            warmed = state.start_health_checks()
            if warmed is not None:
                checks.append(warmed)
                hc = state.config.health_checks[0]
                longest = max(longest, hc.timeout + hc.initial_jitter)
        if checks:
            await asyncio.wait(checks, timeout=longest + 1.0)

    def start_dns(self) -> None:
        """Start resolving DNS clusters added after initialize() (CDS); they serve once resolved."""
        for name, state in self.clusters.items():
            if state.config.type in (DiscoveryType.STRICT_DNS, DiscoveryType.LOGICAL_DNS) and name not in self._dns_tasks:
                first: asyncio.Future[None] = self.loop.create_future()
                self._dns_tasks[name] = self.loop.create_task(self._dns_loop(state, first))

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
                    dataclasses.replace(
                        ep, address=SocketAddress(ip, addr.port), hostname=ep.hostname or addr.host
                    )
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

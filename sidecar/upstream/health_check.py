"""Active health checking, sans-IO: per-host state, when to probe next, and what a probe's answer means.

Envoy's HealthCheckerImplBase::ActiveHealthCheckSession (health_checker_base_impl.cc) and the HTTP and
TCP checkers (extensions/health_checkers/{http,tcp}); docs: arch overview, health checking.
Rules copied here:
- a checked host starts failed (FAILED_ACTIVE_HC; static clusters mark every host so) and the first
  result, success or failure, decides at once; after that healthy_threshold successes in a row make a
  failed host healthy, and unhealthy_threshold failures in a row make a healthy host unhealthy;
- an HTTP answer outside expected_statuses (default: 200 only) fails the host at once unless its
  status is in retriable_statuses; network failures (refused, reset, closed) and timeouts count
  towards unhealthy_threshold;
- the next probe is due after `interval` (healthy) or `unhealthy_interval`; while a transition is
  pending (a threshold not yet reached) after healthy_edge_interval / unhealthy_edge_interval; until
  the cluster has carried traffic, after no_traffic_healthy_interval (healthy, no pending change) or
  no_traffic_interval.  Jitter: + rand % (interval_jitter_percent of the base) + rand %
  interval_jitter, in whole milliseconds, at least 1 ms (intervalWithJitter); the first probe waits
  rand % initial_jitter;
- `x-envoy-degraded` on a passing HTTP answer marks the host degraded; `x-envoy-immediate-health-check-fail`
  on a failing one excludes it from balancing until it passes again; service_name_matcher compares
  `x-envoy-upstream-healthchecked-cluster` (counted in verify_cluster).
Stats (cluster.<name>.health_check.*): counters attempt, success, failure, passive_failure,
network_failure (timeouts too), verify_cluster; gauges healthy, degraded.

Pure: the adapter (upstream/health_check_runner.py) moves bytes and arms timers; `rand` is a source
of random integers."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from sidecar.model.health_check import HealthCheck, HttpCheck, TcpCheck
from sidecar.model.route import AppendAction

HC_COUNTERS = ("attempt", "success", "failure", "passive_failure", "network_failure", "verify_cluster")
HC_GAUGES = ("healthy", "degraded")


class Transition(enum.Enum):
    """Envoy's HealthTransition."""

    UNCHANGED = 0
    CHANGED = 1
    CHANGE_PENDING = 2


class Failure(enum.Enum):
    """Envoy's HealthCheckFailureType."""

    ACTIVE = 0
    PASSIVE = 1
    NETWORK = 2
    NETWORK_TIMEOUT = 3


class HealthCheckStats:
    __slots__ = (*HC_COUNTERS, *HC_GAUGES)

    attempt: int
    success: int
    failure: int
    passive_failure: int
    network_failure: int
    verify_cluster: int
    healthy: int
    degraded: int

    def __init__(self) -> None:
        for name in HC_COUNTERS + HC_GAUGES:
            setattr(self, name, 0)


class HostHealth:
    """One host's active-check state and flags (FAILED_ACTIVE_HC, DEGRADED_ACTIVE_HC,
    PENDING_ACTIVE_HC, ACTIVE_HC_TIMEOUT, EXCLUDED_VIA_IMMEDIATE_HC_FAIL)."""

    __slots__ = (
        "degraded",
        "excluded",
        "failed",
        "first_check",
        "num_healthy",
        "num_unhealthy",
        "pending",
        "timeout",
    )

    def __init__(self, pending: bool = False) -> None:
        self.failed = True
        self.degraded = False
        self.pending = pending
        self.timeout = False
        self.excluded = False
        self.num_healthy = 0
        self.num_unhealthy = 0
        self.first_check = True


class HealthChecker:
    """The decisions of one cluster's health check, shared by its hosts' sessions."""

    __slots__ = ("_ms", "cfg", "stats")

    def __init__(self, cfg: HealthCheck, stats: HealthCheckStats | None = None) -> None:
        self.cfg = cfg
        self.stats = stats if stats is not None else HealthCheckStats()
        interval = cfg.interval
        unhealthy = cfg.unhealthy_interval or interval
        no_traffic = cfg.no_traffic_interval
        # Whole milliseconds, as Envoy keeps them (PROTOBUF_GET_MS_*).
        self._ms = {
            "interval": _ms(interval),
            "unhealthy": _ms(unhealthy),
            "unhealthy_edge": _ms(cfg.unhealthy_edge_interval or unhealthy),
            "healthy_edge": _ms(cfg.healthy_edge_interval or interval),
            "no_traffic": _ms(no_traffic),
            "no_traffic_healthy": _ms(cfg.no_traffic_healthy_interval or no_traffic),
            "jitter": _ms(cfg.interval_jitter),
            "initial_jitter": _ms(cfg.initial_jitter),
        }

    def new_host(self, pending: bool = False) -> HostHealth:
        """A host joining the checked set: failed until its first result (hence not `healthy`)."""
        return HostHealth(pending)

    def forget(self, hh: HostHealth) -> None:
        """A host leaving the set: its share of the gauges goes with it."""
        if not hh.failed:
            self.stats.healthy -= 1
        if hh.degraded:
            self.stats.degraded -= 1

    def first_delay(self, rand: Callable[[], int]) -> float:
        """Seconds before a new host's first probe (onInitialInterval)."""
        jitter = self._ms["initial_jitter"]
        if not jitter:
            return 0.0
        return self._with_jitter(0, jitter, rand) / 1000.0

    def on_attempt(self) -> float:
        """A probe goes out now: count it; returns the timeout (seconds) to arm."""
        self.stats.attempt += 1
        return self.cfg.timeout

    def on_success(
        self, hh: HostHealth, degraded: bool, had_traffic: bool, rand: Callable[[], int]
    ) -> tuple[Transition, float]:
        """handleSuccess: (transition, seconds until the next probe)."""
        st = self.stats
        hh.num_unhealthy = 0
        change = Transition.UNCHANGED
        if hh.failed:
            # `first_check or ++num_healthy == threshold`: the first result decides at once.
            if hh.first_check or _bump_healthy(hh) == self.cfg.healthy_threshold:
                hh.failed = hh.timeout = hh.excluded = False
                st.healthy += 1
                change = Transition.CHANGED
            else:
                change = Transition.CHANGE_PENDING
        change = _clear_pending(hh, change)
        if degraded != hh.degraded:
            hh.degraded = degraded
            st.degraded += 1 if degraded else -1
            if change is Transition.UNCHANGED:
                change = Transition.CHANGED
        st.success += 1
        hh.first_check = False
        return change, self.interval(True, change, had_traffic, rand)

    def on_failure(
        self,
        hh: HostHealth,
        kind: Failure,
        retriable: bool,
        had_traffic: bool,
        rand: Callable[[], int],
        immediate: bool = False,
    ) -> tuple[Transition, float]:
        """handleFailure (setUnhealthy): (transition, seconds until the next probe).  `retriable` is
        False for a non-retriable HTTP status, which fails a healthy host at once; `immediate` is
        the x-envoy-immediate-health-check-fail header."""
        st = self.stats
        hh.num_healthy = 0
        if immediate:
            hh.excluded = True
        change = Transition.UNCHANGED
        network = kind is Failure.NETWORK or kind is Failure.NETWORK_TIMEOUT
        if not hh.failed:
            if (not network and not retriable) or _bump_unhealthy(hh) == self.cfg.unhealthy_threshold:
                hh.failed = True
                st.healthy -= 1
                change = Transition.CHANGED
            else:
                change = Transition.CHANGE_PENDING
        hh.timeout = kind is Failure.NETWORK_TIMEOUT and hh.failed
        change = _clear_pending(hh, change)
        st.failure += 1
        if network:
            st.network_failure += 1
        elif kind is Failure.PASSIVE:
            st.passive_failure += 1
        hh.first_check = False
        # An already failed host that gets excluded is not rebuilt for it (Envoy's TODO): the flag
        # acts at the next rebuild.
        return change, self.interval(False, change, had_traffic, rand)

    def interval(
        self, healthy: bool, change: Transition, had_traffic: bool, rand: Callable[[], int]
    ) -> float:
        """Seconds until the next probe (HealthCheckerImplBase::interval)."""
        ms = self._ms
        pending = change is Transition.CHANGE_PENDING
        if had_traffic:
            if healthy:
                base = ms["healthy_edge"] if pending else ms["interval"]
            else:
                base = ms["unhealthy_edge"] if pending else ms["unhealthy"]
        else:
            base = ms["no_traffic_healthy"] if healthy and not pending else ms["no_traffic"]
        return self._with_jitter(base, ms["jitter"], rand) / 1000.0

    def _with_jitter(self, base: int, jitter: int, rand: Callable[[], int]) -> int:
        mod = self.cfg.interval_jitter_percent * base // 100
        if mod > 0:
            base += rand() % mod
        if jitter > 0:
            base += rand() % jitter
        return max(1, base)


def _bump_healthy(hh: HostHealth) -> int:
    hh.num_healthy += 1
    return hh.num_healthy


def _bump_unhealthy(hh: HostHealth) -> int:
    hh.num_unhealthy += 1
    return hh.num_unhealthy


def _clear_pending(hh: HostHealth, change: Transition) -> Transition:
    # clearPendingFlag: the first result ends a pending host's exclusion, which is a change.
    if hh.pending:
        hh.pending = False
        return Transition.CHANGED
    return change


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


# --- payloads ---------------------------------------------------------------------------------------


def payload_match(segments: Sequence[bytes], data: bytes) -> bool:
    """PayloadMatcher::match: every segment appears, in order, each after the previous one."""
    start = 0
    for seg in segments:
        i = data.find(seg, start)
        if i < 0:
            return False
        start = i + len(seg)
    return True


# --- HTTP -------------------------------------------------------------------------------------------


class HttpResult(enum.Enum):
    SUCCEEDED = 0
    DEGRADED = 1
    FAILED = 2
    RETRIABLE = 3


def http_request(cfg: HttpCheck, authority: str) -> bytes:
    """The probe's HTTP/1.1 request: `METHOD path`, host, `user-agent: Envoy/HC`, then
    request_headers_to_remove / _to_add applied (Router::HeaderParser), content-length with a body."""
    headers: list[tuple[bytes, bytes]] = [(b"host", authority.encode()), (b"user-agent", b"Envoy/HC")]
    if cfg.request_headers_to_remove:
        headers = [h for h in headers if h[0] not in cfg.request_headers_to_remove]
    for opt in cfg.request_headers_to_add:
        present = any(k == opt.name for k, _ in headers)
        action = opt.append_action
        if not opt.value and not opt.keep_empty_value:
            continue
        if action is AppendAction.ADD_IF_ABSENT and present:
            continue
        if action is AppendAction.OVERWRITE_IF_EXISTS and not present:
            continue
        if action is not AppendAction.APPEND_IF_EXISTS_OR_ADD:
            headers = [h for h in headers if h[0] != opt.name]
        headers.append((opt.name, opt.value))
    if cfg.send:
        headers.append((b"content-length", b"%d" % len(cfg.send)))
    out = [b"%s %s HTTP/1.1\r\n" % (cfg.method.encode(), cfg.path.encode())]
    out.extend(b"%s: %s\r\n" % h for h in headers)
    out.append(b"\r\n")
    out.append(cfg.send)
    return b"".join(out)


def _in_ranges(status: int, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(lo <= status < hi for lo, hi in ranges)


def http_result(
    cfg: HttpCheck, stats: HealthCheckStats, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes
) -> tuple[HttpResult, bool]:
    """(result, immediate-fail header present) for a complete answer (healthCheckResult).
    `headers` have lowercase names; `body` is at most response_buffer_size bytes."""
    names = {k for k, _ in headers}
    immediate = b"x-envoy-immediate-health-check-fail" in names
    if cfg.receive and not payload_match(cfg.receive, body):
        return HttpResult.FAILED, immediate
    if not _in_ranges(status, cfg.expected_statuses):
        if _in_ranges(status, cfg.retriable_statuses):
            return HttpResult.RETRIABLE, immediate
        return HttpResult.FAILED, immediate
    degraded = b"x-envoy-degraded" in names
    if cfg.service_name_matcher is not None:
        stats.verify_cluster += 1
        value = next((v for k, v in headers if k == b"x-envoy-upstream-healthchecked-cluster"), b"")
        if not cfg.service_name_matcher.match(value.decode("latin-1")):
            return HttpResult.FAILED, False
    return (HttpResult.DEGRADED if degraded else HttpResult.SUCCEEDED), False


# --- TCP --------------------------------------------------------------------------------------------


def tcp_connect_only(cfg: TcpCheck) -> bool:
    """No receive payload: the check passes as soon as the connection is up (then it is closed)."""
    return not cfg.receive


def tcp_passed(cfg: TcpCheck, received: bytes) -> bool:
    """Whether the bytes read so far satisfy `receive` (Envoy cannot tell wrong from incomplete data,
    so a mismatch just waits for more, or for the timeout)."""
    return payload_match(cfg.receive, received)

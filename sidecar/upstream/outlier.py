"""Outlier detection, pure: which hosts of a cluster are ejected, and when they come back.
(Envoy's DetectorImpl / DetectorHostMonitorImpl; docs "Outlier detection".)

Fed one result per upstream request (`report(host, status | LOCAL_ORIGIN_FAILURE, now, rand)`) and
ticked every `interval` (`tick(now, rand)`), it keeps each host's consecutive-failure counters and
per-interval success counts, and answers `ejected(host)`.  Rules, as Envoy implements them:
- consecutive_5xx: the 5xx that makes the count reach the threshold (`==`, once per run) is a
  detection; the count then restarts whether or not the ejection was enforced (probability
  enforcing_consecutive_5xx).  Unless split_external_local_origin_errors, a local-origin failure
  (connect failure, reset, timeout) counts as a 503/504, i.e. also as a gateway failure;
- consecutive_gateway_failure: 502/503/504 in a row, enforcing default 0%; checked before 5xx;
- with split_external_local_origin_errors, local-origin failures have their own counter
  (consecutive_local_origin_failure) and any response resets it (the connection worked);
- success rate: hosts with >= success_rate_request_volume requests in the interval, when at least
  success_rate_minimum_hosts qualify, are ejected below mean - stdev * (stdev_factor / 1000);
- failure percentage: hosts with failure% >= failure_percentage_threshold (enforcing default 0%);
- ejection lasts min(base_ejection_time x backoff, max_ejection_time), lifted at the first tick
  after it expires; backoff grows by one per ejection (while backoff x base < max + base) and shrinks
  by one per tick once the host has been back for an interval;
- an ejection is allowed while 100 x (ejected + 1) / hosts <= max_ejection_percent, or, with
  always_eject_one_host, when no host is ejected; otherwise ejections_overflow counts it.
Hosts are any hashable keys; `rand` is a uniform [0, 1) draw for the enforcement percentages."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from sidecar.model.outlier import OutlierDetection

LOCAL_ORIGIN_FAILURE = -1  # a "status" for connect failures, resets and timeouts

# Envoy's cluster.<name>.outlier_detection.* counters we keep (OutlierStats attributes).
OUTLIER_COUNTERS = (
    "ejections_enforced_total",
    "ejections_overflow",
    "ejections_enforced_consecutive_5xx",
    "ejections_detected_consecutive_5xx",
    "ejections_enforced_consecutive_gateway_failure",
    "ejections_detected_consecutive_gateway_failure",
    "ejections_enforced_consecutive_local_origin_failure",
    "ejections_detected_consecutive_local_origin_failure",
    "ejections_enforced_success_rate",
    "ejections_detected_success_rate",
    "ejections_enforced_failure_percentage",
    "ejections_detected_failure_percentage",
    # Local-origin success rate / failure percentage are not implemented (refused by translation):
    # their counters exist, at 0, as Envoy lists them.
    "ejections_enforced_local_origin_success_rate",
    "ejections_detected_local_origin_success_rate",
    "ejections_enforced_local_origin_failure_percentage",
    "ejections_detected_local_origin_failure_percentage",
    "ejections_detected_degradation",  # Envoy's degraded-host (x-envoy-degraded) detection: not here
    # Envoy's deprecated counters, still emitted: ejections_total counts consecutive-5xx and
    # success-rate ejections allowed by max_ejection_percent (enforced or not); the other two count
    # detections.
    "ejections_total",
    "ejections_consecutive_5xx",
    "ejections_success_rate",
)
OUTLIER_GAUGES = ("ejections_active",)

# Ejection types (the suffix of the detected/enforced counters).
C5XX = "consecutive_5xx"
GATEWAY = "consecutive_gateway_failure"
LOCAL = "consecutive_local_origin_failure"
SUCCESS_RATE = "success_rate"
FAILURE_PERCENTAGE = "failure_percentage"


class OutlierStats:
    """Plain-int counters (registered as an observe/stats.py block by the cluster manager)."""

    __slots__ = (*OUTLIER_COUNTERS, *OUTLIER_GAUGES)

    # Declared for the type checker (set by the loop in __init__; see ClusterStats).
    ejections_enforced_total: int
    ejections_overflow: int
    ejections_total: int
    ejections_active: int

    def __init__(self) -> None:
        for name in OUTLIER_COUNTERS + OUTLIER_GAUGES:
            setattr(self, name, 0)

    def add(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)


@dataclass(slots=True)
class HostState:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    consecutive_local: int = 0
    success: int = 0
    total: int = 0
    ejected_at: float = -1.0
    times_ejected: int = 0
    backoff: int = 0  # Envoy's ejectTimeBackoff: the multiplier of base_ejection_time
    unejected_at: float | None = None

    @property
    def is_ejected(self) -> bool:
        return self.ejected_at >= 0


class OutlierDetector:
    __slots__ = ("cfg", "hosts", "stats")

    def __init__(self, cfg: OutlierDetection, hosts: Iterable[Hashable] = ()) -> None:
        self.cfg = cfg
        self.hosts: dict[Hashable, HostState] = {h: HostState() for h in hosts}
        self.stats = OutlierStats()

    def set_hosts(self, hosts: Iterable[Hashable]) -> None:
        """Keep the state of hosts that stay; new hosts start clean, removed ones are forgotten."""
        old = self.hosts
        self.hosts = {h: old.get(h) or HostState() for h in hosts}
        self.stats.ejections_active = self._ejected_count()

    def ejected(self, host: Hashable) -> bool:
        s = self.hosts.get(host)
        return s is not None and s.is_ejected

    def _ejected_count(self) -> int:
        return sum(1 for s in self.hosts.values() if s.is_ejected)

    def _eject(self, s: HostState, kind: str, enforcing: int, now: float, rand: float) -> bool:
        """Envoy's ejectHost (after the caller counted the detection)."""
        cfg = self.cfg
        active = self.stats.ejections_active
        allowed = 100.0 * (active + 1) / len(self.hosts) <= min(100, cfg.max_ejection_percent)
        if not allowed and not (cfg.always_eject_one_host and active == 0):
            self.stats.ejections_overflow += 1
            return False
        if kind is C5XX or kind is SUCCESS_RATE:
            self.stats.ejections_total += 1
        if not rand * 100 < enforcing:
            return False
        st = self.stats
        st.ejections_active = active + 1
        st.ejections_enforced_total += 1
        st.add("ejections_enforced_" + kind)
        s.ejected_at = now
        s.times_ejected += 1
        if s.backoff * cfg.base_ejection_time < self._max_time() + cfg.base_ejection_time:
            s.backoff += 1
        return True

    def _max_time(self) -> float:
        return max(self.cfg.max_ejection_time, self.cfg.base_ejection_time)

    def _detect(self, s: HostState, kind: str, enforcing: int, now: float, rand: float) -> bool:
        self.stats.add("ejections_detected_" + kind)
        if kind is C5XX or kind is SUCCESS_RATE:
            self.stats.add("ejections_" + kind)
        return self._eject(s, kind, enforcing, now, rand)

    def report(self, host: Hashable, status: int, now: float, rand: float) -> bool:
        """One request's result (an HTTP status, or LOCAL_ORIGIN_FAILURE).  True if it ejected the host."""
        s = self.hosts.get(host)
        if s is None or s.is_ejected:
            return False  # in-flight results of an ejected host change nothing (Envoy ignores them)
        cfg = self.cfg
        local = status == LOCAL_ORIGIN_FAILURE
        if cfg.split_external_local_origin_errors:
            if local:
                s.consecutive_local += 1
                if s.consecutive_local == cfg.consecutive_local_origin_failure:
                    s.consecutive_local = 0
                    return self._detect(s, LOCAL, cfg.enforcing_consecutive_local_origin_failure, now, rand)
                return False
            s.consecutive_local = 0  # a response means the connection worked
        elif local:
            status = 503  # Envoy maps connect failures to 503, timeouts to 504: both gateway errors
        s.total += 1
        if status < 500:
            s.success += 1
            s.consecutive_5xx = s.consecutive_gateway = 0
            return False
        if status in (502, 503, 504):
            s.consecutive_gateway += 1
            if s.consecutive_gateway == cfg.consecutive_gateway_failure:
                s.consecutive_gateway = 0
                if self._detect(s, GATEWAY, cfg.enforcing_consecutive_gateway_failure, now, rand):
                    return True
        else:
            s.consecutive_gateway = 0
        s.consecutive_5xx += 1
        if s.consecutive_5xx == cfg.consecutive_5xx:
            s.consecutive_5xx = 0
            return self._detect(s, C5XX, cfg.enforcing_consecutive_5xx, now, rand)
        return False

    def tick(self, now: float, rand: float) -> tuple[list[Hashable], list[Hashable]]:
        """The interval timer (Envoy's onIntervalTimer): lift expired ejections, run the success-rate
        and failure-percentage checks, shrink backoffs, reset the interval counts.
        Returns (hosts ejected now, hosts returned now)."""
        cfg = self.cfg
        returned: list[Hashable] = []
        ejected: list[Hashable] = []
        max_time = self._max_time()
        for h, s in self.hosts.items():
            if s.is_ejected and now - s.ejected_at >= min(cfg.base_ejection_time * s.backoff, max_time):
                s.ejected_at = -1.0
                s.unejected_at = now
                s.consecutive_5xx = s.consecutive_gateway = s.consecutive_local = 0
                self.stats.ejections_active -= 1
                returned.append(h)
        n = len(self.hosts)
        if n >= cfg.success_rate_minimum_hosts or n >= cfg.failure_percentage_minimum_hosts:
            self._rate_checks(now, rand, ejected)
        for s in self.hosts.values():
            if not s.is_ejected and s.unejected_at is not None and now - s.unejected_at >= cfg.interval:
                if s.backoff:
                    s.backoff -= 1
            s.success = s.total = 0
        return ejected, returned

    def _rate_checks(self, now: float, rand: float, ejected: list[Hashable]) -> None:
        cfg = self.cfg
        sr: list[tuple[Hashable, HostState, float]] = []
        fp: list[tuple[Hashable, HostState, float]] = []
        for h, s in self.hosts.items():
            if s.is_ejected or s.total == 0:
                continue
            rate = 100.0 * s.success / s.total
            if s.total >= cfg.success_rate_request_volume:
                sr.append((h, s, rate))
            if s.total >= cfg.failure_percentage_request_volume:
                fp.append((h, s, rate))
        if sr and len(sr) >= cfg.success_rate_minimum_hosts:
            mean = sum(r for _, _, r in sr) / len(sr)
            stdev = math.sqrt(sum((r - mean) ** 2 for _, _, r in sr) / len(sr))
            threshold = mean - stdev * (cfg.success_rate_stdev_factor / 1000.0)
            for h, s, r in sr:
                if r < threshold and self._detect(s, SUCCESS_RATE, cfg.enforcing_success_rate, now, rand):
                    ejected.append(h)
        if fp and len(fp) >= cfg.failure_percentage_minimum_hosts:
            for h, s, r in fp:
                if s.is_ejected or 100.0 - r < cfg.failure_percentage_threshold:
                    continue
                if self._detect(s, FAILURE_PERCENTAGE, cfg.enforcing_failure_percentage, now, rand):
                    ejected.append(h)

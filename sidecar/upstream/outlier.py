"""Outlier detection, pure: which hosts of a cluster are ejected, and when they come back.
(Envoy's DetectorImpl; docs "Outlier detection".)

Fed one result per upstream request (`report(host, status | local-origin failure, now)`) and ticked
every `interval` (`tick(now)`), it keeps each host's consecutive-failure counters and per-interval
success counts, and answers `ejected(host)`.  Rules, as Envoy documents them:
- consecutive_5xx: that many 5xx in a row (or, unless split_external_local_origin_errors, local-origin
  failures: connect failure, reset, timeout) eject, enforced with probability enforcing_consecutive_5xx;
- consecutive_gateway_failure: 502/503/504 (and local-origin failures) in a row, enforcing default 0%;
- success rate: hosts with >= success_rate_request_volume requests in the interval, when at least
  success_rate_minimum_hosts qualify, are ejected below mean - stdev * (stdev_factor / 1000);
- failure percentage: hosts with failure% >= failure_percentage_threshold (enforcing default 0%);
- an ejection lasts base_ejection_time x (times ejected), at most max_ejection_time, and is lifted at
  the first tick after it expires; no more than max_ejection_percent of the hosts are ejected at once,
  except that one host may always be ejected.
Hosts are any hashable keys; `rand` is a uniform [0, 1) draw for the enforcement percentages."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from sidecar.model.outlier import OutlierDetection

LOCAL_ORIGIN_FAILURE = -1  # a "status" for connect failures, resets and timeouts


@dataclass(slots=True)
class HostState:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    consecutive_local: int = 0
    success: int = 0
    total: int = 0
    ejected_at: float = -1.0
    times_ejected: int = 0
    last_ok_tick: float = field(default=0.0)

    @property
    def is_ejected(self) -> bool:
        return self.ejected_at >= 0


class OutlierDetector:
    __slots__ = ("cfg", "hosts")

    def __init__(self, cfg: OutlierDetection, hosts: Iterable[Hashable] = ()) -> None:
        self.cfg = cfg
        self.hosts: dict[Hashable, HostState] = {h: HostState() for h in hosts}

    def set_hosts(self, hosts: Iterable[Hashable]) -> None:
        """Keep the state of hosts that stay; new hosts start clean."""
        old = self.hosts
        self.hosts = {h: old.get(h) or HostState() for h in hosts}

    def ejected(self, host: Hashable) -> bool:
        s = self.hosts.get(host)
        return s is not None and s.is_ejected

    def _ejected_count(self) -> int:
        return sum(1 for s in self.hosts.values() if s.is_ejected)

    def _may_eject(self) -> bool:
        n = len(self.hosts)
        if n == 0:
            return False
        ejected = self._ejected_count()
        # One host may always go; more only while under max_ejection_percent.
        return ejected == 0 or 100.0 * ejected / n < self.cfg.max_ejection_percent

    def _eject(self, s: HostState, now: float) -> bool:
        if s.is_ejected or not self._may_eject():
            return False
        s.ejected_at = now
        s.times_ejected += 1
        s.consecutive_5xx = s.consecutive_gateway = s.consecutive_local = 0
        return True

    def report(self, host: Hashable, status: int, now: float, rand: float) -> bool:
        """One request's result (an HTTP status, or LOCAL_ORIGIN_FAILURE).  True if it ejected the host."""
        s = self.hosts.get(host)
        if s is None or s.is_ejected:
            return False
        cfg = self.cfg
        s.total += 1
        local = status == LOCAL_ORIGIN_FAILURE
        if local and cfg.split_external_local_origin_errors:
            s.consecutive_local += 1
            if s.consecutive_local >= cfg.consecutive_local_origin_failure and (
                rand * 100 < cfg.enforcing_consecutive_local_origin_failure
            ):
                return self._eject(s, now)
            return False
        failed_5xx = local or status >= 500
        gateway = local or status in (502, 503, 504)
        if not failed_5xx:
            s.success += 1
            s.consecutive_5xx = s.consecutive_gateway = s.consecutive_local = 0
            return False
        s.consecutive_5xx += 1
        s.consecutive_gateway = s.consecutive_gateway + 1 if gateway else 0
        if s.consecutive_5xx >= cfg.consecutive_5xx and rand * 100 < cfg.enforcing_consecutive_5xx:
            return self._eject(s, now)
        if s.consecutive_gateway >= cfg.consecutive_gateway_failure and (
            rand * 100 < cfg.enforcing_consecutive_gateway_failure
        ):
            return self._eject(s, now)
        return False

    def tick(self, now: float, rand: float) -> tuple[list[Hashable], list[Hashable]]:
        """The interval timer: lift expired ejections, run the success-rate and failure-percentage
        checks, reset the interval counts.  Returns (hosts ejected now, hosts returned now)."""
        cfg = self.cfg
        returned: list[Hashable] = []
        ejected: list[Hashable] = []
        for h, s in self.hosts.items():
            if s.is_ejected:
                duration = min(
                    cfg.base_ejection_time * s.times_ejected,
                    max(cfg.max_ejection_time, cfg.base_ejection_time),
                )
                if now >= s.ejected_at + duration:
                    s.ejected_at = -1.0
                    returned.append(h)
            elif s.times_ejected and now - s.last_ok_tick >= cfg.base_ejection_time:
                # A host that stayed healthy for a whole base_ejection_time earns one ejection back.
                s.times_ejected -= 1
                s.last_ok_tick = now
        # Success rate.
        volume = [
            (h, s)
            for h, s in self.hosts.items()
            if not s.is_ejected and s.total >= cfg.success_rate_request_volume
        ]
        if len(volume) >= cfg.success_rate_minimum_hosts and len(volume) > 0:
            rates = [100.0 * s.success / s.total for _, s in volume]
            mean = sum(rates) / len(rates)
            stdev = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
            threshold = mean - stdev * (cfg.success_rate_stdev_factor / 1000.0)
            for (h, s), r in zip(volume, rates, strict=True):
                if r < threshold and rand * 100 < cfg.enforcing_success_rate and self._eject(s, now):
                    ejected.append(h)
        # Failure percentage.
        volume = [
            (h, s)
            for h, s in self.hosts.items()
            if not s.is_ejected and s.total >= cfg.failure_percentage_request_volume
        ]
        if len(volume) >= cfg.failure_percentage_minimum_hosts:
            for h, s in volume:
                failed = 100.0 * (s.total - s.success) / s.total
                if (
                    failed >= cfg.failure_percentage_threshold
                    and rand * 100 < cfg.enforcing_failure_percentage
                ):
                    if self._eject(s, now):
                        ejected.append(h)
        for s in self.hosts.values():
            s.success = s.total = 0
        return ejected, returned

"""Circuit breaking, pure: the per-cluster limits of Envoy's ResourceManager (default priority).

`Breaker` counts open connections, pending requests, active requests and active retries of one
cluster in one worker, and says whether one more may start.  Envoy's defaults: 1024 connections,
1024 pending requests, 1024 requests, 3 retries.  Overflow is the caller's to answer (503 with
x-envoy-overloaded and the UO flag, counted in upstream_rq_pending_overflow and friends)."""

from __future__ import annotations

from sidecar.model.cluster import Thresholds

__all__ = ["Breaker", "Thresholds"]


class Breaker:
    __slots__ = ("connections", "limits", "pending", "requests", "retries")

    def __init__(self, limits: Thresholds) -> None:
        self.limits = limits
        self.connections = 0
        self.pending = 0
        self.requests = 0
        self.retries = 0

    def can_connect(self) -> bool:
        return self.connections < self.limits.max_connections

    def can_queue(self) -> bool:
        return self.pending < self.limits.max_pending_requests

    def can_request(self) -> bool:
        return self.requests < self.limits.max_requests

    def can_retry(self) -> bool:
        return self.retries < self.retry_limit()

    def retry_limit(self) -> int:
        """max_retries, or with a retry_budget: budget_percent of active + pending requests, at
        least min_retry_concurrency (Envoy's ResourceManagerImpl::RetryBudget)."""
        lim = self.limits
        pct = lim.retry_budget_percent
        if pct is None:
            return lim.max_retries
        return max(lim.min_retry_concurrency, int((self.requests + self.pending) * pct / 100.0))

    # Gauges Envoy exports as circuit_breakers.default.*_open (1 when the breaker is tripped).
    def open_flags(self) -> dict[str, int]:
        lim = self.limits
        return {
            "cx_open": int(self.connections >= lim.max_connections),
            "rq_pending_open": int(self.pending >= lim.max_pending_requests),
            "rq_open": int(self.requests >= lim.max_requests),
            "rq_retry_open": int(self.retries >= self.retry_limit()),
        }

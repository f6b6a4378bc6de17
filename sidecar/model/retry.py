"""A route's (or virtual host's) retry policy: Envoy's config.route.v3.RetryPolicy, translated."""

from __future__ import annotations

from dataclasses import dataclass, field

# retry_on conditions we implement (Envoy's router "x-envoy-retry-on" / "x-envoy-retry-grpc-on" values).
HTTP_CONDITIONS = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "envoy-ratelimited",
        "http3-post-connect-failure",
    }
)
GRPC_CONDITIONS = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retry_on: frozenset[str]
    # Envoy: num_retries defaults to 1.
    num_retries: int = 1
    per_try_timeout: float = 0.0
    # per_try_idle_timeout: an attempt with no upstream response bytes for this long is reset and
    # handled as a per-try timeout (0: none).  Starts with the per-try timeout, runs until the end
    # of the response.
    per_try_idle_timeout: float = 0.0
    retriable_status_codes: frozenset[int] = frozenset()
    # retriable_headers: header matchers (routing.matchers.HeaderMatcher) run on the response.
    retriable_headers: tuple[object, ...] = ()
    # retry_back_off: base 25 ms, max 10x base (fully jittered exponential).
    base_interval: float = 0.025
    max_interval: float = 0.25
    # retry_host_predicate envoy.retry_host_predicates.previous_hosts
    avoid_previous_hosts: bool = False
    # rate_limited_retry_back_off: response headers carrying the wait ((lowercase name, "SECONDS" or
    # "UNIX_TIMESTAMP"), first match wins) and the cap on it (Envoy's default 300 s).
    reset_headers: tuple[tuple[bytes, str], ...] = ()
    reset_max_interval: float = 300.0
    host_selection_retry_max_attempts: int = 1
    # Derived (the router's response fast path): whether any condition reads response headers, and
    # the lowest status any status-only condition retries (1000: none) -- below it, with no header
    # conditions, a response can't be retried and the router skips the retry decision.
    reads_headers: bool = field(init=False, repr=False, compare=False)
    status_floor: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        on = self.retry_on
        reads = bool(
            self.retriable_headers
            or self.reset_headers
            or "envoy-ratelimited" in on
            or any(name in on for name in GRPC_CONDITIONS)
        )
        floors = [1000]
        if "5xx" in on:
            floors.append(500)
        if "gateway-error" in on:
            floors.append(502)
        if "retriable-4xx" in on:
            floors.append(409)
        if "retriable-status-codes" in on and self.retriable_status_codes:
            floors.append(min(self.retriable_status_codes))
        object.__setattr__(self, "reads_headers", reads)
        object.__setattr__(self, "status_floor", min(floors))

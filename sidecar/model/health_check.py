"""A cluster's active health checks (Envoy's config.core.v3.HealthCheck), translated.

Times are seconds; every default is Envoy's (health_checker_base_impl.cc): no_traffic_interval 60 s,
no_traffic_healthy_interval = no_traffic_interval, unhealthy_interval = interval, unhealthy_edge_interval
= unhealthy_interval, healthy_edge_interval = interval, reuse_connection true (upstream/health_check.py
resolves the derived ones).  Exactly one of `http`,
`tcp` is set (translate/health_check.py refuses the kinds sidecar does not run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sidecar.model.route import HeaderValueOption

# HttpHealthCheck.expected_statuses when empty: 200 only ([200, 201), HttpStatusChecker's default).
DEFAULT_EXPECTED_STATUSES: tuple[tuple[int, int], ...] = ((200, 201),)


class ValueMatch(Protocol):
    """A compiled type.matcher.v3.StringMatcher (routing/matchers.py builds them)."""

    def match(self, value: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class HttpCheck:
    path: str
    host: str = ""  # "" -> the endpoint's health_check_config.hostname, else the cluster name
    method: str = "GET"
    send: bytes = b""  # request body (only for methods that carry one)
    receive: tuple[bytes, ...] = ()  # segments that must appear, in order, in the response body
    response_buffer_size: int = 1024  # how much of the body `receive` is matched against (0: all)
    request_headers_to_add: tuple[HeaderValueOption, ...] = ()
    request_headers_to_remove: tuple[bytes, ...] = ()
    expected_statuses: tuple[tuple[int, int], ...] = DEFAULT_EXPECTED_STATUSES  # [start, end)
    retriable_statuses: tuple[tuple[int, int], ...] = ()
    service_name_matcher: ValueMatch | None = None


@dataclass(frozen=True, slots=True)
class TcpCheck:
    """Connect-only when `send` and `receive` are empty; else write `send`, expect `receive`."""

    send: bytes = b""
    receive: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class HealthCheck:
    timeout: float
    interval: float
    unhealthy_threshold: int
    healthy_threshold: int
    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    initial_jitter: float = 0.0
    interval_jitter: float = 0.0
    interval_jitter_percent: int = 0
    reuse_connection: bool = True
    no_traffic_interval: float = 60.0
    # 0 below means "Envoy's default": no_traffic_interval, interval, unhealthy_interval, interval
    # (the proto requires these durations to be > 0 when set, so 0 is never a configured value).
    no_traffic_healthy_interval: float = 0.0
    unhealthy_interval: float = 0.0
    unhealthy_edge_interval: float = 0.0
    healthy_edge_interval: float = 0.0
    # transport_socket_match_criteria: matched against the cluster's transport_socket_matches in
    # place of the host's own `envoy.transport_socket_match` metadata (None: the host's).
    transport_socket_match_criteria: tuple[tuple[str, str], ...] | None = None

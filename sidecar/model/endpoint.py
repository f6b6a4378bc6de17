"""Endpoints: where a cluster's traffic can go (Envoy's ClusterLoadAssignment, flattened)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """An IP (or hostname, for DNS clusters) and port; or a Unix socket path when `pipe` is set."""

    host: str
    port: int
    pipe: str = ""
    # socket_address.ipv4_compat: a listener on "::" also accepts IPv4 (IPV6_V6ONLY off).
    ipv4_compat: bool = False

    def __str__(self) -> str:
        if self.pipe:
            return self.pipe
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One `lb_endpoints` entry.  `health_status` keeps Envoy's enum names (UNKNOWN, HEALTHY, ...)."""

    address: SocketAddress
    weight: int = 1
    health_status: str = "UNKNOWN"
    hostname: str = ""
    priority: int = 0
    # The LocalityLbEndpoints it came from: its locality (region, zone, sub_zone; Envoy orders
    # localities by these) and load_balancing_weight (0 = unset, which weighs 0 with
    # locality_weighted_lb_config, as in Envoy's PriorityStateManager).
    locality: tuple[str, str, str] = ("", "", "")
    locality_weight: int = 0
    # endpoint.health_check_config: port_value (0 = the endpoint's port), hostname (the Host of
    # HTTP health checks), disable_active_health_check.
    health_check_port: int = 0
    health_check_hostname: str = ""
    disable_active_health_check: bool = False
    # filter_metadata["envoy.transport_socket_match"] of the LbEndpoint and of its
    # LocalityLbEndpoints, as sorted (key, canonical JSON value) pairs; None when absent.  The
    # cluster's transport_socket_matches pick the TLS of a host from these (sidecar/tls/wiring.py).
    socket_match: tuple[tuple[str, str], ...] | None = None
    locality_socket_match: tuple[tuple[str, str], ...] | None = None

    @property
    def healthy(self) -> bool:
        # Envoy treats UNKNOWN and HEALTHY as healthy; UNHEALTHY, DRAINING, TIMEOUT, DEGRADED not.
        return self.health_status in ("UNKNOWN", "HEALTHY")

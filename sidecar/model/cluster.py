"""Clusters: a named group of endpoints and how to reach them (Envoy's config.cluster.v3.Cluster)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.model.health_check import HealthCheck
from sidecar.model.istio import MetadataExchange
from sidecar.model.outlier import OutlierDetection
from sidecar.model.tls import UpstreamTlsContext


class DiscoveryType(Enum):
    STATIC = "STATIC"
    STRICT_DNS = "STRICT_DNS"
    LOGICAL_DNS = "LOGICAL_DNS"
    EDS = "EDS"
    ORIGINAL_DST = "ORIGINAL_DST"


class LbPolicy(Enum):
    ROUND_ROBIN = "ROUND_ROBIN"
    RANDOM = "RANDOM"
    LEAST_REQUEST = "LEAST_REQUEST"
    RING_HASH = "RING_HASH"
    MAGLEV = "MAGLEV"
    # The cluster picks its own host: ORIGINAL_DST (the downstream's original destination).
    CLUSTER_PROVIDED = "CLUSTER_PROVIDED"


class DnsLookupFamily(Enum):
    AUTO = "AUTO"
    V4_ONLY = "V4_ONLY"
    V6_ONLY = "V6_ONLY"
    V4_PREFERRED = "V4_PREFERRED"
    ALL = "ALL"


@dataclass(frozen=True, slots=True)
class OriginalDstConfig:
    """An ORIGINAL_DST cluster's original_dst_lb_config and cleanup_interval (Envoy's defaults)."""

    # use_http_header: the request header (default x-envoy-original-dst-host) names the host instead.
    use_http_header: bool = False
    http_header_name: bytes = b"x-envoy-original-dst-host"
    # upstream_port_override: 0 keeps the destination's port.
    upstream_port_override: int = 0
    # Hosts unused for a whole cleanup_interval are dropped (default 5 s).
    cleanup_interval: float = 5.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    """circuit_breakers.thresholds (DEFAULT priority), Envoy's defaults."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    # retry_budget (replaces max_retries when set): budget_percent of the active and pending
    # requests, at least min_retry_concurrency (Envoy: 20% and 3 when the budget is present).
    retry_budget_percent: float | None = None
    min_retry_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class TransportSocketMatch:
    """One Cluster.transport_socket_matches entry: hosts whose `envoy.transport_socket_match`
    metadata holds every (key, canonical JSON value) of `match` use `transport_socket` (None:
    plaintext).  An empty `match` matches every host."""

    name: str
    match: tuple[tuple[str, str], ...] = ()
    transport_socket: UpstreamTlsContext | None = None


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    type: DiscoveryType = DiscoveryType.STATIC
    # Envoy's default connect_timeout is 5 s.
    connect_timeout: float = 5.0
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN
    # least_request_lb_config: choice_count (default 2) and active_request_bias (default 1.0; None
    # when not configured, which keeps power-of-two-choices for equal weights).
    least_request_choice_count: int = 2
    least_request_active_request_bias: float | None = None
    # ring_hash_lb_config (XX_HASH only) and maglev_lb_config, with Envoy's defaults.
    ring_hash_minimum_ring_size: int = 1024
    ring_hash_maximum_ring_size: int = 8 * 1024 * 1024
    maglev_table_size: int = 65537
    # For STATIC: the resolved endpoints.  For STRICT/LOGICAL_DNS: hostnames to resolve (off the hot
    # path, by upstream/dns.py) into endpoints with the same weight and port.
    endpoints: tuple[Endpoint, ...] = ()
    dns_refresh_rate: float = 5.0
    dns_lookup_family: DnsLookupFamily = DnsLookupFamily.AUTO
    respect_dns_ttl: bool = False
    # common_http_protocol_options (typed_extension_protocol_options HttpProtocolOptions or the
    # deprecated cluster fields): 0 means unlimited / disabled.
    max_requests_per_connection: int = 0
    idle_timeout: float = 3600.0  # Envoy: 1 hour for upstream connections
    # HTTP/2 to the upstream (explicit http2_protocol_options): accepted so that gRPC config sources
    # (Istio's xds-grpc, sds-grpc) and istiod's grpc clusters load; the HTTP/1 pool refuses to
    # send requests to such a cluster (502, reset reason "protocol error") until HTTP/2 lands.
    http2: bool = False
    # Envoy's default for both downstream and upstream buffers is 1 MiB.
    per_connection_buffer_limit_bytes: int = 1024 * 1024
    # The bytes of the proto that produced this cluster: live state is kept while it is unchanged.
    config_hash: int = 0
    # outlier_detection (None: no detector, as in Envoy when the field is absent).
    outlier_detection: OutlierDetection | None = None
    # common_lb_config.healthy_panic_threshold (percent; 0 disables panic mode).
    healthy_panic_threshold: float = 50.0
    # common_lb_config.update_merge_window: health changes (outlier ejections) within this long of
    # the previous one reach the load balancer together, at the end of the window.
    update_merge_window: float = 1.0
    # circuit_breakers.thresholds for the DEFAULT priority (Envoy's defaults when absent).
    circuit_breakers: Thresholds = Thresholds()
    # Priorities and localities (upstream/lb/priority.py): load_assignment.policy's
    # overprovisioning_factor (percent, Envoy's default 140) and weighted_priority_health, and
    # common_lb_config.locality_weighted_lb_config.
    overprovisioning_factor: int = 140
    weighted_priority_health: bool = False
    locality_weighted_lb: bool = False
    # common_lb_config.zone_aware_lb_config.fail_traffic_on_panic: a panic pick finds no host.
    fail_traffic_on_panic: bool = False
    # health_checks (upstream/health_check.py) and common_lb_config.ignore_new_hosts_until_first_hc.
    health_checks: tuple[HealthCheck, ...] = ()
    ignore_new_hosts_until_first_hc: bool = False
    # type ORIGINAL_DST: how the host is found (None for every other type).
    original_dst: OriginalDstConfig | None = None
    # upstream_bind_config.source_address: upstream connections bind this local address first
    # (Istio's InboundPassthroughCluster binds 127.0.0.6).
    upstream_bind_address: SocketAddress | None = None
    # type EDS: the ClusterLoadAssignment name (eds_cluster_config.service_name, else the cluster's
    # name) and where it comes from (an xds.config.ConfigSource).
    eds_service_name: str = ""
    eds_source: object = None
    # transport_socket (None: plaintext) and transport_socket_matches (tried in order against the
    # endpoint's metadata, then its locality's; none matching falls back to transport_socket).
    transport_socket: UpstreamTlsContext | None = None
    transport_socket_matches: tuple[TransportSocketMatch, ...] = ()
    # Cluster.filters: Istio's istio.metadata_exchange upstream filter (translate/istio.py), the
    # preamble's upstream side (l4/metadata_exchange.py); Istio's other cluster filters are skipped.
    metadata_exchange: MetadataExchange | None = None
    # filter_metadata.istio.alpn_override "false": istio.alpn's override (model.istio.AlpnOverride)
    # does not apply to this cluster's upstream TLS.
    istio_alpn_override: bool = True

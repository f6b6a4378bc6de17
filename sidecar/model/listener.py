"""Listeners, filter chains and network filters (Envoy's config.listener.v3 and the two terminal
network filters we implement: tcp_proxy and http_connection_manager)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sidecar.model.endpoint import SocketAddress
from sidecar.model.route import RouteConfiguration


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    name: str
    weight: int


@dataclass(frozen=True, slots=True)
class TcpProxy:
    """envoy.filters.network.tcp_proxy.  Exactly one of `cluster` / `weighted_clusters` is set."""

    stat_prefix: str
    cluster: str = ""
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    # Envoy's default idle_timeout is 1 hour; 0 disables it.
    idle_timeout: float = 3600.0
    max_connect_attempts: int = 1


class ServerHeaderTransformation(Enum):
    OVERWRITE = "OVERWRITE"
    APPEND_IF_ABSENT = "APPEND_IF_ABSENT"
    PASS_THROUGH = "PASS_THROUGH"


class HeadersWithUnderscoresAction(Enum):
    ALLOW = "ALLOW"
    REJECT_REQUEST = "REJECT_REQUEST"
    DROP_HEADER = "DROP_HEADER"


@dataclass(frozen=True, slots=True)
class HttpFilterConfig:
    """One entry of http_filters: its name, its typed_config type URL and the translated config."""

    name: str
    type_url: str
    config: object = None
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class HttpConnectionManager:
    """envoy.filters.network.http_connection_manager with an inline route_config."""

    stat_prefix: str
    route_config: RouteConfiguration
    http_filters: tuple[HttpFilterConfig, ...] = ()
    server_name: str = "envoy"
    server_header_transformation: ServerHeaderTransformation = ServerHeaderTransformation.OVERWRITE
    generate_request_id: bool = True
    preserve_external_request_id: bool = False
    always_set_request_id_in_response: bool = False
    use_remote_address: bool = False
    xff_num_trusted_hops: int = 0
    skip_xff_append: bool = False
    via: str = ""
    # Envoy: 60 KiB of request headers, 100 headers at most.
    max_request_headers_kb: int = 60
    max_headers_count: int = 100
    headers_with_underscores_action: HeadersWithUnderscoresAction = HeadersWithUnderscoresAction.ALLOW
    # common_http_protocol_options.idle_timeout: 1 hour by default; 0 disables.
    idle_timeout: float = 3600.0
    # stream_idle_timeout: 5 minutes by default; 0 disables.
    stream_idle_timeout: float = 300.0
    # request_timeout / request_headers_timeout: disabled (0) by default.
    request_timeout: float = 0.0
    request_headers_timeout: float = 0.0
    max_stream_duration: float = 0.0
    drain_timeout: float = 5.0
    delayed_close_timeout: float = 1.0
    accept_http_10: bool = False
    default_host_for_http_10: str = ""
    normalize_path: bool = False
    merge_slashes: bool = False
    codec_type: str = "AUTO"


NetworkFilter = TcpProxy | HttpConnectionManager


@dataclass(frozen=True, slots=True)
class FilterChain:
    name: str
    # The terminal filter is last; for now it is the only one.
    filters: tuple[NetworkFilter, ...]


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    address: SocketAddress
    filter_chains: tuple[FilterChain, ...] = ()
    default_filter_chain: FilterChain | None = None
    # Envoy's default: 1 MiB per connection.
    per_connection_buffer_limit_bytes: int = 1024 * 1024
    bind_to_port: bool = True
    use_original_dst: bool = False
    backlog: int = 1024
    config_hash: int = 0
    # Listener.stat_prefix: the listener's stats scope ("listener.<stat_prefix>."); "" means Envoy's
    # default, the address.
    stat_prefix: str = ""

    def chain(self) -> FilterChain | None:
        """The filter chain for a new connection (chain matching arrives with traffic capture)."""
        if self.filter_chains:
            return self.filter_chains[0]
        return self.default_filter_chain

"""Listeners, filter chains and network filters (Envoy's config.listener.v3 and the two terminal
network filters we implement: tcp_proxy and http_connection_manager), listener filters and
filter_chain_match."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from sidecar.model.access_log import AccessLog
from sidecar.model.endpoint import SocketAddress
from sidecar.model.istio import AlpnOverride, MetadataExchange
from sidecar.model.rbac import NetworkRbac
from sidecar.model.route import InternalAddressConfig, RouteConfiguration
from sidecar.model.tls import DownstreamTlsContext
from sidecar.model.tracing import DEFAULT_REQUEST_ID, RequestIdExtension, Tracing


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
    # access_log: written when the downstream connection closes (observe/access_log_emit.py).
    access_log: tuple[AccessLog, ...] = ()


class ServerHeaderTransformation(Enum):
    OVERWRITE = "OVERWRITE"
    APPEND_IF_ABSENT = "APPEND_IF_ABSENT"
    PASS_THROUGH = "PASS_THROUGH"


class HeadersWithUnderscoresAction(Enum):
    ALLOW = "ALLOW"
    REJECT_REQUEST = "REJECT_REQUEST"
    DROP_HEADER = "DROP_HEADER"


class ForwardClientCert(Enum):
    """HttpConnectionManager.forward_client_cert_details: what becomes of x-forwarded-client-cert."""

    SANITIZE = "SANITIZE"
    FORWARD_ONLY = "FORWARD_ONLY"
    APPEND_FORWARD = "APPEND_FORWARD"
    SANITIZE_SET = "SANITIZE_SET"
    ALWAYS_FORWARD_ONLY = "ALWAYS_FORWARD_ONLY"


@dataclass(frozen=True, slots=True)
class ClientCertDetails:
    """HttpConnectionManager.set_current_client_cert_details: which facts of the peer certificate
    APPEND_FORWARD / SANITIZE_SET add (By and Hash are always added)."""

    subject: bool = False
    cert: bool = False
    chain: bool = False
    dns: bool = False
    uri: bool = False


NO_CLIENT_CERT_DETAILS = ClientCertDetails()


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
    # internal_address_config: which peers are internal (http/edge.py); None = Envoy 1.40's default.
    internal_address_config: InternalAddressConfig | None = None
    # rds: the RouteConfiguration is named here and arrives over xDS (route_config is then an empty
    # placeholder of that name until it does).  rds_source is an xds.config.ConfigSource.
    rds_name: str = ""
    rds_source: object = None
    # x-forwarded-client-cert (http/xfcc.py): Envoy's default SANITIZE removes it from every request.
    forward_client_cert_details: ForwardClientCert = ForwardClientCert.SANITIZE
    set_current_client_cert_details: ClientCertDetails = NO_CLIENT_CERT_DETAILS
    # access_log: one line per stream, written when it ends (observe/access_log_emit.py).
    access_log: tuple[AccessLog, ...] = ()
    # tracing (None: no tracing decision) and request_id_extension (model/tracing.py): only the
    # x-request-id trace reason is acted on (http/trace_reason.py); sidecar has no tracer.
    tracing: Tracing | None = None
    request_id_extension: RequestIdExtension = DEFAULT_REQUEST_ID
    # upgrade_configs: the enabled upgrade types, lowercased (e.g. "websocket"); a route's
    # RouteAction.upgrade_configs overrides per type (http/upgrade.py).
    upgrade_types: tuple[str, ...] = ()
    # istio.alpn: the ALPN the upstream TLS of this connection manager's requests offers
    # (model/istio.py; None: the cluster's own alpn_protocols).
    upstream_alpn: AlpnOverride | None = None


NetworkFilter = TcpProxy | HttpConnectionManager | NetworkRbac


class SourceType(Enum):
    """FilterChainMatch.source_type."""

    ANY = "ANY"
    SAME_IP_OR_LOOPBACK = "SAME_IP_OR_LOOPBACK"
    EXTERNAL = "EXTERNAL"


@dataclass(frozen=True, slots=True)
class FilterChainMatch:
    """config.listener.v3.FilterChainMatch, normalised at translate time: CIDRs as canonical
    `network/len` strings, server names lowercased, port 0 meaning "any destination port".
    Empty tuples match everything, as in Envoy."""

    destination_port: int = 0
    prefix_ranges: tuple[str, ...] = ()
    server_names: tuple[str, ...] = ()
    transport_protocol: str = ""
    application_protocols: tuple[str, ...] = ()
    direct_source_prefix_ranges: tuple[str, ...] = ()
    source_type: SourceType = SourceType.ANY
    source_prefix_ranges: tuple[str, ...] = ()
    source_ports: tuple[int, ...] = ()


ANY_MATCH = FilterChainMatch()


@dataclass(frozen=True, slots=True)
class FilterChain:
    name: str
    # The terminal filter is last; for now it is the only one.
    filters: tuple[NetworkFilter, ...]
    match: FilterChainMatch = ANY_MATCH
    # transport_socket envoy.transport_sockets.tls (None: raw_buffer, plaintext); the handshake
    # runs in listener/accept.py through sidecar.tls.wiring.
    transport_socket: DownstreamTlsContext | None = None
    # transport_socket_connect_timeout: how long the TLS handshake may take (0: Envoy's none; we
    # bound it by listener/accept.py's HANDSHAKE_TIMEOUT).
    transport_socket_connect_timeout: float = 0.0
    # Istio's istio.metadata_exchange network filter (translate/istio.py): the preamble exchanged
    # before the payload when the negotiated ALPN is its protocol (l4/metadata_exchange.py).
    metadata_exchange: MetadataExchange | None = None


class ListenerFilterKind(Enum):
    """The listener filters sidecar implements (found by their typed_config type, as Envoy does)."""

    ORIGINAL_DST = "envoy.filters.listener.original_dst"
    TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
    HTTP_INSPECTOR = "envoy.filters.listener.http_inspector"


@dataclass(frozen=True, slots=True)
class ListenerFilter:
    name: str
    kind: ListenerFilterKind
    # tls_inspector: max_client_hello_size (a larger ClientHello closes the connection) and
    # close_connection_on_client_hello_parsing_errors (a malformed one closes instead of plaintext).
    max_client_hello_size: int = 16384
    close_on_parse_error: bool = False
    # filter_disabled: the filter is skipped for a connection this predicate matches (Istio turns
    # its inspectors off for ports whose protocol is declared).
    disabled: ListenerFilterPredicate | None = None


@dataclass(frozen=True, slots=True)
class ListenerFilterPredicate:
    """config.listener.v3.ListenerFilterChainMatchPredicate, as Envoy's ListenerFilterMatcher reads
    it: kind "any" (any_match), "port" (destination_port_range, [start, end), IP sockets only),
    "and" / "or" over `rules`, "not" of rules[0]."""

    kind: str
    rules: tuple[ListenerFilterPredicate, ...] = ()
    start: int = 0
    end: int = 0

    def matches(self, port: int | None) -> bool:
        """`port`: the connection's (restored) destination port; None for a pipe."""
        kind = self.kind
        if kind == "any":
            return True
        if kind == "port":
            return port is not None and self.start <= port < self.end
        if kind == "not":
            return not self.rules[0].matches(port)
        if kind == "and":
            return all(r.matches(port) for r in self.rules)
        return any(r.matches(port) for r in self.rules)


class ChainSelector(Protocol):
    """The compiled filter_chain_match table (listener/chain_match.py ChainTable)."""

    def select(
        self,
        dest_ip: str,
        dest_port: int,
        server_name: str,
        transport_protocol: str,
        app_protos: tuple[str, ...],
        source_ip: str,
        source_port: int,
        is_local_source: bool,
        direct_source_ip: str | None = None,
    ) -> FilterChain | None: ...


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
    # listener_filters run in order before chain selection; a connection that has not finished them
    # within listener_filters_timeout (0 disables it) is closed, or, with
    # continue_on_listener_filters_timeout, goes on to chain selection with what was found so far.
    listener_filters: tuple[ListenerFilter, ...] = ()
    listener_filters_timeout: float = 15.0
    continue_on_listener_filters_timeout: bool = False
    # IP_TRANSPARENT (TPROXY capture) and IP_FREEBIND on the listening socket.
    transparent: bool = False
    freebind: bool = False
    # Listener.access_log: a line for each connection closed for want of a filter chain (flag NR),
    # which Istio configures on every listener when meshConfig.accessLogFile is set.
    access_log: tuple[AccessLog, ...] = ()
    # Built by translate/lds.py from the chains' FilterChainMatch (sidecar.listener.chain_match).
    chain_table: ChainSelector | None = field(default=None, compare=False)

    def chain(self) -> FilterChain | None:
        """The first filter chain, else the default one: every connection's chain when
        `single_chain` holds (otherwise chain_table selects per connection)."""
        if self.filter_chains:
            return self.filter_chains[0]
        return self.default_filter_chain

    @property
    def single_chain(self) -> bool:
        """Every connection gets the same chain and no TLS handshake: the accept fast path (a TLS
        chain always goes through listener/accept.py, which runs the handshake)."""
        if len(self.filter_chains) == 1:
            only = self.filter_chains[0]
            return only.match == ANY_MATCH and only.transport_socket is None
        default = self.default_filter_chain
        return not self.filter_chains and default is not None and default.transport_socket is None

    @property
    def restores_destination(self) -> bool:
        """Connections get their original destination (original_dst listener filter, which Envoy
        also adds on its own for use_original_dst)."""
        return self.use_original_dst or any(
            f.kind is ListenerFilterKind.ORIGINAL_DST for f in self.listener_filters
        )

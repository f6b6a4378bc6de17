"""config.listener.v3.Listener -> model.listener.Listener, with its two terminal network filters:
envoy.filters.network.tcp_proxy and envoy.filters.network.http_connection_manager.

Listener-level fields (listener filters, filter_chain_match, use_original_dst, transparent ...) are
translated here too; the chains' FilterChainMatch is compiled into the listener's chain_table
(listener/chain_match.py), refusing overlapping matches as Envoy does.  TLS and RDS are refused by
path until they exist.  Network and HTTP
filters are found by their typed_config type URL, as Envoy finds them (the `name` is only a label).
Defaults are Envoy's: see the field comments in model/listener.py.  The inline route_config is
translated by translate/rds.py; this module checks its cluster references (validate_clusters) when
the caller knows the cluster set, as Envoy does for inline route tables."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import uuid
from collections.abc import Collection, Iterable

from envoy.config.core.v3 import address_pb2
from envoy.config.core.v3 import base_pb2 as core_base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import json_format

from sidecar.listener.chain_match import ChainTable, OverlappingMatch, compile_chains
from sidecar.model.istio import MetadataExchange
from sidecar.model.listener import (
    ANY_MATCH,
    NO_CLIENT_CERT_DETAILS,
    ClientCertDetails,
    FilterChain,
    FilterChainMatch,
    ForwardClientCert,
    HeadersWithUnderscoresAction,
    HttpConnectionManager,
    HttpFilterConfig,
    Listener,
    ListenerFilter,
    ListenerFilterKind,
    ListenerFilterPredicate,
    NetworkFilter,
    ServerHeaderTransformation,
    SourceType,
    TcpProxy,
    WeightedCluster,
)
from sidecar.model.rbac import NetworkRbac
from sidecar.model.tls import DownstreamTlsContext
from sidecar.translate import istio
from sidecar.translate.access_log import translate_access_logs
from sidecar.translate.common import (
    bool_value,
    config_hash,
    enum_name,
    log_ignored,
    socket_address,
    type_name,
    typed_config,
)
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields, opt_duration, opt_uint
from sidecar.translate.hcm_internal import hcm_internal_address_config
from sidecar.translate.rbac import rbac_http_filter, translate_network_rbac
from sidecar.translate.tls import translate_transport_socket
from sidecar.translate.tracing import (
    egress_chains,
    translate_request_id,
    translate_tracing,
    translate_upgrade_configs,
)

ROUTER = router_pb2.Router.DESCRIPTOR.full_name
FAULT = fault_pb2.HTTPFault.DESCRIPTOR.full_name

_LISTENER_HANDLED = (
    "name",
    "address",
    "stat_prefix",
    "filter_chains",
    "default_filter_chain",
    "use_original_dst",
    "per_connection_buffer_limit_bytes",
    "bind_to_port",
    "tcp_backlog_size",
    "listener_filters",
    "listener_filters_timeout",
    "continue_on_listener_filters_timeout",
    "transparent",
    "freebind",
    "access_log",
)
# Socket and scheduling tuning, drain hints and metadata: no behaviour a client could observe here.
_LISTENER_IGNORED = (
    "metadata",
    "drain_type",
    "traffic_direction",
    "enable_reuse_port",
    "reuse_port",
    "connection_balance_config",
    "tcp_fast_open_queue_length",
    "max_connections_to_accept_per_socket_event",
    "ignore_global_conn_limit",
    "bypass_overload_manager",
)


def translate_listener(
    pb: listener_pb2.Listener, path: str, clusters: Collection[str] | None = None
) -> Listener:
    """Translate one listener.  With `clusters`, inline route tables must name only those clusters
    (RouteConfiguration.validate_clusters, true by default for inline tables)."""
    check_fields(pb, path, _LISTENER_HANDLED, _LISTENER_IGNORED)
    # Envoy names a nameless listener with a random UUID; ours derives from the config so that the
    # same listener keeps its name (and is not drained) when the same config is loaded again.
    name = pb.name or str(
        uuid.UUID(
            bytes=hashlib.blake2b(pb.SerializeToString(deterministic=True), digest_size=16).digest(),
            version=4,
        )
    )
    if not pb.HasField("address"):
        raise ConfigError(f"{path}.address", f"error adding listener named '{name}': address is necessary")
    address = socket_address(pb.address, f"{path}.address", resolve=False)
    if not pb.filter_chains and not pb.HasField("default_filter_chain"):
        raise ConfigError(
            f"{path}.filter_chains", f"error adding listener '{address}': no filter chains specified"
        )
    chains = tuple(
        _filter_chain(fc, f"{path}.filter_chains[{i}]", clusters, str(address))
        for i, fc in enumerate(pb.filter_chains)
    )
    default = None
    if pb.HasField("default_filter_chain"):
        default = _filter_chain(pb.default_filter_chain, f"{path}.default_filter_chain", clusters, str(address))
        # The default chain's own filter_chain_match is ignored by Envoy (it is the fallback).
        default = dataclasses.replace(default, match=ANY_MATCH)
    if pb.traffic_direction == core_base_pb2.OUTBOUND:
        # Tracing's operation name is Egress on an outbound listener (the decorator header's side).
        chains, default = egress_chains(chains, default)
    table = _chain_table(pb, path, chains, default, str(address))
    return Listener(
        name=name,
        address=address,
        filter_chains=chains,
        default_filter_chain=default,
        per_connection_buffer_limit_bytes=opt_uint(pb, "per_connection_buffer_limit_bytes", 1024 * 1024),
        bind_to_port=bool_value(pb, "bind_to_port", True),
        use_original_dst=bool_value(pb, "use_original_dst", False),
        backlog=opt_uint(pb, "tcp_backlog_size", 1024),
        config_hash=config_hash(pb),
        stat_prefix=pb.stat_prefix,
        listener_filters=_listener_filters(pb, f"{path}.listener_filters"),
        listener_filters_timeout=opt_duration(pb, "listener_filters_timeout", 15.0),
        continue_on_listener_filters_timeout=pb.continue_on_listener_filters_timeout,
        transparent=bool_value(pb, "transparent", False),
        freebind=bool_value(pb, "freebind", False),
        access_log=translate_access_logs(pb.access_log, f"{path}.access_log"),
        chain_table=table,
    )


# -- listener filters and filter chain matching ----------------------------------------------------


def _listener_filters(pb: listener_pb2.Listener, path: str) -> tuple[ListenerFilter, ...]:
    """original_dst, tls_inspector and http_inspector, found by their typed_config type as Envoy
    finds them; any other listener filter is refused."""
    out: list[ListenerFilter] = []
    for i, lf in enumerate(pb.listener_filters):
        fp = f"{path}[{i}]"
        # config_discovery (ECDS) is not implemented.
        check_fields(lf, fp, handled=("name", "typed_config", "filter_disabled"))
        if not lf.name:
            raise ConfigError(f"{fp}.name", "value length must be at least 1 characters")
        if not lf.HasField("typed_config"):
            raise ConfigError(
                f"{fp}.typed_config", f"Didn't find a registered implementation for '{lf.name}' with type URL: ''"
            )
        tp = f"{fp}.typed_config"
        if istio.skip_istio_filter("listener filter", lf.name, lf.typed_config, tp):
            continue
        n = len(out)
        msg = typed_config(lf.typed_config, tp)
        if isinstance(msg, original_dst_pb2.OriginalDst):
            check_fields(msg, tp, handled=())
            out.append(ListenerFilter(lf.name, ListenerFilterKind.ORIGINAL_DST))
        elif isinstance(msg, http_inspector_pb2.HttpInspector):
            check_fields(msg, tp, handled=())
            out.append(ListenerFilter(lf.name, ListenerFilterKind.HTTP_INSPECTOR))
        elif isinstance(msg, tls_inspector_pb2.TlsInspector):
            # Fingerprints only feed access logs / metadata; the initial read size is a tuning knob.
            check_fields(
                msg,
                tp,
                handled=("max_client_hello_size", "close_connection_on_client_hello_parsing_errors"),
                ignored=("enable_ja3_fingerprinting", "enable_ja4_fingerprinting", "initial_read_buffer_size"),
            )
            size = opt_uint(msg, "max_client_hello_size", 16384)
            if not 255 < size <= 16384:
                raise ConfigError(f"{tp}.max_client_hello_size", "value must be inside range (255, 16384]")
            out.append(
                ListenerFilter(
                    lf.name,
                    ListenerFilterKind.TLS_INSPECTOR,
                    max_client_hello_size=size,
                    close_on_parse_error=msg.close_connection_on_client_hello_parsing_errors,
                )
            )
        else:
            raise ConfigError(
                tp,
                f"listener filter '{lf.name}' of type '{msg.DESCRIPTOR.full_name}' is not supported by sidecar yet",
            )
        if lf.HasField("filter_disabled") and len(out) > n:
            disabled = _predicate(lf.filter_disabled, f"{fp}.filter_disabled")
            out[-1] = dataclasses.replace(out[-1], disabled=disabled)
    return tuple(out)


def _predicate(
    pb: listener_components_pb2.ListenerFilterChainMatchPredicate, path: str
) -> ListenerFilterPredicate:
    """ListenerFilter.filter_disabled (Envoy's ListenerFilterMatcher)."""
    which = pb.WhichOneof("rule")
    if which is None:
        raise ConfigError(path, 'field: "rule", reason: is required')
    if which == "any_match":
        if not pb.any_match:
            raise ConfigError(f"{path}.any_match", "value must equal true")
        return ListenerFilterPredicate("any")
    if which == "destination_port_range":
        r = pb.destination_port_range
        return ListenerFilterPredicate("port", start=r.start, end=r.end)
    if which == "not_match":
        return ListenerFilterPredicate("not", (_predicate(pb.not_match, f"{path}.not_match"),))
    rules = getattr(pb, which).rules
    if len(rules) < 2:
        raise ConfigError(f"{path}.{which}.rules", "value must contain at least 2 item(s)")
    sub = tuple(_predicate(r, f"{path}.{which}.rules[{i}]") for i, r in enumerate(rules))
    return ListenerFilterPredicate("and" if which == "and_match" else "or", sub)


def _chain_table(
    pb: listener_pb2.Listener,
    path: str,
    chains: tuple[FilterChain, ...],
    default: FilterChain | None,
    address: str,
) -> ChainTable:
    """Envoy's two checks, in its order: a FilterChainMatch equal to an earlier one (compared as
    messages), then two chains reaching the same leaf of the match tree (chain_match.compile_chains)."""
    seen: dict[bytes, str] = {}
    for i, fc in enumerate(pb.filter_chains):
        key = fc.filter_chain_match.SerializeToString(deterministic=True)
        if key in seen:
            as_json = json.dumps(
                json_format.MessageToDict(fc.filter_chain_match, preserving_proto_field_name=True),
                separators=(",", ":"),
            )
            raise ConfigError(
                f"{path}.filter_chains[{i}].filter_chain_match",
                f"error adding listener '{address}': filter chain '{fc.name}' has the same matching rules "
                f"defined as '{seen[key]}'. duplicate matcher is: {as_json}",
            )
        seen[key] = fc.name
    try:
        return compile_chains(chains, default, address)
    except OverlappingMatch as e:
        raise ConfigError(f"{path}.filter_chains[{e.index}].filter_chain_match", e.reason) from None


def _cidrs(ranges: Iterable[address_pb2.CidrRange], path: str) -> tuple[str, ...]:
    """CidrRange list -> canonical "net/len" strings.  A prefix_len beyond the family's width is
    taken as the full width (envoy 1.40 accepts 10.0.0.0/33)."""
    out = []
    for i, r in enumerate(ranges):
        rp = f"{path}[{i}]"
        check_fields(r, rp, handled=("address_prefix", "prefix_len"))
        try:
            ip = ipaddress.ip_address(r.address_prefix)
        except ValueError:
            raise ConfigError(f"{rp}.address_prefix", f"malformed IP address: {r.address_prefix}") from None
        length = opt_uint(r, "prefix_len", 0)
        if length > 128:
            raise ConfigError(f"{rp}.prefix_len", "value must be less than or equal to 128")
        length = min(length, ip.max_prefixlen)
        out.append(str(ipaddress.ip_network(f"{ip}/{length}", strict=False)))
    return tuple(out)


def _chain_match(fc: listener_components_pb2.FilterChain, path: str, address: str) -> FilterChainMatch:
    if not fc.HasField("filter_chain_match"):
        return ANY_MATCH
    m = fc.filter_chain_match
    mp = f"{path}.filter_chain_match"
    if m.address_suffix or m.HasField("suffix_len"):
        raise ConfigError(
            mp, f"error adding listener '{address}': filter chain '{fc.name}' contains unimplemented fields"
        )
    port = opt_uint(m, "destination_port", 0)
    if m.HasField("destination_port") and not 1 <= port <= 65535:
        raise ConfigError(f"{mp}.destination_port", "value must be inside range [1, 65535]")
    for i, p in enumerate(m.source_ports):
        if not 1 <= p <= 65535:
            raise ConfigError(f"{mp}.source_ports[{i}]", "value must be inside range [1, 65535]")
    names = []
    for name in m.server_names:
        if "*" in name and not name.startswith("*."):
            raise ConfigError(
                f"{mp}.server_names",
                f"error adding listener '{address}': partial wildcards are not supported in \"server_names\"",
            )
        names.append(name.lower())
    return FilterChainMatch(
        destination_port=port,
        prefix_ranges=_cidrs(m.prefix_ranges, f"{mp}.prefix_ranges"),
        server_names=tuple(names),
        transport_protocol=m.transport_protocol,
        application_protocols=tuple(m.application_protocols),
        direct_source_prefix_ranges=_cidrs(m.direct_source_prefix_ranges, f"{mp}.direct_source_prefix_ranges"),
        source_type=SourceType[enum_name(m, "source_type", mp)],
        source_prefix_ranges=_cidrs(m.source_prefix_ranges, f"{mp}.source_prefix_ranges"),
        source_ports=tuple(m.source_ports),
    )


def _filter_chain(
    fc: listener_components_pb2.FilterChain, path: str, clusters: Collection[str] | None, address: str = ""
) -> FilterChain:
    check_fields(
        fc,
        path,
        handled=("filters", "name", "filter_chain_match", "transport_socket", "transport_socket_connect_timeout"),
        ignored=("metadata",),
    )
    match = _chain_match(fc, path, address)
    tls = _chain_tls(fc, path)
    filters: list[NetworkFilter] = []
    mx: MetadataExchange | None = None
    last = len(fc.filters) - 1
    for i, f in enumerate(fc.filters):
        fp = f"{path}.filters[{i}]"
        nf = _network_filter(f, fp, clusters)
        if not isinstance(nf, (TcpProxy, HttpConnectionManager, NetworkRbac)):
            mx = nf or mx  # an Istio filter: skipped, or the metadata exchange kept on the chain
            continue
        filters.append(nf)
        # tcp_proxy and http_connection_manager are terminal (Envoy: validateTerminalFilters);
        # network RBAC is a read filter that may come before them.
        if i != last and not isinstance(filters[-1], NetworkRbac):
            raise ConfigError(
                fp,
                f"Error: terminal filter named {f.name} of type {type_name(f.typed_config.type_url)} "
                "must be the last filter in a network filter chain.",
            )
    # An empty list is valid in Envoy: such a chain closes every connection it gets.
    return FilterChain(
        name=fc.name,
        filters=tuple(filters),
        match=match,
        transport_socket=tls,
        transport_socket_connect_timeout=opt_duration(fc, "transport_socket_connect_timeout", 0.0),
        metadata_exchange=mx,
    )


def _chain_tls(fc: listener_components_pb2.FilterChain, path: str) -> DownstreamTlsContext | None:
    """The chain's transport_socket: a DownstreamTlsContext, or None for raw_buffer / none."""
    if not fc.HasField("transport_socket"):
        return None
    tls = translate_transport_socket(fc.transport_socket, f"{path}.transport_socket", downstream=True)
    assert tls is None or isinstance(tls, DownstreamTlsContext)
    return tls


def _network_filter(
    f: listener_components_pb2.Filter, path: str, clusters: Collection[str] | None
) -> NetworkFilter | MetadataExchange | None:
    """The translated filter; a MetadataExchange or None for an Istio-private one (translate/istio.py)."""
    check_fields(f, path, handled=("name", "typed_config"))
    if not f.name:
        raise ConfigError(f"{path}.name", "value length must be at least 1 characters")
    if not f.HasField("typed_config"):
        raise ConfigError(
            f"{path}.typed_config",
            f"Didn't find a registered implementation for '{f.name}' with type URL: ''",
        )
    tp = f"{path}.typed_config"
    found = istio.network_filter(f.name, f.typed_config, tp)
    if found is not False:
        return found if isinstance(found, MetadataExchange) else None
    msg = typed_config(f.typed_config, tp)  # a TypedStruct wrapper is opened, as Envoy does
    kind = msg.DESCRIPTOR.full_name
    if isinstance(msg, network_rbac_pb2.RBAC):
        return translate_network_rbac(msg, tp)
    if isinstance(msg, tcp_proxy_pb2.TcpProxy):
        return _tcp_proxy(msg, tp)
    if isinstance(msg, hcm_pb2.HttpConnectionManager):
        return _hcm(msg, tp, clusters)
    raise ConfigError(tp, f"network filter '{f.name}' of type '{kind}' is not supported by sidecar yet")


def _tcp_proxy(pb: tcp_proxy_pb2.TcpProxy, path: str) -> TcpProxy:
    check_fields(
        pb,
        path,
        handled=(
            "stat_prefix", "cluster", "weighted_clusters", "idle_timeout", "max_connect_attempts", "access_log"
        ),
    )
    if not pb.stat_prefix:
        raise ConfigError(f"{path}.stat_prefix", "value length must be at least 1 characters")
    which = pb.WhichOneof("cluster_specifier")
    if which is None:
        raise ConfigError(path, 'field: "cluster_specifier", reason: is required')
    weighted: list[WeightedCluster] = []
    if which == "weighted_clusters":
        wp = f"{path}.weighted_clusters"
        check_fields(pb.weighted_clusters, wp, handled=("clusters",))
        if not pb.weighted_clusters.clusters:
            raise ConfigError(f"{wp}.clusters", "value must contain at least 1 item(s)")
        for i, cw in enumerate(pb.weighted_clusters.clusters):
            cp = f"{wp}.clusters[{i}]"
            check_fields(cw, cp, handled=("name", "weight"))
            if not cw.name:
                raise ConfigError(f"{cp}.name", "value length must be at least 1 characters")
            if cw.weight < 1:
                raise ConfigError(f"{cp}.weight", "value must be greater than or equal to 1")
            weighted.append(WeightedCluster(name=cw.name, weight=cw.weight))
    elif not pb.cluster:
        raise ConfigError(f"{path}.cluster", "value length must be at least 1 characters")
    attempts = opt_uint(pb, "max_connect_attempts", 1)
    if attempts < 1:
        raise ConfigError(f"{path}.max_connect_attempts", "value must be greater than or equal to 1")
    # A cluster that does not exist is accepted: the connection is closed at runtime (Envoy).
    return TcpProxy(
        stat_prefix=pb.stat_prefix,
        cluster=pb.cluster,
        weighted_clusters=tuple(weighted),
        idle_timeout=opt_duration(pb, "idle_timeout", 3600.0),
        max_connect_attempts=attempts,
        access_log=translate_access_logs(pb.access_log, f"{path}.access_log"),
    )


_HCM_HANDLED = (
    "internal_address_config",
    "codec_type",
    "stat_prefix",
    "rds",
    "route_config",
    "http_filters",
    "common_http_protocol_options",
    "http_protocol_options",
    "server_name",
    "server_header_transformation",
    "max_request_headers_kb",
    "stream_idle_timeout",
    "request_timeout",
    "request_headers_timeout",
    "drain_timeout",
    "delayed_close_timeout",
    "use_remote_address",
    "xff_num_trusted_hops",
    "skip_xff_append",
    "via",
    "generate_request_id",
    "preserve_external_request_id",
    "always_set_request_id_in_response",
    "normalize_path",
    "merge_slashes",
    "path_with_escaped_slashes_action",
    "forward_client_cert_details",
    "set_current_client_cert_details",
    "access_log",
    "tracing",
    "request_id_extension",
    "upgrade_configs",
)


def _hcm(
    pb: hcm_pb2.HttpConnectionManager, path: str, clusters: Collection[str] | None
) -> HttpConnectionManager:
    check_fields(pb, path, _HCM_HANDLED)
    if not pb.stat_prefix:
        raise ConfigError(f"{path}.stat_prefix", "value length must be at least 1 characters")
    codec = enum_name(pb, "codec_type", path)
    if codec not in ("AUTO", "HTTP1"):
        raise ConfigError(
            f"{path}.codec_type", f"{codec} is not supported by sidecar yet (AUTO and HTTP1 are)"
        )
    which = pb.WhichOneof("route_specifier")
    rds_name, rds_source = _rds(pb, path) if which == "rds" else ("", None)
    if which is None:
        raise ConfigError(path, 'field: "route_specifier", reason: is required')
    # Accepted by the model but not enforced on the request path yet: refused when they would change
    # anything (their defaults are accepted).
    for name, active in (
        ("xff_num_trusted_hops", pb.xff_num_trusted_hops > 0),
    ):
        if active:
            raise ConfigError(f"{path}.{name}", "field is not supported by sidecar yet")
    escaped = enum_name(pb, "path_with_escaped_slashes_action", path)
    if escaped not in ("IMPLEMENTATION_SPECIFIC_DEFAULT", "KEEP_UNCHANGED"):
        raise ConfigError(
            f"{path}.path_with_escaped_slashes_action", f"{escaped} is not supported by sidecar yet"
        )
    headers_kb = opt_uint(pb, "max_request_headers_kb", 60)
    if not 0 < headers_kb <= 8192:
        raise ConfigError(f"{path}.max_request_headers_kb", "value must be inside range (0, 8192]")
    filters = _http_filters(pb, path)
    from sidecar.translate.rds import translate_route_configuration  # rds.py imports routing: keep it lazy

    route_config = translate_route_configuration(pb.route_config, f"{path}.route_config")
    if rds_name:
        # A placeholder until RDS delivers it (the listener warms meanwhile: xds/apply.py).
        route_config = translate_route_configuration(route_pb2.RouteConfiguration(name=rds_name), path)
    if not rds_name and clusters is not None and bool_value(pb.route_config, "validate_clusters", True):
        _check_route_clusters(pb.route_config, f"{path}.route_config", clusters)
    common = pb.common_http_protocol_options
    cp = f"{path}.common_http_protocol_options"
    check_fields(
        common,
        cp,
        handled=(
            "idle_timeout",
            "max_headers_count",
            "headers_with_underscores_action",
            "max_stream_duration",
        ),
    )
    max_headers = opt_uint(common, "max_headers_count", 100)
    if max_headers < 1:
        raise ConfigError(f"{cp}.max_headers_count", "value must be greater than or equal to 1")
    h1 = pb.http_protocol_options
    check_fields(
        h1,
        f"{path}.http_protocol_options",
        handled=("accept_http_10", "default_host_for_http_10"),
        ignored=("use_balsa_parser",),
    )
    return HttpConnectionManager(
        stat_prefix=pb.stat_prefix,
        internal_address_config=hcm_internal_address_config(pb, path),
        route_config=route_config,
        http_filters=filters,
        server_name=pb.server_name or "envoy",
        server_header_transformation=ServerHeaderTransformation[
            enum_name(pb, "server_header_transformation", path)
        ],
        generate_request_id=bool_value(pb, "generate_request_id", True),
        preserve_external_request_id=pb.preserve_external_request_id,
        always_set_request_id_in_response=pb.always_set_request_id_in_response,
        use_remote_address=bool_value(pb, "use_remote_address", False),
        xff_num_trusted_hops=pb.xff_num_trusted_hops,
        skip_xff_append=pb.skip_xff_append,
        via=pb.via,
        max_request_headers_kb=headers_kb,
        max_headers_count=max_headers,
        headers_with_underscores_action=HeadersWithUnderscoresAction[
            enum_name(common, "headers_with_underscores_action", cp)
        ],
        idle_timeout=opt_duration(common, "idle_timeout", 3600.0),
        stream_idle_timeout=opt_duration(pb, "stream_idle_timeout", 300.0),
        request_timeout=opt_duration(pb, "request_timeout", 0.0),
        request_headers_timeout=opt_duration(pb, "request_headers_timeout", 0.0),
        max_stream_duration=opt_duration(common, "max_stream_duration", 0.0),
        drain_timeout=opt_duration(pb, "drain_timeout", 5.0),
        delayed_close_timeout=opt_duration(pb, "delayed_close_timeout", 1.0),
        accept_http_10=h1.accept_http_10,
        default_host_for_http_10=h1.default_host_for_http_10,
        normalize_path=bool_value(pb, "normalize_path", False),
        merge_slashes=pb.merge_slashes,
        codec_type=codec,
        rds_name=rds_name,
        rds_source=rds_source,
        forward_client_cert_details=ForwardClientCert[enum_name(pb, "forward_client_cert_details", path)],
        set_current_client_cert_details=_client_cert_details(pb, path),
        access_log=translate_access_logs(pb.access_log, f"{path}.access_log"),
        tracing=translate_tracing(pb.tracing, f"{path}.tracing") if pb.HasField("tracing") else None,
        request_id_extension=translate_request_id(pb, path),
        upgrade_types=translate_upgrade_configs(pb.upgrade_configs, path),
        upstream_alpn=istio.upstream_alpn(pb.http_filters, path),
    )


def _client_cert_details(pb: hcm_pb2.HttpConnectionManager, path: str) -> ClientCertDetails:
    """set_current_client_cert_details; Envoy reads it only for APPEND_FORWARD and SANITIZE_SET."""
    if not pb.HasField("set_current_client_cert_details"):
        return NO_CLIENT_CERT_DETAILS
    d = pb.set_current_client_cert_details
    check_fields(d, f"{path}.set_current_client_cert_details", handled=("subject", "cert", "chain", "dns", "uri"))
    details = ClientCertDetails(
        subject=bool_value(d, "subject", False), cert=d.cert, chain=d.chain, dns=d.dns, uri=d.uri
    )
    return NO_CLIENT_CERT_DETAILS if details == NO_CLIENT_CERT_DETAILS else details


def _rds(pb: hcm_pb2.HttpConnectionManager, path: str) -> tuple[str, object]:
    """HttpConnectionManager.rds: the route_config_name and its config_source (xds.config)."""
    from sidecar.xds.config import translate_config_source  # xds.config imports translate: keep it lazy

    rp = f"{path}.rds"
    check_fields(pb.rds, rp, handled=("config_source", "route_config_name"))
    if not pb.rds.route_config_name:
        raise ConfigError(f"{rp}.route_config_name", "value length must be at least 1 characters")
    if not pb.rds.HasField("config_source"):
        raise ConfigError(f"{rp}.config_source", "value is required")
    return pb.rds.route_config_name, translate_config_source(pb.rds.config_source, f"{rp}.config_source")


# Router fields with no effect here (stats and tracing details); the rest change behaviour.
_ROUTER_IGNORED = ("dynamic_stats", "start_child_span", "suppress_grpc_request_failure_code_stats")


def _http_filters(pb: hcm_pb2.HttpConnectionManager, path: str) -> tuple[HttpFilterConfig, ...]:
    if not pb.http_filters:
        # Envoy accepts this and leaves every request unanswered until stream_idle_timeout.
        raise ConfigError(
            f"{path}.http_filters",
            "no http filters: the router filter (envoy.filters.http.router) must be last",
        )
    out = []
    last = len(pb.http_filters) - 1
    for i, f in enumerate(pb.http_filters):
        fp = f"{path}.http_filters[{i}]"
        check_fields(f, fp, handled=("name", "typed_config", "is_optional", "disabled"))
        if not f.name:
            raise ConfigError(f"{fp}.name", "value length must be at least 1 characters")
        if not f.HasField("typed_config"):
            raise ConfigError(
                f"{fp}.typed_config",
                f"Didn't find a registered implementation for '{f.name}' with type URL: ''",
            )
        if istio.skip_istio_filter("http filter", f.name, f.typed_config, f"{fp}.typed_config"):
            continue
        try:
            msg = typed_config(f.typed_config, f"{fp}.typed_config")
        except ConfigError:
            if not f.is_optional:
                raise
            msg = None
        if isinstance(msg, http_rbac_pb2.RBAC):
            out.append(rbac_http_filter(f, msg, fp, i == last))
            continue
        if isinstance(msg, fault_pb2.HTTPFault):
            out.append(_fault_filter(f, msg, fp, i == last))
            continue
        if msg is not None and istio.skip_standard_http_filter(f.name, msg, fp):
            continue
        if not isinstance(msg, router_pb2.Router):
            kind = msg.DESCRIPTOR.full_name if msg is not None else type_name(f.typed_config.type_url)
            if f.is_optional:  # HttpFilter.is_optional: a client without the filter may skip it
                log_ignored(fp, f"optional http filter of unsupported type '{kind}'")
                continue
            raise ConfigError(
                f"{fp}.typed_config",
                f"http filter '{f.name}' of type '{kind}' is not supported by sidecar yet",
            )
        check_fields(msg, f"{fp}.typed_config", handled=("respect_expected_rq_timeout",), ignored=_ROUTER_IGNORED)
        if i != last:
            raise ConfigError(
                fp,
                f"Error: terminal filter named {f.name} of type envoy.filters.http.router "
                "must be the last filter in a http filter chain.",
            )
        if f.disabled:
            raise ConfigError(
                f"{fp}.disabled",
                f"Error: the last (terminal) filter ({f.name}) in the chain cannot be disabled by default.",
            )
        out.append(HttpFilterConfig(name=f.name, type_url=f"type.googleapis.com/{ROUTER}", config=msg))
    if not out or not isinstance(out[-1].config, router_pb2.Router):
        raise ConfigError(
            f"{path}.http_filters", "the router filter (envoy.filters.http.router) must be last"
        )
    return tuple(out)


def _fault_filter(f: hcm_pb2.HttpFilter, msg: fault_pb2.HTTPFault, fp: str, last: bool) -> HttpFilterConfig:
    """envoy.filters.http.fault: any position before the router (translate/fault.py translates it)."""
    from sidecar.translate.fault import translate_fault  # imports rds (routing) lazily

    if last:
        raise ConfigError(
            fp,
            f"Error: non-terminal filter named {f.name} of type envoy.filters.http.fault "
            "is the last filter in a http filter chain.",
        )
    if f.disabled:
        # Disabled by default and enabled per route (config.route.v3.FilterConfig): not yet.
        raise ConfigError(f"{fp}.disabled", "a disabled fault filter is not supported by sidecar yet")
    settings = translate_fault(msg, f"{fp}.typed_config")
    return HttpFilterConfig(name=f.name, type_url=f"type.googleapis.com/{FAULT}", config=settings)


def _check_route_clusters(rc: route_pb2.RouteConfiguration, path: str, clusters: Collection[str]) -> None:
    """Envoy's RouteConfiguration.validate_clusters: every named cluster must exist."""
    for i, vh in enumerate(rc.virtual_hosts):
        for j, route in enumerate(vh.routes):
            if route.WhichOneof("action") != "route":
                continue
            ra = route.route
            rp = f"{path}.virtual_hosts[{i}].routes[{j}].route"
            if ra.WhichOneof("cluster_specifier") == "cluster" and ra.cluster not in clusters:
                raise ConfigError(f"{rp}.cluster", f"route: unknown cluster '{ra.cluster}'")
            if ra.WhichOneof("cluster_specifier") == "weighted_clusters":
                for k, cw in enumerate(ra.weighted_clusters.clusters):
                    if cw.name and cw.name not in clusters:
                        raise ConfigError(
                            f"{rp}.weighted_clusters.clusters[{k}].name",
                            f"route: unknown weighted cluster '{cw.name}'",
                        )
            for k, mirror in enumerate(ra.request_mirror_policies):
                if mirror.cluster and mirror.cluster not in clusters:
                    raise ConfigError(
                        f"{rp}.request_mirror_policies[{k}].cluster",
                        f"route: unknown shadow cluster '{mirror.cluster}'",
                    )

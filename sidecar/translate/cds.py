"""config.cluster.v3.Cluster -> model.cluster.Cluster: STATIC, STRICT_DNS and LOGICAL_DNS clusters.

Every set field is either translated, ignored with a log line (no effect a user could observe here:
stats names, keepalive tuning ...) or refused with a ConfigError naming its path.  Defaults are
Envoy's (cluster.proto): connect_timeout 5 s, dns_refresh_rate 5 s, 1 MiB buffers, upstream
idle_timeout 1 h.  Protocol options come from typed_extension_protocol_options' HttpProtocolOptions
or, when that is absent, from the deprecated Cluster fields, as Envoy's ClusterInfoImpl does."""

from __future__ import annotations

import json
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format, struct_pb2

from sidecar.model.cluster import (
    Cluster,
    DiscoveryType,
    DnsLookupFamily,
    LbPolicy,
    OriginalDstConfig,
    Thresholds,
    TransportSocketMatch,
)
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.model.tls import UpstreamTlsContext
from sidecar.translate.common import config_hash, enum_name, is_ip, log_ignored, socket_address, unpack
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields, opt_duration, opt_uint
from sidecar.translate.health_check import translate_health_checks
from sidecar.translate.istio import cluster_filters
from sidecar.translate.outlier import translate_outlier_detection
from sidecar.translate.tls import translate_transport_socket
from sidecar.upstream.lb.maglev import is_prime

# The names Envoy registers HttpProtocolOptions under (the current one and the pre-1.17 one).
HTTP_PROTOCOL_OPTIONS = (
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "envoy.upstreams.http.http_protocol_options",
)
_HPO = http_protocol_options_pb2.HttpProtocolOptions
_SUPPORTED_TYPES = {"STATIC", "STRICT_DNS", "LOGICAL_DNS", "ORIGINAL_DST", "EDS"}
_SUPPORTED_LB = {"ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "RING_HASH", "MAGLEV"}
# The lb_config message each policy reads (Envoy ignores one that does not match lb_policy).
_LB_CONFIG = {
    "LEAST_REQUEST": "least_request_lb_config",
    "RING_HASH": "ring_hash_lb_config",
    "MAGLEV": "maglev_lb_config",
}

_HANDLED = (
    "name",
    "type",
    "connect_timeout",
    "per_connection_buffer_limit_bytes",
    "lb_policy",
    "load_assignment",
    "max_requests_per_connection",
    "common_http_protocol_options",
    "http_protocol_options",
    "http2_protocol_options",
    "upstream_http_protocol_options",
    "protocol_selection",
    "typed_extension_protocol_options",
    "dns_refresh_rate",
    "respect_dns_ttl",
    "dns_lookup_family",
    "common_lb_config",
    "least_request_lb_config",
    "ring_hash_lb_config",
    "maglev_lb_config",
    "outlier_detection",
    "circuit_breakers",
    "health_checks",
    "original_dst_lb_config",
    "cleanup_interval",
    "upstream_bind_config",
    "eds_cluster_config",
    "filters",
)
# TLS (translate/tls.py; selected per host by sidecar/tls/wiring.py).
_TLS_FIELDS = ("transport_socket", "transport_socket_matches")
SOCKET_MATCH_KEY = "envoy.transport_socket_match"
# Stats naming, metadata for features we do not have, socket tuning, warming/cleanup knobs.
_IGNORED = (
    "alt_stat_name",
    "metadata",
    "upstream_connection_options",
    "wait_for_warm_on_init",
    "close_connections_on_host_health_failure",
    "ignore_health_on_host_removal",
    "track_timeout_budgets",
    "track_cluster_stats",
    "lrs_report_endpoint_metrics",
    "preconnect_policy",
    "dns_failure_refresh_rate",
    "dns_jitter",
    "use_tcp_for_dns_lookups",
)


def translate_cluster(pb: cluster_pb2.Cluster, path: str) -> Cluster:
    check_fields(pb, path, (*_HANDLED, *_TLS_FIELDS), _IGNORED)
    if not pb.name:
        raise ConfigError(f"{path}.name", "value length must be at least 1 characters")
    kind = enum_name(pb, "type", path)
    if kind not in _SUPPORTED_TYPES:
        raise ConfigError(f"{path}.type", f"{kind} clusters are not supported by sidecar yet")
    lb = enum_name(pb, "lb_policy", path)
    original_dst = _original_dst(pb, kind, lb, path)
    if lb not in _SUPPORTED_LB and original_dst is None:
        raise ConfigError(
            f"{path}.lb_policy",
            f"{lb} is not supported by sidecar yet "
            "(ROUND_ROBIN, RANDOM, LEAST_REQUEST, RING_HASH and MAGLEV are)",
        )
    lb_kw = _lb_config(pb, lb, path) if original_dst is None else {}
    if lb in ("RING_HASH", "MAGLEV"):
        _refuse_hash_keys(pb, path)
    lb_kw.update(_common_lb_config(pb, path))
    connect_timeout = opt_duration(pb, "connect_timeout", 5.0)
    if connect_timeout <= 0:
        raise ConfigError(f"{path}.connect_timeout", "value must be greater than 0s")
    dns_refresh_rate = opt_duration(pb, "dns_refresh_rate", 5.0)
    if dns_refresh_rate <= 0.001:
        raise ConfigError(f"{path}.dns_refresh_rate", "value must be greater than 1ms")
    idle_timeout, max_requests = _protocol_options(pb, path)
    http2 = _wants_http2(pb)
    if http2:
        # Istio's bootstrap clusters xds-grpc and sds-grpc are HTTP/2 (gRPC config sources: the xDS
        # client speaks gRPC itself), and istiod sends HTTP/2 clusters for grpc/http2 ports.  Accept
        # them; HTTP requests routed to one get a 502 (reset reason: protocol error) until the
        # HTTP/2 upstream codec exists, rather than the whole CDS response being refused.
        log_ignored(
            f"cluster '{pb.name}' HTTP/2 upstream protocol options",
            "HTTP/2 upstreams are not implemented yet: only gRPC config sources may use this cluster",
        )
    breakers = _circuit_breakers(pb, path)
    return Cluster(
        name=pb.name,
        type=DiscoveryType[kind],
        connect_timeout=connect_timeout,
        lb_policy=LbPolicy[lb],
        endpoints=_endpoints(pb, kind, path) if kind != "EDS" else (),
        dns_refresh_rate=dns_refresh_rate,
        dns_lookup_family=DnsLookupFamily[enum_name(pb, "dns_lookup_family", path)],
        respect_dns_ttl=pb.respect_dns_ttl,
        max_requests_per_connection=max_requests,
        idle_timeout=idle_timeout,
        http2=http2,
        per_connection_buffer_limit_bytes=opt_uint(pb, "per_connection_buffer_limit_bytes", 1024 * 1024),
        config_hash=config_hash(pb),
        outlier_detection=(
            translate_outlier_detection(pb.outlier_detection, f"{path}.outlier_detection")
            if pb.HasField("outlier_detection")
            else None
        ),
        circuit_breakers=breakers,
        health_checks=translate_health_checks(list(pb.health_checks), f"{path}.health_checks"),
        **_lb_policy_config(pb.load_assignment, f"{path}.load_assignment"),
        original_dst=original_dst,
        upstream_bind_address=_bind_address(pb, path),
        metadata_exchange=cluster_filters(list(pb.filters), f"{path}.filters"),
        istio_alpn_override=_istio_alpn_override(pb),
        **_transport_sockets(pb, path),
        **_eds(pb, kind, path),
        **lb_kw,
    )


def _transport_sockets(pb: cluster_pb2.Cluster, path: str) -> dict[str, Any]:
    """transport_socket and transport_socket_matches (Envoy's TransportSocketMatcherImpl: the
    matches are tried in order, each `match` struct against the host's metadata under
    `envoy.transport_socket_match`; a match without a transport_socket is plaintext)."""
    kw: dict[str, Any] = {}
    if pb.HasField("transport_socket"):
        tls = translate_transport_socket(pb.transport_socket, f"{path}.transport_socket", downstream=False)
        assert tls is None or isinstance(tls, UpstreamTlsContext)
        kw["transport_socket"] = tls
    matches = []
    for i, m in enumerate(pb.transport_socket_matches):
        mp = f"{path}.transport_socket_matches[{i}]"
        check_fields(m, mp, handled=("name", "match", "transport_socket"))
        if not m.name:
            raise ConfigError(f"{mp}.name", "value length must be at least 1 characters")
        tls = None
        if m.HasField("transport_socket"):
            tls = translate_transport_socket(m.transport_socket, f"{mp}.transport_socket", downstream=False)
            assert tls is None or isinstance(tls, UpstreamTlsContext)
        matches.append(TransportSocketMatch(m.name, struct_labels(m.match), tls))
    if matches:
        kw["transport_socket_matches"] = tuple(matches)
    return kw


def struct_labels(st: struct_pb2.Struct) -> tuple[tuple[str, str], ...]:
    """A Struct as sorted (key, canonical JSON value) pairs: equal protobuf Values give equal
    strings (Envoy compares the label values with ValueUtil::equal)."""
    return tuple(
        sorted(
            (k, json.dumps(json_format.MessageToDict(v), sort_keys=True, separators=(",", ":")))
            for k, v in st.fields.items()
        )
    )


def _socket_match(md: base_pb2.Metadata) -> tuple[tuple[str, str], ...] | None:
    fm = md.filter_metadata
    return struct_labels(fm[SOCKET_MATCH_KEY]) if SOCKET_MATCH_KEY in fm else None


def _original_dst(pb: cluster_pb2.Cluster, kind: str, lb: str, path: str) -> OriginalDstConfig | None:
    """type ORIGINAL_DST with lb_policy CLUSTER_PROVIDED (PassthroughCluster,
    InboundPassthroughCluster): Envoy's OriginalDstClusterFactory checks, in its order."""
    if kind != "ORIGINAL_DST":
        if lb == "CLUSTER_PROVIDED":
            raise ConfigError(
                f"{path}.lb_policy",
                f"cluster manager: cluster provided LB specified but cluster '{pb.name}' did not provide "
                "one. Check cluster documentation.",
            )
        for name in ("original_dst_lb_config", "cleanup_interval"):
            if pb.HasField(name):
                log_ignored(f"{path}.{name}", f"the cluster type is {kind}")
        return None
    if lb != "CLUSTER_PROVIDED":
        raise ConfigError(
            f"{path}.lb_policy",
            f"cluster: LB policy {lb} is not valid for Cluster type ORIGINAL_DST. Only 'CLUSTER_PROVIDED' "
            "is allowed with cluster type 'ORIGINAL_DST'",
        )
    if pb.HasField("load_assignment"):
        raise ConfigError(f"{path}.load_assignment", "ORIGINAL_DST clusters must have no load assignment configured")
    c = pb.original_dst_lb_config
    cp = f"{path}.original_dst_lb_config"
    # metadata_key (dynamic metadata names the host) has no producer in sidecar.
    check_fields(c, cp, handled=("use_http_header", "http_header_name", "upstream_port_override"))
    if not c.use_http_header and c.http_header_name:
        raise ConfigError(
            cp,
            f"ORIGINAL_DST cluster: invalid config http_header_name={c.http_header_name} and use_http_header "
            "is false. Set use_http_header to true if http_header_name is desired.",
        )
    port = opt_uint(c, "upstream_port_override", 0)
    if port > 65535:
        raise ConfigError(f"{cp}.upstream_port_override", "value must be less than or equal to 65535")
    cleanup = opt_duration(pb, "cleanup_interval", 5.0)
    if cleanup <= 0:
        raise ConfigError(f"{path}.cleanup_interval", "value must be greater than 0s")
    return OriginalDstConfig(
        use_http_header=c.use_http_header,
        http_header_name=(c.http_header_name or "x-envoy-original-dst-host").lower().encode("latin-1"),
        upstream_port_override=port,
        cleanup_interval=cleanup,
    )


def _bind_address(pb: cluster_pb2.Cluster, path: str) -> SocketAddress | None:
    """upstream_bind_config.source_address (an IP; port 0 lets the kernel choose)."""
    if not pb.HasField("upstream_bind_config"):
        return None
    bc = pb.upstream_bind_config
    bp = f"{path}.upstream_bind_config"
    check_fields(bc, bp, handled=("source_address",))
    if not bc.HasField("source_address"):
        return None
    sa = bc.source_address
    sp = f"{bp}.source_address"
    check_fields(sa, sp, handled=("protocol", "address", "port_value"))
    if not is_ip(sa.address):
        raise ConfigError(f"{sp}.address", f"malformed IP address: {sa.address}")
    return SocketAddress(sa.address, sa.port_value)


def _common_lb_config(pb: cluster_pb2.Cluster, path: str) -> dict[str, Any]:
    """common_lb_config: healthy_panic_threshold (a Percent, 0..100; default 50), update_merge_window,
    locality_weighted_lb_config, ignore_new_hosts_until_first_hc, zone_aware_lb_config's
    fail_traffic_on_panic.  Zone-aware routing itself needs the local cluster (bootstrap
    cluster_manager.local_cluster_name, not used by sidecar), without which Envoy does none: its
    other knobs are ignored."""
    if not pb.HasField("common_lb_config"):
        return {}
    c = pb.common_lb_config
    cp = f"{path}.common_lb_config"
    check_fields(
        c,
        cp,
        handled=(
            "healthy_panic_threshold",
            "update_merge_window",
            "locality_weighted_lb_config",
            "ignore_new_hosts_until_first_hc",
            "zone_aware_lb_config",
        ),
    )
    kw: dict[str, Any] = {}
    if c.HasField("healthy_panic_threshold"):
        value = c.healthy_panic_threshold.value
        if not 0 <= value <= 100:
            raise ConfigError(f"{cp}.healthy_panic_threshold.value", "value must be inside range [0, 100]")
        kw["healthy_panic_threshold"] = value
    if c.HasField("update_merge_window"):
        kw["update_merge_window"] = opt_duration(c, "update_merge_window", 1.0)
    if c.HasField("locality_weighted_lb_config"):
        check_fields(c.locality_weighted_lb_config, f"{cp}.locality_weighted_lb_config", handled=())
        kw["locality_weighted_lb"] = True
    kw["ignore_new_hosts_until_first_hc"] = c.ignore_new_hosts_until_first_hc
    if c.HasField("zone_aware_lb_config"):
        z = c.zone_aware_lb_config
        zp = f"{cp}.zone_aware_lb_config"
        check_fields(
            z,
            zp,
            handled=("fail_traffic_on_panic",),
            ignored=("routing_enabled", "min_cluster_size", "force_locality_direct_routing"),
        )
        kw["fail_traffic_on_panic"] = z.fail_traffic_on_panic
    return kw


def _lb_policy_config(la: Any, path: str) -> dict[str, Any]:
    """load_assignment.policy: overprovisioning_factor (> 0, default 140) and weighted_priority_health."""
    if not la.HasField("policy"):
        return {}
    pol = la.policy
    pp = f"{path}.policy"
    # endpoint_stale_after acts on EDS updates only, which static clusters never get.
    check_fields(
        pol,
        pp,
        handled=("overprovisioning_factor", "weighted_priority_health"),
        ignored=("endpoint_stale_after",),
    )
    factor = opt_uint(pol, "overprovisioning_factor", 140)
    if factor == 0:
        raise ConfigError(f"{pp}.overprovisioning_factor", "value must be greater than 0")
    return {"overprovisioning_factor": factor, "weighted_priority_health": pol.weighted_priority_health}


def _circuit_breakers(pb: cluster_pb2.Cluster, path: str) -> Thresholds:
    """circuit_breakers.thresholds[priority DEFAULT].  HIGH-priority thresholds apply to routes with
    `priority: HIGH`, which rds.py refuses (every route is DEFAULT here), so a HIGH threshold is
    checked and kept out of the model: it could never be consulted.  (Istio's bootstrap sets one on
    xds-grpc.)"""
    if not pb.HasField("circuit_breakers"):
        return Thresholds()
    cb = pb.circuit_breakers
    cp = f"{path}.circuit_breakers"
    check_fields(cb, cp, handled=("thresholds",))
    out = Thresholds()
    for i, t in enumerate(cb.thresholds):
        tp = f"{cp}.thresholds[{i}]"
        check_fields(
            t,
            tp,
            handled=(
                "priority",
                "max_connections",
                "max_pending_requests",
                "max_requests",
                "max_retries",
                "retry_budget",
            ),
            ignored=("track_remaining",),
        )
        budget: dict[str, Any] = {}
        if t.HasField("retry_budget"):
            rb = t.retry_budget
            check_fields(rb, f"{tp}.retry_budget", handled=("budget_percent", "min_retry_concurrency"))
            budget["retry_budget_percent"] = rb.budget_percent.value if rb.HasField("budget_percent") else 20.0
            budget["min_retry_concurrency"] = opt_uint(rb, "min_retry_concurrency", 3)
        thresholds = Thresholds(
            max_connections=opt_uint(t, "max_connections", 1024),
            max_pending_requests=opt_uint(t, "max_pending_requests", 1024),
            max_requests=opt_uint(t, "max_requests", 1024),
            max_retries=opt_uint(t, "max_retries", 3),
            **budget,
        )
        if t.priority == 0:
            out = thresholds
        else:
            log_ignored(f"{tp}.priority", "HIGH thresholds apply to HIGH priority routes, which sidecar refuses")
    return out


def _refuse_hash_keys(pb: cluster_pb2.Cluster, path: str) -> None:
    """An endpoint's metadata `envoy.lb: {hash_key: ...}` replaces its address as the ring/table key
    in Envoy; sidecar always hashes the address, so refuse the key rather than place hosts elsewhere."""
    for i, loc in enumerate(pb.load_assignment.endpoints):
        for j, lbe in enumerate(loc.lb_endpoints):
            fm = lbe.metadata.filter_metadata
            if "envoy.lb" in fm and "hash_key" in fm["envoy.lb"].fields:
                raise ConfigError(
                    f"{path}.load_assignment.endpoints[{i}].lb_endpoints[{j}].metadata.filter_metadata"
                    "[envoy.lb].hash_key",
                    "field is not supported by sidecar yet",
                )


def _lb_config(pb: cluster_pb2.Cluster, lb: str, path: str) -> dict[str, Any]:
    """Model fields from the lb_config message of the cluster's lb_policy (cluster.proto defaults and
    bounds); a config message for another policy is ignored, as Envoy does."""
    which = pb.WhichOneof("lb_config")
    if which is None:
        return {}
    cp = f"{path}.{which}"
    if which != _LB_CONFIG.get(lb):
        log_ignored(cp, f"lb_policy is {lb}")
        return {}
    kw: dict[str, Any] = {}
    if which == "least_request_lb_config":
        c = pb.least_request_lb_config
        # slow_start_config ramps new hosts' weights over time: not implemented.
        check_fields(c, cp, handled=("choice_count", "active_request_bias"))
        choice = opt_uint(c, "choice_count", 2)
        if choice < 2:
            raise ConfigError(f"{cp}.choice_count", "value must be greater than or equal to 2")
        kw["least_request_choice_count"] = choice
        if c.HasField("active_request_bias"):
            # RuntimeDouble: there is no runtime layer here, so the default_value is the value.
            bias = c.active_request_bias.default_value
            if bias < 0:
                raise ConfigError(f"{cp}.active_request_bias", "value must be greater than or equal to 0")
            kw["least_request_active_request_bias"] = bias
    elif which == "ring_hash_lb_config":
        c = pb.ring_hash_lb_config
        check_fields(c, cp, handled=("minimum_ring_size", "maximum_ring_size", "hash_function"))
        if enum_name(c, "hash_function", cp) != "XX_HASH":
            raise ConfigError(f"{cp}.hash_function", "MURMUR_HASH_2 is not supported by sidecar yet")
        lo = opt_uint(c, "minimum_ring_size", 1024)
        hi = opt_uint(c, "maximum_ring_size", 8 * 1024 * 1024)
        for name, v in (("minimum_ring_size", lo), ("maximum_ring_size", hi)):
            if v > 8 * 1024 * 1024:
                raise ConfigError(f"{cp}.{name}", "value must be less than or equal to 8388608")
        if lo > hi:
            # Envoy's wording (RingHashLoadBalancer's constructor).
            raise ConfigError(cp, f"ring hash: minimum_ring_size ({lo}) > maximum_ring_size ({hi})")
        if lo == 0:
            # A zero minimum would make an empty ring (Envoy divides by the ring share of 0 hashes).
            raise ConfigError(f"{cp}.minimum_ring_size", "value must be greater than 0")
        kw["ring_hash_minimum_ring_size"] = lo
        kw["ring_hash_maximum_ring_size"] = hi
    else:
        c = pb.maglev_lb_config
        check_fields(c, cp, handled=("table_size",))
        size = opt_uint(c, "table_size", 65537)
        if size > 5000011:
            raise ConfigError(f"{cp}.table_size", "value must be less than or equal to 5000011")
        if not is_prime(size):
            # Envoy's wording (MaglevLoadBalancer's constructor).
            raise ConfigError(f"{cp}.table_size", "The table size of maglev must be prime number")
        kw["maglev_table_size"] = size
    return kw


def _eds(pb: cluster_pb2.Cluster, kind: str, path: str) -> dict[str, Any]:
    """type EDS: eds_cluster_config's service_name (default: the cluster's name) and eds_config."""
    if kind != "EDS":
        if pb.HasField("eds_cluster_config"):
            raise ConfigError(f"{path}.eds_cluster_config", "only EDS clusters take an eds_cluster_config")
        return {}
    from sidecar.xds.config import translate_config_source  # keeps translate/ free of xds at import

    ep = f"{path}.eds_cluster_config"
    check_fields(pb.eds_cluster_config, ep, handled=("eds_config", "service_name"))
    if not pb.eds_cluster_config.HasField("eds_config"):
        # Envoy 1.40 requires it (EdsClusterImpl: "eds_config is required" via the proto's rules).
        raise ConfigError(f"{ep}.eds_config", "value is required")
    return {
        "eds_service_name": pb.eds_cluster_config.service_name or pb.name,
        "eds_source": translate_config_source(pb.eds_cluster_config.eds_config, f"{ep}.eds_config"),
    }


def translate_cluster_load_assignment(
    la: endpoint_pb2.ClusterLoadAssignment, path: str
) -> tuple[Endpoint, ...]:
    """An EDS ClusterLoadAssignment's endpoints (IP addresses, as Envoy's EDS takes them).  Its
    policy (overprovisioning_factor, drop_overloads ...) is not applied: the cluster's stays."""
    check_fields(la, path, handled=("cluster_name", "endpoints"), ignored=("policy", "named_endpoints"))
    out: list[Endpoint] = []
    for i, locality in enumerate(la.endpoints):
        out.extend(_locality(locality, "STATIC", f"{path}.endpoints[{i}]"))
    return tuple(out)


def _endpoints(pb: cluster_pb2.Cluster, kind: str, path: str) -> tuple[Endpoint, ...]:
    la = pb.load_assignment
    lp = f"{path}.load_assignment"
    # cluster_name may differ from the cluster's name: Envoy only uses it for EDS.
    check_fields(la, lp, handled=("cluster_name", "endpoints", "policy"))
    if kind == "LOGICAL_DNS" and (len(la.endpoints) != 1 or len(la.endpoints[0].lb_endpoints) != 1):
        raise ConfigError(
            lp, "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint"
        )
    out: list[Endpoint] = []
    for i, locality in enumerate(la.endpoints):
        out.extend(_locality(locality, kind, f"{lp}.endpoints[{i}]"))
    return tuple(out)


def _locality(loc: endpoint_components_pb2.LocalityLbEndpoints, kind: str, path: str) -> list[Endpoint]:
    # The locality and its weight act with common_lb_config.locality_weighted_lb_config
    # (upstream/lb/priority.py); proximity only feeds zone-aware routing.
    check_fields(
        loc,
        path,
        handled=("lb_endpoints", "priority", "locality", "load_balancing_weight"),
        ignored=("metadata", "proximity"),
    )
    if loc.priority > 128:
        raise ConfigError(f"{path}.priority", "value must be less than or equal to 128")
    locality = ("", "", "")
    if loc.HasField("locality"):
        check_fields(loc.locality, f"{path}.locality", handled=("region", "zone", "sub_zone"))
        locality = (loc.locality.region, loc.locality.zone, loc.locality.sub_zone)
    locality_weight = opt_uint(loc, "load_balancing_weight", 0)
    if loc.HasField("load_balancing_weight") and locality_weight < 1:
        raise ConfigError(f"{path}.load_balancing_weight", "value must be greater than or equal to 1")
    if not loc.HasField("locality"):
        # PriorityStateManager records a weight only for an explicit locality.
        locality_weight = 0
    locality_match = _socket_match(loc.metadata) if loc.HasField("metadata") else None
    out = []
    for j, lbe in enumerate(loc.lb_endpoints):
        ep_path = f"{path}.lb_endpoints[{j}]"
        # Metadata feeds subset LB (not implemented) and transport_socket_matches (socket_match).
        check_fields(
            lbe,
            ep_path,
            handled=("endpoint", "health_status", "load_balancing_weight"),
            ignored=("metadata",),
        )
        weight = opt_uint(lbe, "load_balancing_weight", 1)
        if weight < 1:
            raise ConfigError(f"{ep_path}.load_balancing_weight", "value must be greater than or equal to 1")
        ep = lbe.endpoint
        check_fields(ep, f"{ep_path}.endpoint", handled=("address", "hostname", "health_check_config"))
        hcc = ep.health_check_config
        hcp = f"{ep_path}.endpoint.health_check_config"
        # health_check_config.address (probe another host) is not implemented.
        check_fields(hcc, hcp, handled=("port_value", "hostname", "disable_active_health_check"))
        if hcc.port_value > 65535:
            raise ConfigError(f"{hcp}.port_value", "value must be less than or equal to 65535")
        address = _endpoint_address(ep.address, kind, f"{ep_path}.endpoint.address")
        if hcc.port_value and address.pipe:
            # HostDescriptionImpl's wording.
            raise ConfigError(
                f"{hcp}.port_value", "Invalid host configuration: non-zero port for non-IP address"
            )
        out.append(
            Endpoint(
                address=address,
                weight=weight,
                health_status=enum_name(lbe, "health_status", ep_path),
                hostname=ep.hostname,
                priority=loc.priority,
                locality=locality,
                locality_weight=locality_weight,
                health_check_port=hcc.port_value,
                health_check_hostname=hcc.hostname,
                disable_active_health_check=hcc.disable_active_health_check,
                socket_match=_socket_match(lbe.metadata) if lbe.HasField("metadata") else None,
                locality_socket_match=locality_match,
            )
        )
    return out


def _endpoint_address(addr: address_pb2.Address, kind: str, path: str) -> SocketAddress:
    if kind == "STATIC":
        try:
            return socket_address(addr, path, resolve=False)
        except ConfigError as e:
            if e.reason.startswith("malformed IP address"):
                # Envoy's wording (static_cluster.cc via Network::Utility::parseInternetAddress).
                raise ConfigError(
                    e.path,
                    f"{e.reason}. Consider setting resolver_name or setting cluster type to "
                    "'STRICT_DNS' or 'LOGICAL_DNS'",
                ) from None
            raise
    if addr.WhichOneof("address") != "socket_address":
        raise ConfigError(path, f"{kind} clusters need a socket_address (a hostname and a port)")
    return socket_address(addr, path, resolve=True)


def _protocol_options(pb: cluster_pb2.Cluster, path: str) -> tuple[float, int]:
    """(idle_timeout, max_requests_per_connection) from HttpProtocolOptions or deprecated fields."""
    typed = None
    for key in pb.typed_extension_protocol_options:
        kp = f"{path}.typed_extension_protocol_options[{key}]"
        if key not in HTTP_PROTOCOL_OPTIONS:
            raise ConfigError(
                kp,
                "Didn't find a registered network or http filter or protocol options implementation "
                f"for name: '{key}'",
            )
        typed = (unpack(pb.typed_extension_protocol_options[key], _HPO, kp), kp)
    deprecated_mrpc = opt_uint(pb, "max_requests_per_connection", 0)
    if typed is not None:
        opts, kp = typed
        _check_http_protocol_options(opts, kp)
        idle, mrpc = _common(opts, kp)
        if deprecated_mrpc and opts.common_http_protocol_options.HasField("max_requests_per_connection"):
            raise ConfigError(
                path,
                "Only one of max_requests_per_connection from Cluster or HttpProtocolOptions can be specified",
            )
        # With typed options present Envoy ignores the deprecated protocol fields.
        for name in ("common_http_protocol_options", "http_protocol_options", "http2_protocol_options"):
            if pb.HasField(name):
                log_ignored(f"{path}.{name}", "typed_extension_protocol_options take precedence")
        return idle, mrpc or deprecated_mrpc
    if pb.HasField("upstream_http_protocol_options"):
        raise ConfigError(f"{path}.upstream_http_protocol_options", "field is not supported by sidecar yet")
    if enum_name(pb, "protocol_selection", path) != "USE_CONFIGURED_PROTOCOL":
        raise ConfigError(
            f"{path}.protocol_selection", "USE_DOWNSTREAM_PROTOCOL is not supported by sidecar yet"
        )
    if pb.HasField("http_protocol_options"):
        _http1(pb.http_protocol_options, f"{path}.http_protocol_options")
    idle, mrpc = _common(pb, path)
    return idle, mrpc or deprecated_mrpc


def _check_http_protocol_options(opts: http_protocol_options_pb2.HttpProtocolOptions, path: str) -> None:
    """Only HTTP/1.1 is implemented upstream: explicit_http_config.http_protocol_options, or
    use_downstream_protocol_config (Istio's PassthroughCluster and inbound clusters), which means
    HTTP/1.1 here because every downstream is HTTP/1 until HTTP/2 lands."""
    check_fields(
        opts, path, handled=("common_http_protocol_options", "explicit_http_config", "use_downstream_protocol_config")
    )
    which = opts.WhichOneof("upstream_protocol_options")
    if which is None:
        raise ConfigError(path, 'field: "upstream_protocol_options", reason: is required')
    if which == "use_downstream_protocol_config":
        dp = f"{path}.use_downstream_protocol_config"
        down = opts.use_downstream_protocol_config
        check_fields(down, dp, handled=("http_protocol_options", "http2_protocol_options"))
        _http1(down.http_protocol_options, f"{dp}.http_protocol_options")
        return
    explicit = opts.explicit_http_config
    ep = f"{path}.explicit_http_config"
    kind = explicit.WhichOneof("protocol_config")
    if kind is None:
        raise ConfigError(ep, 'field: "protocol_config", reason: is required')
    if kind == "http2_protocol_options":
        return  # accepted, see _wants_http2
    if kind != "http_protocol_options":
        raise ConfigError(f"{ep}.{kind}", "HTTP/3 upstreams are not supported by sidecar yet")
    _http1(explicit.http_protocol_options, f"{ep}.http_protocol_options")


def _wants_http2(pb: cluster_pb2.Cluster) -> bool:
    """HTTP/2 to the upstream: explicit_http_config.http2_protocol_options in the typed
    HttpProtocolOptions, else the deprecated cluster field http2_protocol_options."""
    for key in pb.typed_extension_protocol_options:
        if key in HTTP_PROTOCOL_OPTIONS:
            opts = unpack(pb.typed_extension_protocol_options[key], _HPO, "")
            return bool(opts.explicit_http_config.HasField("http2_protocol_options"))
    return bool(pb.HasField("http2_protocol_options"))


def _http1(opts: protocol_pb2.Http1ProtocolOptions, path: str) -> None:
    # Every Http1ProtocolOptions knob changes the bytes we send or accept: none is implemented yet.
    check_fields(opts, path, handled=())


def _common(
    holder: cluster_pb2.Cluster | http_protocol_options_pb2.HttpProtocolOptions, path: str
) -> tuple[float, int]:
    """common_http_protocol_options of a Cluster or of an HttpProtocolOptions."""
    if not holder.HasField("common_http_protocol_options"):
        return 3600.0, 0
    c = holder.common_http_protocol_options
    cp = f"{path}.common_http_protocol_options"
    check_fields(c, cp, handled=("idle_timeout", "max_requests_per_connection"))
    return opt_duration(c, "idle_timeout", 3600.0), opt_uint(c, "max_requests_per_connection", 0)


def _istio_alpn_override(pb: cluster_pb2.Cluster) -> bool:
    """Istio's istio.alpn filter leaves a cluster's own ALPN alone when its metadata has
    filter_metadata.istio.alpn_override "false" (istiod sets it where the peer is no Istio proxy)."""
    istio = pb.metadata.filter_metadata.get("istio")
    if istio is None or "alpn_override" not in istio.fields:
        return True
    return bool(istio.fields["alpn_override"].string_value != "false")

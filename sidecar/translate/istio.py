"""The policy for Istio's own (private) extensions in istiod's LDS/CDS: skip them, or keep the one
that changes bytes on the wire (TCP metadata exchange); and which standard Envoy filters that
Istio adds by default are accepted without being implemented.

What istiod (1.2x, pilot/pkg/networking/core, pilot/pkg/xds/filters/filters.go,
pilot/pkg/model/telemetry.go) sends a sidecar, by position:

Listener filters (all standard):
  virtualInbound 0.0.0.0:15006 (use_original_dst unset, continue_on_listener_filters_timeout):
    envoy.filters.listener.original_dst (OriginalDst), envoy.filters.listener.tls_inspector
    (TlsInspector{initial_read_buffer_size: 512}), envoy.filters.listener.http_inspector
    (HttpInspector); an inspector may carry `filter_disabled` (a ListenerFilterChainMatchPredicate of
    destination_port_range / or_match / not_match) for ports whose protocol is declared: translated
    (ListenerFilter.disabled) and honoured per connection by listener/accept.py, since running the
    inspector there would hold a server-first protocol forever (listener_filters_timeout 0).
  virtualOutbound 0.0.0.0:15001 (use_original_dst: true): original_dst only.
  outbound 0.0.0.0_<port> (bind_to_port: false): tls_inspector when a chain matches SNI or ALPN,
    http_inspector when one matches application_protocols (auto-detected ports); else none.
Network filters:
  istio.metadata_exchange  TypedStruct{type.googleapis.com/envoy.tcp.metadataexchange.config.
    MetadataExchange, {protocol: istio-peer-exchange, enable_discovery: true}}: first on inbound
    TCP chains (and on the 15006 passthrough TCP chains).  KEPT (model.istio.MetadataExchange):
    with ALPN istio-peer-exchange each side writes then reads a preamble before the payload
    (l4/metadata_exchange.py); ignoring it would hand the peer's preamble to the application.
  istio.stats  Any type.googleapis.com/stats.PluginConfig (telemetry v2, not wrapped): before
    tcp_proxy on every TCP chain.  SKIPPED: it only makes the istio_tcp_* Prometheus metrics.
  envoy.filters.network.rbac (authorization policies), envoy.filters.network.tcp_proxy (with
    access_log), envoy.filters.network.http_connection_manager: standard, translated in lds.py.
HTTP filters, in istiod's order (listener_builder.go):
  istio.metadata_exchange  TypedStruct{type.googleapis.com/io.istio.http.peer_metadata.Config,
    {upstream|downstream_discovery: [istio_headers, workload_discovery], ..._propagation:
    [istio_headers]}}.  SKIPPED: it adds/reads the x-istio-peer-metadata headers that feed the
    stats' peer labels; skipping loses those labels (requests are unchanged otherwise; an Envoy
    peer then labels us "unknown").
  envoy.filters.http.rbac / jwt_authn / ext_authz (only with policies): standard.
  envoy.filters.http.grpc_web: only on ports declared grpc-web.  REFUSED (real transcoding).
  envoy.filters.http.grpc_stats  FilterConfig{emit_filter_state: true, stats_for_all_methods:
    false}.  ACCEPTED AND SKIPPED: it only counts gRPC messages into stats and filter state (read
    by istio.stats); requests and responses are unchanged.
  istio.alpn  Any type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig
    (not wrapped; outbound only): overrides the upstream TLS ALPN to istio-http/1.0|1.1 / istio-h2
    (+ "istio", + the plain name).  KEPT as HttpConnectionManager.upstream_alpn (upstream_alpn()
    below) and dropped from the filter chain: the router asks the host for a pool whose TLS offers
    that ALPN (upstream/pools/http1.py, tls/wiring.py), unless the cluster's metadata says
    istio.alpn_override "false".  An Envoy peer's 15006 chains on undeclared ports tell HTTP from
    TCP by istio-http/*: without the override an HTTP request would land on its TCP chain.
  envoy.filters.http.fault  HTTPFault{}: standard, translated (faults come per route).
  envoy.filters.http.cors  Cors{}: ACCEPTED AND SKIPPED while it has no policy: Envoy's CORS
    filter does nothing for a route without a CorsPolicy, and CorsPolicy in typed_per_filter_config
    (VirtualService corsPolicy) is refused by the route translation, so nothing is faked.
  istio.stats  Any type.googleapis.com/stats.PluginConfig.  SKIPPED: istio_requests_total and the
    other istio_* metrics are not produced.
  envoy.filters.http.stateful_session (only with PILOT_ENABLE_PERSISTENT_SESSION_FILTER) and
    dynamic_forward_proxy (DYNAMIC_DNS ServiceEntries): REFUSED (real behaviour).
  envoy.filters.http.router {start_child_span, suppress_envoy_headers}: standard.
Older Istio (1.5 to 1.17) sent stats and metadata exchange as Wasm filters running in the null VM
  (envoy.extensions.filters.{http,network}.wasm.v3.Wasm, vm_config.runtime envoy.wasm.runtime.null,
  code.local.inline_string envoy.wasm.stats / envoy.wasm.metadata_exchange): SKIPPED as above;
  any other Wasm module is refused.  Waypoint/HBONE types (envoy.extensions.network_filters.
  peer_metadata.*) are Istio's too and skipped, though a sidecar does not get them.
Clusters: outbound|<port>|<subset>|<host> (EDS over ADS, LEAST_REQUEST, transport_socket_matches
  tlsMode-istio -> UpstreamTlsContext with SDS "default"/"ROOTCA" from cluster sds-grpc, ALPN
  istio-peer-exchange/istio, then tlsMode-disabled raw_buffer; circuit_breakers, metadata istio,
  typed_extension_protocol_options HttpProtocolOptions, and `filters: [istio.metadata_exchange
  (TypedStruct MetadataExchange)]`: KEPT as Cluster.metadata_exchange, the upstream side),
  inbound|<port>|| (ORIGINAL_DST, CLUSTER_PROVIDED, cleanup_interval ~292 years,
  upstream_bind_config 127.0.0.6; STATIC when the Sidecar resource binds the app),
  PassthroughCluster (ORIGINAL_DST, CLUSTER_PROVIDED, also with the MX cluster filter),
  BlackHoleCluster (STATIC, no endpoints), InboundPassthroughCluster (ORIGINAL_DST,
  upstream_bind_config 127.0.0.6).  Bootstrap (not CDS): prometheus_stats, agent, sds-grpc,
  xds-grpc, and the 15090/15021 listeners.

Skipping is logged once per type per process and counted (`skipped_counts`).  An unknown type that
is not Istio's is still refused by the callers, as Envoy refuses it."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import any_pb2, json_format, struct_pb2
from google.protobuf.message import DecodeError, Message

from sidecar.model.istio import AlpnOverride, MetadataExchange
from sidecar.translate.common import type_name
from sidecar.translate.errors import ConfigError

log = logging.getLogger("sidecar.config")

METADATA_EXCHANGE = "envoy.tcp.metadataexchange.config.MetadataExchange"
STATS = "stats.PluginConfig"
PEER_METADATA = "io.istio.http.peer_metadata.Config"
ALPN = "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"

# Istio-private config types (not in xds-protos): what each does in Istio.
ISTIO_TYPES: Mapping[str, str] = {
    STATS: "Istio telemetry (istio_* Prometheus metrics)",
    PEER_METADATA: "Istio HTTP peer metadata exchange (labels for telemetry)",
    ALPN: "Istio upstream ALPN override (istio-http/*)",
    METADATA_EXCHANGE: "Istio TCP metadata exchange",
    "envoy.extensions.network_filters.peer_metadata.Config": "Istio HBONE peer metadata (waypoints)",
    "envoy.extensions.network_filters.peer_metadata.UpstreamConfig": "Istio HBONE peer metadata (waypoints)",
    "envoy.extensions.filters.http.istio_stats.v3.PluginConfig": "Istio telemetry",
}
# Any type in these packages is Istio's own (istio/api, istio/proxy).
_ISTIO_PACKAGES = ("istio.", "io.istio.")
_TYPED_STRUCTS = ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct")
_WASM = ("envoy.extensions.filters.http.wasm.v3.Wasm", "envoy.extensions.filters.network.wasm.v3.Wasm")
# Istio's extensions compiled into istio-proxy and run in Wasm's null VM (Istio 1.5 to 1.17).
_NULL_VM_PLUGINS = ("envoy.wasm.stats", "envoy.wasm.metadata_exchange")

# Standard Envoy HTTP filters Istio adds to every HCM that we accept without running them: what
# running them would change here (see the module docstring).
STANDARD_SKIPPED: Mapping[str, str] = {
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig": "only gRPC message stats",
    "envoy.extensions.filters.http.cors.v3.Cors": "no CORS policy can reach it (refused in routes)",
}

_skipped: Counter[str] = Counter()
_logged: set[str] = set()


def skipped_counts() -> Mapping[str, int]:
    """How many filters of each type were skipped by this process's translations."""
    return dict(_skipped)


def _skip(kind: str, position: str, name: str, path: str, why: str) -> None:
    _skipped[kind] += 1
    if kind not in _logged:  # once per type per process; translation is off the request path
        _logged.add(kind)
        log.info(
            "skipping %s '%s' of type %s at %s: %s (not implemented by sidecar)",
            position,
            name,
            kind,
            path,
            why,
        )


def istio_type(any_pb: any_pb2.Any) -> str | None:
    """The Istio-private type a typed_config holds (looking inside a TypedStruct wrapper, and at
    Istio's null-VM Wasm plugins), or None when it is not Istio's."""
    name = type_name(any_pb.type_url)
    inner: struct_pb2.Struct | None = None
    if name in _TYPED_STRUCTS:
        fields = _typed_struct(any_pb)
        if fields is None:
            return None
        name, inner = fields
    if name in ISTIO_TYPES or name.startswith(_ISTIO_PACKAGES):
        return name
    if name in _WASM and _is_null_vm_plugin(any_pb, inner):
        return name
    return None


def _typed_struct(any_pb: any_pb2.Any) -> tuple[str, struct_pb2.Struct] | None:
    """(inner type name, value) of a udpa.type.v1 / xds.type.v3 TypedStruct (same wire layout:
    1 type_url, 2 value)."""
    from xds.type.v3 import typed_struct_pb2

    ts = typed_struct_pb2.TypedStruct()
    try:
        ts.ParseFromString(any_pb.value)
    except DecodeError:
        return None
    return type_name(ts.type_url), ts.value


def _is_null_vm_plugin(any_pb: any_pb2.Any, inner: struct_pb2.Struct | None) -> bool:
    from envoy.extensions.filters.http.wasm.v3 import wasm_pb2

    msg = wasm_pb2.Wasm()  # the network Wasm message has the same `config` field
    try:
        if inner is not None:
            json_format.ParseDict(json_format.MessageToDict(inner), msg, ignore_unknown_fields=True)
        else:
            msg.ParseFromString(any_pb.value)
    except (DecodeError, json_format.ParseError):
        return False
    vm = msg.config.vm_config
    return vm.runtime == "envoy.wasm.runtime.null" and vm.code.local.inline_string in _NULL_VM_PLUGINS


def skip_istio_filter(position: str, name: str, any_pb: any_pb2.Any, path: str) -> bool:
    """True (and logged once, counted) when the filter at `path` is Istio-private and dropped from
    the translated chain.  The TCP metadata exchange is not dropped here: see network_filter."""
    kind = istio_type(any_pb)
    if kind is None:
        return False
    _skip(kind, position, name, path, ISTIO_TYPES.get(kind, "an Istio extension"))
    return True


def network_filter(name: str, any_pb: any_pb2.Any, path: str) -> MetadataExchange | bool:
    """For a network (or cluster upstream) filter: the kept metadata exchange config, True when it
    is another Istio filter (skipped), False when it is not Istio's."""
    if istio_type(any_pb) == METADATA_EXCHANGE:
        return metadata_exchange(any_pb, path)
    return skip_istio_filter("network filter", name, any_pb, path)


def metadata_exchange(any_pb: any_pb2.Any, path: str) -> MetadataExchange:
    """envoy.tcp.metadataexchange.config.MetadataExchange (istio/proxy's proto: 1 protocol,
    2 enable_discovery, 3 additional_labels), wrapped in a TypedStruct as istiod sends it, or as
    the message's own bytes."""
    fields = _typed_struct(any_pb) if type_name(any_pb.type_url) in _TYPED_STRUCTS else None
    if fields is not None:
        value = json_format.MessageToDict(fields[1])
    else:
        value = _decode_mx(any_pb.value, path)
    protocol = value.get("protocol", "")
    discovery = value.get("enable_discovery", value.get("enableDiscovery", False))
    labels = value.get("additional_labels", value.get("additionalLabels", []))
    if not isinstance(protocol, str) or not isinstance(discovery, bool):
        raise ConfigError(path, "MetadataExchange: protocol must be a string, enable_discovery a bool")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ConfigError(f"{path}.additional_labels", "must be a list of strings")
    unknown = sorted(
        set(value)
        - {"protocol", "enable_discovery", "enableDiscovery", "additional_labels", "additionalLabels"}
    )
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}", "field is not supported by sidecar yet")
    return MetadataExchange(protocol=protocol, enable_discovery=discovery, additional_labels=tuple(labels))


def _decode_mx(data: bytes, path: str) -> dict[str, object]:
    """The three fields of MetadataExchange from its wire bytes (no generated class exists)."""
    # A message with the same field numbers and types, built from descriptor protos at first use.
    cls = _mx_class()
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError as e:
        raise ConfigError(path, f"cannot decode {METADATA_EXCHANGE}: {e}") from None
    return {
        "protocol": msg.protocol,  # type: ignore[attr-defined]
        "enable_discovery": msg.enable_discovery,  # type: ignore[attr-defined]
        "additional_labels": list(msg.additional_labels),  # type: ignore[attr-defined]
    }


_MX_CLASS: list[type[Message]] = []


def _mx_class() -> type[Message]:
    if not _MX_CLASS:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        fdp = descriptor_pb2.FileDescriptorProto(name="sidecar/istio_mx.proto", package="sidecar.istio_mx")
        fdp.syntax = "proto3"
        m = fdp.message_type.add(name="MetadataExchange")
        f = descriptor_pb2.FieldDescriptorProto
        m.field.add(name="protocol", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
        m.field.add(name="enable_discovery", number=2, type=f.TYPE_BOOL, label=f.LABEL_OPTIONAL)
        m.field.add(name="additional_labels", number=3, type=f.TYPE_STRING, label=f.LABEL_REPEATED)
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        desc = pool.FindMessageTypeByName("sidecar.istio_mx.MetadataExchange")
        _MX_CLASS.append(message_factory.GetMessageClass(desc))
    return _MX_CLASS[0]


def skip_standard_http_filter(name: str, msg: Message, path: str) -> bool:
    """True (logged once, counted) for a standard filter Istio adds that we accept without running
    it because it changes nothing a client could see here (STANDARD_SKIPPED)."""
    kind = msg.DESCRIPTOR.full_name
    why = STANDARD_SKIPPED.get(kind)
    if why is None:
        return False
    _skip(kind, "http filter", name, path, why)
    return True


def cluster_filters(filters: list[Message], path: str) -> MetadataExchange | None:
    """Cluster.filters (upstream network filters): Istio's metadata exchange is kept, its other
    filters skipped; anything else is refused, as before."""
    mx = None
    for i, f in enumerate(filters):
        fp = f"{path}[{i}]"
        any_pb = f.typed_config  # type: ignore[attr-defined]
        name = f.name  # type: ignore[attr-defined]
        found = network_filter(name, any_pb, f"{fp}.typed_config")
        if isinstance(found, MetadataExchange):
            mx = found
        elif not found:
            raise ConfigError(
                f"{fp}.typed_config",
                f"upstream filter '{name}' of type '{type_name(any_pb.type_url)}' "
                "is not supported by sidecar yet",
            )
    return mx


def upstream_alpn(filters: Iterable[Any], path: str) -> AlpnOverride | None:
    """The istio.alpn filter of a connection manager's http_filters (None without one): kept as the
    connection manager's upstream ALPN override, then dropped from the filter chain like the other
    Istio filters (skip_istio_filter)."""
    for i, f in enumerate(filters):
        if istio_type(f.typed_config) == ALPN:
            return _alpn(f.typed_config, f"{path}.http_filters[{i}].typed_config")
    return None


def _alpn(any_pb: any_pb2.Any, path: str) -> AlpnOverride:
    """FilterConfig{repeated AlpnOverride alpn_override = 1}, AlpnOverride{Protocol upstream_protocol
    = 1 (HTTP10 0, HTTP11 1, HTTP2 2); repeated string alpn_override = 2} (istio/proxy's proto),
    as raw bytes (istiod's form) or in a TypedStruct."""
    by_proto: dict[int, tuple[str, ...]] = {}
    fields = _typed_struct(any_pb) if type_name(any_pb.type_url) in _TYPED_STRUCTS else None
    if fields is not None:
        value = json_format.MessageToDict(fields[1])
        names = {"HTTP10": 0, "HTTP11": 1, "HTTP2": 2}
        for entry in value.get("alpn_override", value.get("alpnOverride", [])):
            proto = entry.get("upstream_protocol", entry.get("upstreamProtocol", "HTTP10"))
            alpns = entry.get("alpn_override", entry.get("alpnOverride", []))
            if proto not in names or not isinstance(alpns, list):
                raise ConfigError(path, f"invalid {ALPN}: {entry}")
            by_proto[names[proto]] = tuple(str(a) for a in alpns)
    else:
        msg = _alpn_class()()
        try:
            msg.ParseFromString(any_pb.value)
        except DecodeError as e:
            raise ConfigError(path, f"cannot decode {ALPN}: {e}") from None
        for entry in msg.alpn_override:  # type: ignore[attr-defined]
            by_proto[int(entry.upstream_protocol)] = tuple(entry.alpn_override)
    return AlpnOverride(http10=by_proto.get(0, ()), http11=by_proto.get(1, ()), http2=by_proto.get(2, ()))


_ALPN_CLASS: list[type[Message]] = []


def _alpn_class() -> type[Message]:
    if not _ALPN_CLASS:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        fdp = descriptor_pb2.FileDescriptorProto(name="sidecar/istio_alpn.proto", package="sidecar.istio_alpn")
        fdp.syntax = "proto3"
        f = descriptor_pb2.FieldDescriptorProto
        entry = fdp.message_type.add(name="AlpnOverride")
        entry.field.add(name="upstream_protocol", number=1, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
        entry.field.add(name="alpn_override", number=2, type=f.TYPE_STRING, label=f.LABEL_REPEATED)
        top = fdp.message_type.add(name="FilterConfig")
        top.field.add(
            name="alpn_override", number=1, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
            type_name=".sidecar.istio_alpn.AlpnOverride",
        )
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        _ALPN_CLASS.append(message_factory.GetMessageClass(pool.FindMessageTypeByName("sidecar.istio_alpn.FilterConfig")))
    return _ALPN_CLASS[0]

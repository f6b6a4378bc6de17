"""xDS resources shaped like istiod's (1.2x) output for a bookinfo productpage sidecar, built with
the xds-protos messages, and raw Any / TypedStruct for Istio's private types (which have no
generated classes here, exactly as they reach sidecar over ADS).

Sources of the shapes: istio/istio pilot/pkg/networking/core (listener_builder.go, listener.go,
listener_inbound.go, networkfilter.go, cluster_builder.go, route/route.go, route/retry/retry.go),
pilot/pkg/xds/filters/filters.go, pilot/pkg/model/telemetry.go.  Default mesh config: PERMISSIVE
mTLS, telemetry v2 on, no access log, ALPN filter on.  translate/istio.py lists the same inventory.

`lds()`, `cds()`, `rds()` return lists of messages; the constants name the private type URLs."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2, json_format, struct_pb2
from udpa.type.v1 import typed_struct_pb2 as udpa_typed_struct_pb2
from xds.type.v3 import typed_struct_pb2 as xds_typed_struct_pb2

from sidecar.translate.common import preload_types

STATS_URL = "type.googleapis.com/stats.PluginConfig"
MX_URL = "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"
PEER_METADATA_URL = "type.googleapis.com/io.istio.http.peer_metadata.Config"
ALPN_URL = "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP = T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
NS = "default"
POD_IP = "10.244.0.12"
ADS: dict[str, Any] = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
SDS: dict[str, Any] = {
    "api_config_source": {
        "api_type": "GRPC",
        "set_node_on_first_message_only": True,
        "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
    },
    "initial_fetch_timeout": "0s",
    "resource_api_version": "V3",
}
MAX = 4294967295
VS_REVIEWS = f"/apis/networking.istio.io/v1/namespaces/{NS}/virtual-service/reviews"


def host(svc: str) -> str:
    return f"{svc}.{NS}.svc.cluster.local"


# -- Istio-private typed configs, as istiod encodes them --------------------------------------------


def typed_struct(type_url: str, fields: dict[str, Any], wrapper: str = "udpa") -> any_pb2.Any:
    """protoconv.TypedStructWithFields: udpa.type.v1.TypedStruct{type_url, value} (istiod uses the
    udpa one; xds.type.v3 has the same layout and is accepted too)."""
    value = struct_pb2.Struct()
    value.update(fields)
    cls = udpa_typed_struct_pb2.TypedStruct if wrapper == "udpa" else xds_typed_struct_pb2.TypedStruct
    out = any_pb2.Any()
    out.Pack(cls(type_url=type_url, value=value))
    return out


def raw_any(type_url: str, value: bytes = b"") -> any_pb2.Any:
    """protoconv.MessageToAny of an Istio proto: its bytes, under a type URL we cannot resolve."""
    return any_pb2.Any(type_url=type_url, value=value)


def _varint_field(number: int, value: int) -> bytes:
    return bytes([number << 3, value]) if value else b""


def _bytes_field(number: int, data: bytes) -> bytes:
    return bytes([(number << 3) | 2, len(data)]) + data


def alpn_config() -> any_pb2.Any:
    """istio.alpn's FilterConfig{alpn_override: [{upstream_protocol, alpn_override: [...]}]}."""
    body = b""
    for proto, alpns in (
        (0, ("istio-http/1.0", "istio", "http/1.0")),
        (1, ("istio-http/1.1", "istio", "http/1.1")),
        (2, ("istio-h2", "istio", "h2")),
    ):
        entry = _varint_field(1, proto) + b"".join(_bytes_field(2, a.encode()) for a in alpns)
        body += _bytes_field(1, entry)
    return raw_any(ALPN_URL, body)


def stats(inbound: bool) -> any_pb2.Any:
    # stats.PluginConfig{disable_host_header_fallback: true} on inbound (field 10 here: the value
    # is never read by sidecar, only its type URL).
    return raw_any(STATS_URL, b"\x50\x01" if inbound else b"")


MX_FIELDS = {"protocol": "istio-peer-exchange", "enable_discovery": True}


def tcp_mx() -> any_pb2.Any:
    return typed_struct(MX_URL, MX_FIELDS)


def peer_metadata(inbound: bool) -> any_pb2.Any:
    side = "downstream" if inbound else "upstream"
    return typed_struct(
        PEER_METADATA_URL,
        {
            f"{side}_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
            f"{side}_propagation": [{"istio_headers": {}}],
        },
    )


# -- builders ---------------------------------------------------------------------------------------


def parse(cls: type[Any], data: dict[str, Any]) -> Any:
    preload_types(data)
    return json_format.ParseDict(data, cls())


def filter_json(name: str, type_url: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": type_url, **fields}}


def tcp_proxy(cluster: str, stat_prefix: str | None = None) -> dict[str, Any]:
    return filter_json(
        "envoy.filters.network.tcp_proxy", TCP, stat_prefix=stat_prefix or cluster, cluster=cluster
    )


def http_filters(inbound: bool) -> list[Any]:
    """Placeholders ("@istio:...") are replaced by raw Anys once the message is built."""
    out: list[Any] = [("istio.metadata_exchange", peer_metadata(inbound))]
    out.append(
        filter_json(
            "envoy.filters.http.grpc_stats",
            T + "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
            emit_filter_state=True,
            stats_for_all_methods=False,
        )
    )
    if not inbound:
        out.append(("istio.alpn", alpn_config()))
    out.append(
        filter_json("envoy.filters.http.fault", T + "envoy.extensions.filters.http.fault.v3.HTTPFault")
    )
    out.append(filter_json("envoy.filters.http.cors", T + "envoy.extensions.filters.http.cors.v3.Cors"))
    out.append(("istio.stats", stats(inbound)))
    out.append(filter_json("envoy.filters.http.router", T + "envoy.extensions.filters.http.router.v3.Router"))
    return out


def hcm(stat_prefix: str, inbound: bool, route: dict[str, Any]) -> dict[str, Any]:
    """istiod's buildHTTPConnectionManager for a sidecar (default mesh config)."""
    cfg: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "use_remote_address": False,
        "normalize_path": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "stream_idle_timeout": "0s",
        "server_name": "istio-envoy" if inbound else "",
        "request_id_extension": {
            "typed_config": {
                "@type": T + "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
                "use_request_id_for_trace_sampling": True,
            }
        },
        "tracing": {
            "client_sampling": {"value": 100},
            "random_sampling": {"value": 1},
            "overall_sampling": {"value": 100},
            "custom_tags": [
                {"tag": "istio.canonical_revision", "literal": {"value": "v1"}},
                {"tag": "istio.canonical_service", "literal": {"value": "productpage"}},
                {"tag": "istio.mesh_id", "literal": {"value": "cluster.local"}},
                {"tag": "istio.namespace", "literal": {"value": NS}},
            ],
        },
        "http_filters": [],
        **route,
    }
    if not cfg["server_name"]:
        del cfg["server_name"]
    if inbound:
        cfg["forward_client_cert_details"] = "APPEND_FORWARD"
        cfg["set_current_client_cert_details"] = {"subject": True, "dns": True, "uri": True}
    return cfg


def with_http_filters(msg: listener_pb2.Listener, inbound: bool) -> listener_pb2.Listener:
    """Fill every HCM's http_filters (Istio's private ones as raw Anys)."""
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

    chains = [
        *msg.filter_chains,
        *([msg.default_filter_chain] if msg.HasField("default_filter_chain") else []),
    ]
    for chain in chains:
        for f in chain.filters:
            if f.typed_config.type_url != HCM:
                continue
            h = http_connection_manager_pb2.HttpConnectionManager()
            f.typed_config.Unpack(h)
            for entry in http_filters(inbound):
                if isinstance(entry, tuple):
                    h.http_filters.add(name=entry[0]).typed_config.CopyFrom(entry[1])
                else:
                    h.http_filters.append(parse(http_connection_manager_pb2.HttpFilter, entry))
            f.typed_config.Pack(h)
    return msg


def prepend_network_filter(chain: listener_pb2.FilterChain, name: str, any_pb: any_pb2.Any) -> None:
    f = chain.filters.add(name=name)
    f.typed_config.CopyFrom(any_pb)
    chain.filters.insert(0, f)
    del chain.filters[-1]


def downstream_tls(alpn: list[str]) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_2",
                    "tls_maximum_protocol_version": "TLSv1_3",
                },
                "alpn_protocols": alpn,
                "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": SDS}],
                "combined_validation_context": {
                    "default_validation_context": {},
                    "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": SDS},
                },
            },
            "require_client_certificate": True,
        },
    }


def upstream_tls(svc: str, port: int, subset: str = "") -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_2",
                    "tls_maximum_protocol_version": "TLSv1_3",
                },
                "alpn_protocols": ["istio-peer-exchange", "istio"],
                "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": SDS}],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [
                            {
                                "san_type": "URI",
                                "matcher": {"exact": f"spiffe://cluster.local/ns/{NS}/sa/bookinfo-{svc}"},
                            }
                        ]
                    },
                    "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": SDS},
                },
            },
            "sni": f"outbound_.{port}_.{subset}_.{host(svc)}",
        },
    }


# -- LDS --------------------------------------------------------------------------------------------

RETRY_OUTBOUND: dict[str, Any] = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": T + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": 5,
}
RETRY_INBOUND: dict[str, Any] = {"retry_on": "reset-before-request", "num_retries": 2}
NO_STREAM_LIMIT = {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}


def inbound_route_config(name: str, cluster: str, operation: str) -> dict[str, Any]:
    """BuildDefaultHTTPInboundRoute inside an inline route_config."""
    return {
        "route_config": {
            "name": name,
            "validate_clusters": False,
            "virtual_hosts": [
                {
                    "name": "inbound|http|9080" if "9080" in name else "inbound|http|0",
                    "domains": ["*"],
                    "routes": [
                        {
                            "name": "default",
                            "match": {"prefix": "/"},
                            "decorator": {"operation": operation},
                            "route": {
                                "cluster": cluster,
                                "timeout": "0s",
                                "max_stream_duration": NO_STREAM_LIMIT,
                                "retry_policy": RETRY_INBOUND,
                            },
                        }
                    ],
                }
            ],
        }
    }


def virtual_outbound() -> listener_pb2.Listener:
    """0.0.0.0:15001: use_original_dst hands connections to 0.0.0.0_<port>; else these chains."""
    return parse(
        listener_pb2.Listener,
        {
            "name": "virtualOutbound",
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
            "use_original_dst": True,
            "traffic_direction": "OUTBOUND",
            "max_connections_to_accept_per_socket_event": 1,
            "filter_chains": [
                {
                    "name": "virtualOutbound-blackhole",
                    "filter_chain_match": {"destination_port": 15001},
                    "filters": [tcp_proxy("BlackHoleCluster")],
                },
                {"name": "virtualOutbound-catchall-tcp", "filters": [tcp_proxy("PassthroughCluster")]},
            ],
        },
    )


def with_stats(msg: listener_pb2.Listener, inbound: bool) -> listener_pb2.Listener:
    """istio.stats first on every TCP chain, then the metadata exchange first on inbound TLS ones."""
    chains = [
        *msg.filter_chains,
        *([msg.default_filter_chain] if msg.HasField("default_filter_chain") else []),
    ]
    for chain in chains:
        if chain.filters and chain.filters[-1].typed_config.type_url == TCP:
            prepend_network_filter(chain, "istio.stats", stats(inbound))
            if inbound and chain.filter_chain_match.transport_protocol == "tls":
                prepend_network_filter(chain, "istio.metadata_exchange", tcp_mx())
    return msg


def virtual_inbound(filter_disabled: bool = True) -> listener_pb2.Listener:
    """0.0.0.0:15006, PERMISSIVE: TLS and plaintext chains side by side for the declared port 9080
    and for the passthrough (undeclared ports), HTTP told from TCP by ALPN / the HTTP inspector."""
    tls_tcp = downstream_tls(["istio-peer-exchange", "h2", "http/1.1"])
    tls_http = downstream_tls(["h2", "http/1.1"])
    passthrough_route = inbound_route_config(
        "InboundPassthroughCluster", "InboundPassthroughCluster", "productpage.default.svc.cluster.local:0/*"
    )
    port_route = inbound_route_config(
        "inbound|9080||", "inbound|9080||", "productpage.default.svc.cluster.local:9080/*"
    )
    http_inspector: dict[str, Any] = {
        "name": "envoy.filters.listener.http_inspector",
        "typed_config": {"@type": T + "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"},
    }
    if filter_disabled:
        # buildHTTPInspector: no sniffing on ports whose protocol is declared (9080 is "http").
        http_inspector["filter_disabled"] = {"destination_port_range": {"start": 9080, "end": 9081}}
    any_ip = [{"address_prefix": "0.0.0.0", "prefix_len": 0}]
    data = {
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
        "traffic_direction": "INBOUND",
        "continue_on_listener_filters_timeout": True,
        "listener_filters_timeout": "0s",
        "listener_filters": [
            {
                "name": "envoy.filters.listener.original_dst",
                "typed_config": {
                    "@type": T + "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
                },
            },
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
                    "initial_read_buffer_size": 512,
                },
            },
            http_inspector,
        ],
        "filter_chains": [
            {
                "name": "virtualInbound-blackhole",
                "filter_chain_match": {"destination_port": 15006},
                "filters": [tcp_proxy("BlackHoleCluster")],
            },
            {
                "name": "virtualInbound",
                "filter_chain_match": {"prefix_ranges": any_ip, "transport_protocol": "tls"},
                "transport_socket": tls_tcp,
                "filters": [tcp_proxy("InboundPassthroughCluster")],
            },
            {
                "name": "virtualInbound",
                "filter_chain_match": {"prefix_ranges": any_ip, "transport_protocol": "raw_buffer"},
                "filters": [tcp_proxy("InboundPassthroughCluster")],
            },
            {
                "name": "virtualInbound-catchall-http",
                "filter_chain_match": {
                    "prefix_ranges": any_ip,
                    "transport_protocol": "tls",
                    "application_protocols": ["istio-http/1.0", "istio-http/1.1", "istio-h2"],
                },
                "transport_socket": tls_http,
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm("inbound_0.0.0.0_15006", True, passthrough_route),
                    }
                ],
            },
            {
                "name": "virtualInbound-catchall-http",
                "filter_chain_match": {
                    "prefix_ranges": any_ip,
                    "transport_protocol": "raw_buffer",
                    "application_protocols": ["http/1.1", "h2c"],
                },
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm("inbound_0.0.0.0_15006", True, passthrough_route),
                    }
                ],
            },
            {
                "name": "0.0.0.0_9080",
                "filter_chain_match": {"destination_port": 9080, "transport_protocol": "tls"},
                "transport_socket": tls_http,
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm("inbound_0.0.0.0_9080", True, port_route),
                    }
                ],
            },
            {
                "name": "0.0.0.0_9080",
                "filter_chain_match": {"destination_port": 9080, "transport_protocol": "raw_buffer"},
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm("inbound_0.0.0.0_9080", True, port_route),
                    }
                ],
            },
        ],
    }
    return with_http_filters(with_stats(parse(listener_pb2.Listener, data), inbound=True), inbound=True)


def outbound_http(port: int = 9080) -> listener_pb2.Listener:
    """0.0.0.0_9080: bind_to_port false (reached through 15001), routes from RDS "9080"."""
    rds = {"rds": {"config_source": ADS, "route_config_name": str(port)}}
    data = {
        "name": f"0.0.0.0_{port}",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "bind_to_port": False,
        "traffic_direction": "OUTBOUND",
        "listener_filters_timeout": "0s",
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm(f"outbound_0.0.0.0_{port}", False, rds),
                    }
                ]
            }
        ],
        "default_filter_chain": {
            "name": "PassthroughFilterChain",
            "filters": [tcp_proxy("PassthroughCluster")],
        },
    }
    return with_http_filters(with_stats(parse(listener_pb2.Listener, data), inbound=False), inbound=False)


def outbound_tcp(ip: str = "10.96.50.5", port: int = 27017, svc: str = "mongodb") -> listener_pb2.Listener:
    """<ip>_<port> for a TCP service: istio.stats then tcp_proxy (the MX is on the cluster)."""
    cluster = f"outbound|{port}||{host(svc)}"
    data = {
        "name": f"{ip}_{port}",
        "address": {"socket_address": {"address": ip, "port_value": port}},
        "bind_to_port": False,
        "traffic_direction": "OUTBOUND",
        "listener_filters_timeout": "0s",
        "filter_chains": [{"filters": [tcp_proxy(cluster)]}],
    }
    return with_stats(parse(listener_pb2.Listener, data), inbound=False)


def lds() -> list[listener_pb2.Listener]:
    return [virtual_outbound(), virtual_inbound(), outbound_http(), outbound_tcp()]


# -- CDS --------------------------------------------------------------------------------------------

BREAKERS = {
    "thresholds": [
        {
            "max_connections": MAX,
            "max_pending_requests": MAX,
            "max_requests": MAX,
            "max_retries": MAX,
            "track_remaining": True,
        }
    ]
}
USE_DOWNSTREAM = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}},
    }
}


def with_cluster_mx(msg: cluster_pb2.Cluster) -> cluster_pb2.Cluster:
    """cluster_builder.applyMetadataExchange: the upstream side of the TCP metadata exchange."""
    msg.filters.add(name="istio.metadata_exchange").typed_config.CopyFrom(tcp_mx())
    return msg


def outbound_eds(svc: str, port: int = 9080, subset: str = "") -> cluster_pb2.Cluster:
    name = f"outbound|{port}|{subset}|{host(svc)}"
    data = {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": ADS, "service_name": name},
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": BREAKERS,
        "common_lb_config": {"locality_weighted_lb_config": {}},
        "metadata": {
            "filter_metadata": {
                "istio": {
                    "services": [{"host": host(svc), "name": svc, "namespace": NS}],
                    "default_original_port": port,
                }
            }
        },
        "transport_socket_matches": [
            {
                "name": "tlsMode-istio",
                "match": {"tlsMode": "istio"},
                "transport_socket": upstream_tls(svc, port, subset),
            },
            {
                "name": "tlsMode-disabled",
                "match": {},
                "transport_socket": {
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {
                        "@type": T + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                    },
                },
            },
        ],
    }
    return with_cluster_mx(parse(cluster_pb2.Cluster, data))


def passthrough() -> cluster_pb2.Cluster:
    data = {
        "name": "PassthroughCluster",
        "type": "ORIGINAL_DST",
        "connect_timeout": "10s",
        "lb_policy": "CLUSTER_PROVIDED",
        "circuit_breakers": BREAKERS,
        "typed_extension_protocol_options": USE_DOWNSTREAM,
    }
    return with_cluster_mx(parse(cluster_pb2.Cluster, data))


def blackhole() -> cluster_pb2.Cluster:
    return parse(
        cluster_pb2.Cluster, {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"}
    )


def inbound_passthrough() -> cluster_pb2.Cluster:
    data = {
        "name": "InboundPassthroughCluster",
        "type": "ORIGINAL_DST",
        "connect_timeout": "10s",
        "lb_policy": "CLUSTER_PROVIDED",
        "circuit_breakers": BREAKERS,
        "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
        "typed_extension_protocol_options": USE_DOWNSTREAM,
    }
    return parse(cluster_pb2.Cluster, data)


def inbound(port: int = 9080) -> cluster_pb2.Cluster:
    """inbound|9080||: ORIGINAL_DST to the app, from 127.0.0.6 (iptables lets it by)."""
    data = {
        "name": f"inbound|{port}||",
        "type": "ORIGINAL_DST",
        "connect_timeout": "10s",
        "lb_policy": "CLUSTER_PROVIDED",
        "circuit_breakers": BREAKERS,
        # buildInboundCluster: cleanup disabled (~292 years); original_dst_lb_config's
        # upstream_port_override only when the Service's targetPort differs from its port.
        "cleanup_interval": "9223372035s",
        "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
        "metadata": {
            "filter_metadata": {
                "istio": {"services": [{"host": host("productpage"), "name": "productpage", "namespace": NS}]}
            }
        },
    }
    return parse(cluster_pb2.Cluster, data)


def cds() -> list[cluster_pb2.Cluster]:
    return [
        outbound_eds("details"),
        outbound_eds("reviews"),
        outbound_eds("reviews", subset="v1"),
        outbound_eds("reviews", subset="v2"),
        outbound_eds("ratings"),
        outbound_eds("mongodb", port=27017),
        passthrough(),
        blackhole(),
        inbound_passthrough(),
        inbound(),
    ]


# -- RDS --------------------------------------------------------------------------------------------


def _domains(svc: str, ip: str) -> list[str]:
    return [host(svc), svc, f"{svc}.{NS}.svc", f"{svc}.{NS}", ip]


def _action(cluster: str) -> dict[str, Any]:
    return {"cluster": cluster, "timeout": "0s", "retry_policy": RETRY_OUTBOUND, "max_grpc_timeout": "0s"}


def rds() -> list[route_pb2.RouteConfiguration]:
    """Route "9080" for productpage: details (no VirtualService), reviews (reviews-test-v2:
    end-user jason -> v2, else v1), ratings (ratings-test-delay: a 7 s delay for jason, per route in
    typed_per_filter_config), and istiod's allow_any catch-all."""
    fault = {
        "@type": T + "envoy.extensions.filters.http.fault.v3.HTTPFault",
        "delay": {"fixed_delay": "7s", "percentage": {"numerator": 100}},
    }
    data = {
        "name": "9080",
        "validate_clusters": False,
        "ignore_port_in_host_matching": True,
        "max_direct_response_body_size_bytes": 1048576,
        "virtual_hosts": [
            {
                "name": f"{host('details')}:9080",
                "domains": _domains("details", "10.96.10.1"),
                "include_request_attempt_count": True,
                "routes": [
                    {
                        "name": "default",
                        "match": {"prefix": "/"},
                        "decorator": {"operation": f"{host('details')}:9080/*"},
                        "route": _action(f"outbound|9080||{host('details')}"),
                    }
                ],
            },
            {
                "name": f"{host('reviews')}:9080",
                "domains": _domains("reviews", "10.96.10.2"),
                "include_request_attempt_count": True,
                "routes": [
                    {
                        "name": "reviews.default.svc.cluster.local-jason",
                        "match": {
                            "prefix": "/",
                            "case_sensitive": True,
                            "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}],
                        },
                        "decorator": {"operation": f"reviews.{NS}.svc.cluster.local:9080/*"},
                        "route": _action(f"outbound|9080|v2|{host('reviews')}"),
                        "metadata": {"filter_metadata": {"istio": {"config": VS_REVIEWS}}},
                    },
                    {
                        "name": "reviews.default.svc.cluster.local",
                        "match": {"prefix": "/", "case_sensitive": True},
                        "decorator": {"operation": f"reviews.{NS}.svc.cluster.local:9080/*"},
                        "route": _action(f"outbound|9080|v1|{host('reviews')}"),
                    },
                ],
            },
            {
                "name": f"{host('ratings')}:9080",
                "domains": _domains("ratings", "10.96.10.3"),
                "include_request_attempt_count": True,
                "routes": [
                    {
                        "name": "ratings-jason-delay",
                        "match": {
                            "prefix": "/",
                            "case_sensitive": True,
                            "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}],
                        },
                        "decorator": {"operation": f"ratings.{NS}.svc.cluster.local:9080/*"},
                        "route": _action(f"outbound|9080||{host('ratings')}"),
                        "typed_per_filter_config": {"envoy.filters.http.fault": fault},
                    },
                    {
                        "name": "default",
                        "match": {"prefix": "/"},
                        "decorator": {"operation": f"ratings.{NS}.svc.cluster.local:9080/*"},
                        "route": _action(f"outbound|9080||{host('ratings')}"),
                    },
                ],
            },
            {
                "name": "allow_any",
                "domains": ["*"],
                "include_request_attempt_count": True,
                "routes": [
                    {
                        "name": "allow_any",
                        "match": {"prefix": "/"},
                        "route": {
                            "cluster": "PassthroughCluster",
                            "timeout": "0s",
                            "max_stream_duration": NO_STREAM_LIMIT,
                        },
                    }
                ],
            },
        ],
    }
    return [parse(route_pb2.RouteConfiguration, data)]

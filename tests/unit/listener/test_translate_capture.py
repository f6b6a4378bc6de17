"""translate: the listener-level fields of capture mode (listener filters, filter_chain_match,
use_original_dst, transparent, bind_to_port) and the capture clusters (ORIGINAL_DST, BlackHoleCluster,
upstream_bind_config), with Envoy's error messages (checked against `envoy --mode validate`)."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format

from sidecar.model.cluster import DiscoveryType, LbPolicy, OriginalDstConfig
from sidecar.model.endpoint import SocketAddress
from sidecar.model.listener import FilterChainMatch, ListenerFilterKind, SourceType
from sidecar.translate.cds import translate_cluster
from sidecar.translate.common import preload_types
from sidecar.translate.errors import ConfigError
from sidecar.translate.lds import translate_listener

P = "static_resources.listeners[0]"
C = "static_resources.clusters[0]"
TCP = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "t"}
LF = "type.googleapis.com/envoy.extensions.filters.listener."


def chain(name: str, cluster: str = "c", **match: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "filters": [{"name": "tcp", "typed_config": {**TCP, "cluster": cluster}}]}
    if match:
        d["filter_chain_match"] = match
    return d


def listener(chains: list[dict[str, Any]], **fields: Any) -> listener_pb2.Listener:
    d = {
        "name": "virtualOutbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
        "filter_chains": chains,
        **fields,
    }
    preload_types(d)
    return json_format.ParseDict(d, listener_pb2.Listener())


def refused(pb: listener_pb2.Listener) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        translate_listener(pb, P)
    return e.value


def test_virtual_outbound_as_istio_sends_it() -> None:
    lst = translate_listener(
        listener(
            [chain("virtualOutbound-blackhole", "BlackHoleCluster", destination_port=15001)],
            default_filter_chain=chain("PassthroughFilterChain", "PassthroughCluster"),
            use_original_dst=True,
            listener_filters=[{"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": LF + "original_dst.v3.OriginalDst"}}],
            traffic_direction="OUTBOUND",
        ),
        P,
    )
    assert lst.use_original_dst and lst.restores_destination and not lst.single_chain
    assert [f.kind for f in lst.listener_filters] == [ListenerFilterKind.ORIGINAL_DST]
    assert lst.listener_filters_timeout == 15.0 and not lst.continue_on_listener_filters_timeout
    assert lst.chain_table is not None
    pick = lst.chain_table.select
    chosen = pick("10.0.0.1", 15001, "", "raw_buffer", (), "10.0.0.9", 1, False)
    assert chosen is not None and chosen.name == "virtualOutbound-blackhole"
    chosen = pick("10.0.0.1", 80, "", "raw_buffer", (), "10.0.0.9", 1, False)
    assert chosen is not None and chosen.name == "PassthroughFilterChain"


def test_listener_filters_and_match_fields() -> None:
    lst = translate_listener(
        listener(
            [
                chain(
                    "m",
                    destination_port=443,
                    prefix_ranges=[{"address_prefix": "10.1.2.3", "prefix_len": 8}, {"address_prefix": "fd00::"}],
                    server_names=["*.Example.COM"],
                    transport_protocol="tls",
                    application_protocols=["h2"],
                    source_type="SAME_IP_OR_LOOPBACK",
                    source_prefix_ranges=[{"address_prefix": "127.0.0.0", "prefix_len": 33}],
                    source_ports=[1, 2],
                ),
            ],
            listener_filters=[
                {"name": "tls", "typed_config": {"@type": LF + "tls_inspector.v3.TlsInspector", "max_client_hello_size": 4096}},
                {"name": "http", "typed_config": {"@type": LF + "http_inspector.v3.HttpInspector"}},
            ],
            listener_filters_timeout="0.5s",
            continue_on_listener_filters_timeout=True,
            transparent=True,
            freebind=True,
            bind_to_port=False,
        ),
        P,
    )
    assert lst.filter_chains[0].match == FilterChainMatch(
        destination_port=443,
        prefix_ranges=("10.0.0.0/8", "::/0"),
        server_names=("*.example.com",),
        transport_protocol="tls",
        application_protocols=("h2",),
        source_type=SourceType.SAME_IP_OR_LOOPBACK,
        source_prefix_ranges=("127.0.0.0/32",),
        source_ports=(1, 2),
    )
    tls, http = lst.listener_filters
    assert (tls.kind, tls.max_client_hello_size) == (ListenerFilterKind.TLS_INSPECTOR, 4096)
    assert http.kind is ListenerFilterKind.HTTP_INSPECTOR
    assert (lst.listener_filters_timeout, lst.continue_on_listener_filters_timeout) == (0.5, True)
    assert lst.transparent and lst.freebind and not lst.bind_to_port


MATCH = f"{P}.filter_chains[1].filter_chain_match"


@pytest.mark.parametrize(
    ("pb", "path", "reason"),
    [
        (
            listener([chain("one", destination_port=80, server_names=["a.com"]), chain("two", destination_port=80, server_names=["a.com"])]),
            MATCH,
            "error adding listener '0.0.0.0:15001': filter chain 'two' has the same matching rules defined as 'one'. "
            'duplicate matcher is: {"destination_port":80,"server_names":["a.com"]}',
        ),
        (
            listener([chain("one", server_names=["a.com", "b.com"]), chain("two", server_names=["b.com"])]),
            MATCH,
            "error adding listener '0.0.0.0:15001': multiple filter chains with overlapping matching rules are defined",
        ),
        (
            listener([chain("one", server_names=["a*.com"])]),
            f"{P}.filter_chains[0].filter_chain_match.server_names",
            "error adding listener '0.0.0.0:15001': partial wildcards are not supported in \"server_names\"",
        ),
        (
            listener([chain("one", address_suffix="x")]),
            f"{P}.filter_chains[0].filter_chain_match",
            "error adding listener '0.0.0.0:15001': filter chain 'one' contains unimplemented fields",
        ),
        (
            listener([chain("one", prefix_ranges=[{"address_prefix": "10.0.0.300", "prefix_len": 8}])]),
            f"{P}.filter_chains[0].filter_chain_match.prefix_ranges[0].address_prefix",
            "malformed IP address: 10.0.0.300",
        ),
        (
            listener([chain("one", destination_port=70000)]),
            f"{P}.filter_chains[0].filter_chain_match.destination_port",
            "value must be inside range [1, 65535]",
        ),
        (
            listener([chain("one")], listener_filters=[{"name": "tls", "typed_config": {"@type": LF + "tls_inspector.v3.TlsInspector", "max_client_hello_size": 20000}}]),
            f"{P}.listener_filters[0].typed_config.max_client_hello_size",
            "value must be inside range (255, 16384]",
        ),
        (
            listener([chain("one")], listener_filters=[{"name": "pp", "typed_config": {"@type": LF + "proxy_protocol.v3.ProxyProtocol"}}]),
            f"{P}.listener_filters[0].typed_config",
            "listener filter 'pp' of type 'envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol' "
            "is not supported by sidecar yet",
        ),
    ],
)
def test_listener_refusals(pb: listener_pb2.Listener, path: str, reason: str) -> None:
    e = refused(pb)
    assert (e.path, e.reason) == (path, reason)


# -- clusters -----------------------------------------------------------------------------------------
def cluster(**fields: Any) -> cluster_pb2.Cluster:
    return json_format.ParseDict(fields, cluster_pb2.Cluster())


def test_istio_passthrough_clusters() -> None:
    out = translate_cluster(cluster(name="PassthroughCluster", type="ORIGINAL_DST", lb_policy="CLUSTER_PROVIDED", connect_timeout="10s"), C)
    assert (out.type, out.lb_policy, out.endpoints) == (DiscoveryType.ORIGINAL_DST, LbPolicy.CLUSTER_PROVIDED, ())
    assert out.original_dst == OriginalDstConfig()
    inbound = translate_cluster(
        cluster(
            name="InboundPassthroughCluster",
            type="ORIGINAL_DST",
            lb_policy="CLUSTER_PROVIDED",
            upstream_bind_config={"source_address": {"address": "127.0.0.6", "port_value": 0}},
            original_dst_lb_config={"use_http_header": True, "http_header_name": "X-Dst", "upstream_port_override": 81},
            cleanup_interval="60s",
        ),
        C,
    )
    assert inbound.upstream_bind_address == SocketAddress("127.0.0.6", 0)
    assert inbound.original_dst == OriginalDstConfig(True, b"x-dst", 81, 60.0)
    blackhole = translate_cluster(cluster(name="BlackHoleCluster", type="STATIC", connect_timeout="10s"), C)
    assert blackhole.endpoints == () and blackhole.original_dst is None


@pytest.mark.parametrize(
    ("fields", "path", "reason"),
    [
        (
            {"type": "ORIGINAL_DST", "lb_policy": "ROUND_ROBIN"},
            f"{C}.lb_policy",
            "cluster: LB policy ROUND_ROBIN is not valid for Cluster type ORIGINAL_DST. Only 'CLUSTER_PROVIDED' "
            "is allowed with cluster type 'ORIGINAL_DST'",
        ),
        (
            {"type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "load_assignment": {"cluster_name": "p"}},
            f"{C}.load_assignment",
            "ORIGINAL_DST clusters must have no load assignment configured",
        ),
        (
            {"type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "original_dst_lb_config": {"http_header_name": "x"}},
            f"{C}.original_dst_lb_config",
            "ORIGINAL_DST cluster: invalid config http_header_name=x and use_http_header is false. "
            "Set use_http_header to true if http_header_name is desired.",
        ),
        (
            {"type": "STATIC", "lb_policy": "CLUSTER_PROVIDED"},
            f"{C}.lb_policy",
            "cluster manager: cluster provided LB specified but cluster 'p' did not provide one. "
            "Check cluster documentation.",
        ),
        (
            {"type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "upstream_bind_config": {"source_address": {"address": "nothost"}}},
            f"{C}.upstream_bind_config.source_address.address",
            "malformed IP address: nothost",
        ),
    ],
)
def test_cluster_refusals(fields: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        translate_cluster(cluster(name="p", **fields), C)
    assert (e.value.path, e.value.reason) == (path, reason)

"""translate_listener: addresses, the one filter chain, tcp_proxy and the HTTP connection manager with
Envoy's defaults, and refusals with their exact field paths."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from sidecar.model.endpoint import SocketAddress
from sidecar.model.listener import (
    HeadersWithUnderscoresAction,
    HttpConnectionManager,
    ServerHeaderTransformation,
    TcpProxy,
    WeightedCluster,
)
from sidecar.translate.common import preload_types
from sidecar.translate.errors import ConfigError
from sidecar.translate.lds import translate_listener

P = "static_resources.listeners[0]"
F = f"{P}.filter_chains[0].filters[0].typed_config"
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
TCP_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def listener_pb(data: str | dict[str, Any]) -> listener_pb2.Listener:
    d = yaml.safe_load(data) if isinstance(data, str) else data
    preload_types(d)
    return json_format.ParseDict(d, listener_pb2.Listener())


def hcm(**fields: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress_http",
        "http_filters": [ROUTER],
        "route_config": {
            "name": "local_route",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                }
            ],
        },
    }
    d.update(fields)
    return d


def listener(typed_config: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "listener_0",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": typed_config or hcm(),
                    }
                ]
            }
        ],
    }
    d.update(fields)
    return d


def refused(data: dict[str, Any], clusters: tuple[str, ...] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        translate_listener(listener_pb(data), P, clusters=clusters)
    return e.value


def the_hcm(data: dict[str, Any]) -> HttpConnectionManager:
    f = translate_listener(listener_pb(data), P).filter_chains[0].filters[0]
    assert isinstance(f, HttpConnectionManager)
    return f


def test_hcm_listener_with_envoys_defaults() -> None:
    lst = translate_listener(listener_pb(listener()), P)
    assert lst.name == "listener_0"
    assert lst.address == SocketAddress("0.0.0.0", 10000)
    assert lst.bind_to_port is True and lst.use_original_dst is False
    assert lst.per_connection_buffer_limit_bytes == 1024 * 1024
    assert lst.default_filter_chain is None
    assert lst.stat_prefix == ""
    (chain,) = lst.filter_chains
    (h,) = chain.filters
    assert isinstance(h, HttpConnectionManager)
    assert h.stat_prefix == "ingress_http"
    assert h.route_config.name == "local_route"
    (router,) = h.http_filters
    assert router.name == "envoy.filters.http.router"
    assert router.type_url == "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    assert isinstance(router.config, router_pb2.Router) and router.disabled is False
    assert h.codec_type == "AUTO"
    assert h.server_name == "envoy"
    assert h.server_header_transformation is ServerHeaderTransformation.OVERWRITE
    assert h.generate_request_id is True
    assert h.use_remote_address is False and h.xff_num_trusted_hops == 0 and h.skip_xff_append is False
    assert (h.max_request_headers_kb, h.max_headers_count) == (60, 100)
    assert h.headers_with_underscores_action is HeadersWithUnderscoresAction.ALLOW
    assert (h.idle_timeout, h.stream_idle_timeout, h.request_timeout, h.request_headers_timeout) == (
        3600.0,
        300.0,
        0.0,
        0.0,
    )
    assert (h.max_stream_duration, h.drain_timeout, h.delayed_close_timeout) == (0.0, 5.0, 1.0)
    assert (h.accept_http_10, h.default_host_for_http_10, h.normalize_path, h.merge_slashes) == (
        False,
        "",
        False,
        False,
    )


def test_hcm_every_supported_field() -> None:
    h = the_hcm(
        listener(
            hcm(
                codec_type="HTTP1",
                server_name="my-proxy",
                server_header_transformation="PASS_THROUGH",
                generate_request_id=False,
                preserve_external_request_id=True,
                always_set_request_id_in_response=True,
                use_remote_address=True,
                skip_xff_append=True,
                max_request_headers_kb=96,
                common_http_protocol_options={
                    "idle_timeout": "120s",
                    "max_headers_count": 50,
                    "headers_with_underscores_action": "REJECT_REQUEST",
                    "max_stream_duration": "30s",
                },
                stream_idle_timeout="0s",
                request_timeout="10s",
                request_headers_timeout="2s",
                drain_timeout="0.5s",
                delayed_close_timeout="0s",
                http_protocol_options={"accept_http_10": True, "default_host_for_http_10": "example.com"},
                path_with_escaped_slashes_action="KEEP_UNCHANGED",
            )
        )
    )
    assert h.codec_type == "HTTP1"
    assert h.server_name == "my-proxy"
    assert h.server_header_transformation is ServerHeaderTransformation.PASS_THROUGH
    assert h.generate_request_id is False
    assert h.preserve_external_request_id and h.always_set_request_id_in_response
    assert (h.use_remote_address, h.skip_xff_append) == (True, True)
    assert (h.max_request_headers_kb, h.max_headers_count) == (96, 50)
    assert h.headers_with_underscores_action is HeadersWithUnderscoresAction.REJECT_REQUEST
    assert (h.idle_timeout, h.max_stream_duration) == (120.0, 30.0)
    assert (h.stream_idle_timeout, h.request_timeout, h.request_headers_timeout) == (0.0, 10.0, 2.0)
    assert (h.drain_timeout, h.delayed_close_timeout) == (0.5, 0.0)
    assert (h.accept_http_10, h.default_host_for_http_10) == (True, "example.com")



@pytest.mark.parametrize(
    ("field", "value"),
    [("xff_num_trusted_hops", 2)],
)
def test_hcm_fields_not_enforced_yet_are_refused(field: str, value: object) -> None:
    e = refused(listener(hcm(**{field: value})))
    assert e.path.endswith(f".{field}")


def test_listener_fields() -> None:
    lst = translate_listener(
        listener_pb(
            listener(
                stat_prefix="inbound",
                bind_to_port=False,
                use_original_dst=True,
                per_connection_buffer_limit_bytes=32768,
                tcp_backlog_size=4096,
                traffic_direction="INBOUND",
                enable_reuse_port=True,
                metadata={"filter_metadata": {"x": {"y": "z"}}},
            )
        ),
        P,
    )
    assert (lst.stat_prefix, lst.bind_to_port, lst.use_original_dst) == ("inbound", False, True)
    assert (lst.per_connection_buffer_limit_bytes, lst.backlog) == (32768, 4096)


def test_ipv6_and_pipe_addresses() -> None:
    v6 = translate_listener(
        listener_pb(
            listener(address={"socket_address": {"address": "::", "port_value": 80, "ipv4_compat": True}})
        ),
        P,
    )
    assert v6.address == SocketAddress("::", 80, ipv4_compat=True)
    pipe = translate_listener(listener_pb(listener(address={"pipe": {"path": "@abstract"}})), P)
    assert pipe.address == SocketAddress("", 0, pipe="@abstract")


def test_tcp_proxy_listener() -> None:
    lst = translate_listener(
        listener_pb(
            """
name: tcp
address: {socket_address: {address: 127.0.0.1, port_value: 9000}}
filter_chains:
- name: only
  filter_chain_match: {}
  filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: tcp
      weighted_clusters:
        clusters: [{name: a, weight: 3}, {name: b, weight: 1}]
      idle_timeout: 0s
      max_connect_attempts: 3
"""
        ),
        P,
        clusters=(),
    )
    assert lst.filter_chains[0].name == "only"
    assert lst.filter_chains[0].filters == (
        TcpProxy(
            stat_prefix="tcp",
            weighted_clusters=(WeightedCluster("a", 3), WeightedCluster("b", 1)),
            idle_timeout=0.0,
            max_connect_attempts=3,
        ),
    )


def test_tcp_proxy_defaults_and_unknown_cluster_is_accepted() -> None:
    # Envoy accepts a tcp_proxy naming a cluster that does not exist (closed at connect time).
    data = listener({"@type": TCP_TYPE, "stat_prefix": "t", "cluster": "nope"})
    (f,) = translate_listener(listener_pb(data), P, clusters=("other",)).filter_chains[0].filters
    assert f == TcpProxy(stat_prefix="t", cluster="nope", idle_timeout=3600.0, max_connect_attempts=1)


def test_typed_struct_wrapped_filter() -> None:
    wrapped = {
        "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
        "type_url": TCP_TYPE,
        "value": {"stat_prefix": "t", "cluster": "c"},
    }
    (f,) = translate_listener(listener_pb(listener(wrapped)), P).filter_chains[0].filters
    assert f == TcpProxy(stat_prefix="t", cluster="c")


def test_default_filter_chain_only_and_empty_filter_list() -> None:
    data = listener()
    data["default_filter_chain"] = data.pop("filter_chains")[0]
    lst = translate_listener(listener_pb(data), P)
    assert lst.filter_chains == () and lst.default_filter_chain is not None
    assert lst.chain() is lst.default_filter_chain
    # Envoy accepts a chain with no filters: it closes each connection.
    empty = translate_listener(listener_pb(listener(filter_chains=[{}])), P)
    assert empty.filter_chains[0].filters == ()


def test_nameless_listener_gets_a_stable_uuid() -> None:
    data = listener()
    del data["name"]
    a = translate_listener(listener_pb(data), P).name
    b = translate_listener(listener_pb(data), P).name
    data["stat_prefix"] = "other"
    c = translate_listener(listener_pb(data), P).name
    assert a == b != c
    assert len(a) == 36 and a[14] == "4"


def with_unknown_http_filter(optional: bool) -> listener_pb2.Listener:
    """A listener whose HCM starts with a filter type this build does not know and that is not
    Istio's (Istio's are skipped: tests/unit/test_istio_config.py), as xDS delivers it, in binary."""
    pb = listener_pb(listener())
    any_hcm = pb.filter_chains[0].filters[0].typed_config
    h = hcm_pb2.HttpConnectionManager()
    any_hcm.Unpack(h)
    stats = h.http_filters.add(name="acme.stats", is_optional=optional)
    stats.typed_config.type_url = "type.googleapis.com/acme.stats.PluginConfig"
    stats.typed_config.value = b"\x0a\x00"
    h.http_filters.insert(0, stats)
    del h.http_filters[-1]
    any_hcm.Pack(h)
    return pb


def test_optional_unsupported_http_filter_is_skipped() -> None:
    (h,) = translate_listener(with_unknown_http_filter(optional=True), P).filter_chains[0].filters
    assert isinstance(h, HttpConnectionManager)
    assert [f.name for f in h.http_filters] == ["envoy.filters.http.router"]


def test_unknown_http_filter_type_is_refused_with_its_url() -> None:
    with pytest.raises(ConfigError) as e:
        translate_listener(with_unknown_http_filter(optional=False), P)
    assert e.value.path == f"{F}.http_filters[0].typed_config"
    assert e.value.reason == "unknown type URL 'type.googleapis.com/acme.stats.PluginConfig'"


def test_route_clusters_are_validated_against_known_clusters() -> None:
    e = refused(listener(), clusters=("other",))
    assert e.path == f"{F}.route_config.virtual_hosts[0].routes[0].route.cluster"
    assert e.reason == "route: unknown cluster 'backend'"
    assert translate_listener(listener_pb(listener()), P, clusters=("backend",)).name == "listener_0"
    # validate_clusters: false turns the check off (503 at request time instead).
    off = hcm()
    off["route_config"]["validate_clusters"] = False
    assert translate_listener(listener_pb(listener(off)), P, clusters=()).name == "listener_0"


def test_weighted_and_mirror_clusters_are_validated() -> None:
    weighted = hcm()
    weighted["route_config"]["virtual_hosts"][0]["routes"][0]["route"] = {
        "weighted_clusters": {"clusters": [{"name": "backend", "weight": 1}, {"name": "zz", "weight": 1}]}
    }
    e = refused(listener(weighted), clusters=("backend",))
    assert e.path == f"{F}.route_config.virtual_hosts[0].routes[0].route.weighted_clusters.clusters[1].name"
    assert e.reason == "route: unknown weighted cluster 'zz'"
    mirror = hcm()
    mirror["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["request_mirror_policies"] = [
        {"cluster": "shadow"}
    ]
    with pytest.raises(ConfigError) as ei:
        _check_mirror(mirror)
    assert ei.value.reason == "route: unknown shadow cluster 'shadow'"


def _check_mirror(cfg: dict[str, Any]) -> None:
    from envoy.config.route.v3 import route_pb2

    from sidecar.translate.lds import _check_route_clusters

    rc = json_format.ParseDict(cfg["route_config"], route_pb2.RouteConfiguration())
    _check_route_clusters(rc, "rc", ("backend",))


TP = f"{P}.filter_chains[0].filters[0]"


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        (
            listener(listener_filters=[{"name": "envoy.filters.listener.tls_inspector"}]),
            f"{P}.listener_filters[0].typed_config",
            "Didn't find a registered implementation for 'envoy.filters.listener.tls_inspector' with type URL: ''",
        ),
        (
            listener(address={"socket_address": {"address": "localhost", "port_value": 1}}),
            f"{P}.address.socket_address.address",
            "malformed IP address: localhost",
        ),
        (
            listener(address={"socket_address": {"address": "0.0.0.0", "port_value": 1, "protocol": "UDP"}}),
            f"{P}.address.socket_address.protocol",
            "only TCP is supported by sidecar yet",
        ),
        (
            listener(
                address={"socket_address": {"address": "0.0.0.0", "port_value": 1, "resolver_name": "r"}}
            ),
            f"{P}.address.socket_address.resolver_name",
            "field is not supported by sidecar yet",
        ),
        (
            listener(address={"pipe": {"path": "/tmp/s", "mode": 0o600}}),
            f"{P}.address.pipe.mode",
            "field is not supported by sidecar yet",
        ),
        (
            listener(filter_chains=[]),
            f"{P}.filter_chains",
            "error adding listener '0.0.0.0:10000': no filter chains specified",
        ),
        (
            listener(filter_chains=[{"filters": []}, {"filters": []}]),
            f"{P}.filter_chains[1].filter_chain_match",
            "error adding listener '0.0.0.0:10000': filter chain '' has the same matching rules defined as ''. "
            "duplicate matcher is: {}",
        ),
        (
            listener(filter_chains=[{"filter_chain_match": {"server_names": ["a*.com"]}}]),
            f"{P}.filter_chains[0].filter_chain_match.server_names",
            "error adding listener '0.0.0.0:10000': partial wildcards are not supported in \"server_names\"",
        ),
        (
            listener(
                filter_chains=[
                    {
                        "transport_socket": {
                            "name": "tls",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
                            },
                        }
                    }
                ]
            ),
            f"{P}.filter_chains[0].transport_socket.typed_config.common_tls_context",
            "No TLS certificates found for server context",
        ),
        (
            listener(access_log=[{"name": "x"}]),
            f"{P}.access_log[0].typed_config",
            "Didn't find a registered implementation for 'x'",
        ),
        (listener(enable_mptcp=True), f"{P}.enable_mptcp", "field is not supported by sidecar yet"),
        (
            listener({"@type": "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"}),
            f"{TP}.typed_config",
            "network filter 'envoy.filters.network.http_connection_manager' of type 'envoy.extensions.filters.network.echo.v3.Echo' is not supported by sidecar yet",
        ),
        (
            listener(filter_chains=[{"filters": [{"name": "envoy.filters.network.tcp_proxy"}]}]),
            f"{TP}.typed_config",
            "Didn't find a registered implementation for 'envoy.filters.network.tcp_proxy' with type URL: ''",
        ),
        (
            listener({"@type": TCP_TYPE, "stat_prefix": "t"}),
            f"{TP}.typed_config",
            'field: "cluster_specifier", reason: is required',
        ),
        (
            listener({"@type": TCP_TYPE, "cluster": "c"}),
            f"{TP}.typed_config.stat_prefix",
            "value length must be at least 1 characters",
        ),
        (
            # (access logs are translated by translate/access_log.py: one without a logger is refused)
            listener({"@type": TCP_TYPE, "stat_prefix": "t", "cluster": "c", "access_log": [{"name": "x"}]}),
            f"{TP}.typed_config.access_log[0].typed_config",
            "Didn't find a registered implementation for 'x'",
        ),
        (
            listener(
                {"@type": TCP_TYPE, "stat_prefix": "t", "weighted_clusters": {"clusters": [{"name": "a"}]}}
            ),
            f"{TP}.typed_config.weighted_clusters.clusters[0].weight",
            "value must be greater than or equal to 1",
        ),
        (
            listener(hcm(codec_type="HTTP2")),
            f"{F}.codec_type",
            "HTTP2 is not supported by sidecar yet (AUTO and HTTP1 are)",
        ),
        (listener(hcm(stat_prefix="")), f"{F}.stat_prefix", "value length must be at least 1 characters"),
        (
            listener(hcm(max_request_headers_kb=9000)),
            f"{F}.max_request_headers_kb",
            "value must be inside range (0, 8192]",
        ),
        (
            listener(hcm(common_http_protocol_options={"max_headers_count": 0})),
            f"{F}.common_http_protocol_options.max_headers_count",
            "value must be greater than or equal to 1",
        ),
        (
            listener(hcm(common_http_protocol_options={"max_connection_duration": "1s"})),
            f"{F}.common_http_protocol_options.max_connection_duration",
            "field is not supported by sidecar yet",
        ),
        (
            listener(hcm(http_protocol_options={"header_key_format": {"proper_case_words": {}}})),
            f"{F}.http_protocol_options.header_key_format",
            "field is not supported by sidecar yet",
        ),
        (
            listener(hcm(access_log=[{"name": "envoy.access_loggers.stdout"}])),
            f"{F}.access_log[0].typed_config",
            "Didn't find a registered implementation for 'envoy.access_loggers.stdout'",
        ),
        (
            listener(hcm(tracing={"random_sampling": {"value": 101}})),
            f"{F}.tracing.random_sampling.value",
            "value must be inside range [0, 100]",
        ),
        (
            listener(hcm(upgrade_configs=[{"upgrade_type": "CONNECT"}])),
            f"{F}.upgrade_configs[0].upgrade_type",
            "CONNECT is not supported by sidecar yet",
        ),
        (
            listener(hcm(path_with_escaped_slashes_action="UNESCAPE_AND_REDIRECT")),
            f"{F}.path_with_escaped_slashes_action",
            "UNESCAPE_AND_REDIRECT is not supported by sidecar yet",
        ),
        (
            listener(hcm(http_filters=[])),
            f"{F}.http_filters",
            "no http filters: the router filter (envoy.filters.http.router) must be last",
        ),
        (
            listener(
                hcm(
                    http_filters=[
                        {
                            "name": "grpc_web",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
                            },
                        },
                        ROUTER,
                    ]
                )
            ),
            f"{F}.http_filters[0].typed_config",
            "http filter 'grpc_web' of type 'envoy.extensions.filters.http.grpc_web.v3.GrpcWeb' "
            "is not supported by sidecar yet",
        ),
        (
            listener(hcm(http_filters=[ROUTER, ROUTER])),
            f"{F}.http_filters[0]",
            "Error: terminal filter named envoy.filters.http.router of type envoy.filters.http.router must be the last filter in a http filter chain.",
        ),
        (
            listener(hcm(http_filters=[{**ROUTER, "disabled": True}])),
            f"{F}.http_filters[0].disabled",
            "Error: the last (terminal) filter (envoy.filters.http.router) in the chain cannot be disabled by default.",
        ),
        (
            listener(
                hcm(
                    http_filters=[
                        {
                            "name": "r",
                            "typed_config": {**ROUTER["typed_config"], "suppress_envoy_headers": True},
                        }
                    ]
                )
            ),
            f"{F}.http_filters[0].typed_config.suppress_envoy_headers",
            "field is not supported by sidecar yet",
        ),
    ],
)
def test_refusals(data: dict[str, Any], path: str, reason: str) -> None:
    e = refused(data)
    assert (e.path, e.reason) == (path, reason)


def test_rds_names_its_route_config_and_missing_route_config_is_refused() -> None:
    rds = hcm(rds={"route_config_name": "r", "config_source": {"ads": {}}})
    del rds["route_config"]
    got = translate_listener(listener_pb(listener(rds)), P)
    h = got.filter_chains[0].filters[0]
    assert isinstance(h, HttpConnectionManager)
    assert h.rds_name == "r" and h.route_config.name == "r" and h.route_config.virtual_hosts == ()
    nameless = hcm(rds={"config_source": {"ads": {}}})
    del nameless["route_config"]
    e = refused(listener(nameless))
    assert (e.path, e.reason) == (f"{F}.rds.route_config_name", "value length must be at least 1 characters")
    none = hcm()
    del none["route_config"]
    e = refused(listener(none))
    assert (e.path, e.reason) == (F, 'field: "route_specifier", reason: is required')


def test_missing_address() -> None:
    data = listener()
    del data["address"]
    e = refused(data)
    assert (e.path, e.reason) == (
        f"{P}.address",
        "error adding listener named 'listener_0': address is necessary",
    )


def test_ignored_router_fields() -> None:
    router = {
        "name": "r",
        "typed_config": {**ROUTER["typed_config"], "dynamic_stats": False, "start_child_span": True},
    }
    assert the_hcm(listener(hcm(http_filters=[router]))).http_filters[0].name == "r"


def test_config_hash_tracks_the_listener() -> None:
    a = translate_listener(listener_pb(listener()), P)
    b = translate_listener(listener_pb(listener(stat_prefix="x")), P)
    assert a.config_hash != b.config_hash
    assert a.config_hash == translate_listener(listener_pb(listener()), P).config_hash


def test_route_config_errors_carry_the_listener_path() -> None:
    bad = hcm()
    bad["route_config"]["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": "("}}
    e = refused(listener(bad))
    assert e.path == f"{F}.route_config.virtual_hosts[0].routes[0].match.safe_regex.regex"


def test_optional_known_but_unsupported_http_filter_is_skipped() -> None:
    cors = {
        "name": "envoy.filters.http.cors",
        "is_optional": True,
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
    }
    assert [f.name for f in the_hcm(listener(hcm(http_filters=[cors, ROUTER]))).http_filters] == [
        "envoy.filters.http.router"
    ]

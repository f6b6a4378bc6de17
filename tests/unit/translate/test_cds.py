"""translate_cluster: Envoy's defaults, the three discovery types we serve, protocol options from both
places, and refusals with their exact field paths."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from sidecar.model.cluster import DiscoveryType, DnsLookupFamily, LbPolicy
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.translate.cds import translate_cluster
from sidecar.translate.common import preload_types
from sidecar.translate.errors import ConfigError
from sidecar.translate.rds import translate_route_configuration

P = "static_resources.clusters[0]"
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def cluster_pb(text: str | dict[str, Any]) -> cluster_pb2.Cluster:
    data = yaml.safe_load(text) if isinstance(text, str) else text
    preload_types(data)
    return json_format.ParseDict(data, cluster_pb2.Cluster())


def refused(text: str | dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        translate_cluster(cluster_pb(text), P)
    return e.value


STATIC = """
name: backend
type: STATIC
load_assignment:
  cluster_name: backend
  endpoints:
  - lb_endpoints:
    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}
"""


def static_with(**extra: Any) -> dict[str, Any]:
    data = yaml.safe_load(STATIC)
    data.update(extra)
    return data


def test_static_cluster_defaults() -> None:
    c = translate_cluster(cluster_pb(STATIC), P)
    assert c.name == "backend"
    assert c.type is DiscoveryType.STATIC
    assert c.connect_timeout == 5.0
    assert c.lb_policy is LbPolicy.ROUND_ROBIN
    assert c.endpoints == (Endpoint(SocketAddress("127.0.0.1", 8080)),)
    assert c.dns_refresh_rate == 5.0
    assert c.dns_lookup_family is DnsLookupFamily.AUTO
    assert c.respect_dns_ttl is False
    assert c.max_requests_per_connection == 0
    assert c.idle_timeout == 3600.0
    assert c.per_connection_buffer_limit_bytes == 1024 * 1024


def test_static_cluster_every_endpoint_field() -> None:
    c = translate_cluster(
        cluster_pb(
            """
name: svc
type: STATIC
connect_timeout: 0.25s
lb_policy: RANDOM
per_connection_buffer_limit_bytes: 32768
load_assignment:
  cluster_name: other-name-is-fine
  endpoints:
  - locality: {region: r1, zone: z1}
    load_balancing_weight: 3
    lb_endpoints:
    - endpoint:
        address: {socket_address: {address: 10.0.0.1, port_value: 80}}
        hostname: a.example
      load_balancing_weight: 5
      health_status: HEALTHY
    - endpoint: {address: {socket_address: {address: "::1", port_value: 81}}}
      health_status: DRAINING
      metadata: {filter_metadata: {istio: {workload: w}}}
  - priority: 1
    lb_endpoints:
    - endpoint: {address: {pipe: {path: /run/backend.sock}}}
"""
        ),
        P,
    )
    assert c.connect_timeout == 0.25
    assert c.lb_policy is LbPolicy.RANDOM
    assert c.per_connection_buffer_limit_bytes == 32768
    assert c.endpoints == (
        Endpoint(
            SocketAddress("10.0.0.1", 80),
            weight=5,
            health_status="HEALTHY",
            hostname="a.example",
            locality=("r1", "z1", ""),
            locality_weight=3,
        ),
        Endpoint(
            SocketAddress("::1", 81), weight=1, health_status="DRAINING", locality=("r1", "z1", ""), locality_weight=3
        ),
        Endpoint(SocketAddress("", 0, pipe="/run/backend.sock"), priority=1),
    )
    assert not c.endpoints[1].healthy


def test_strict_dns_cluster() -> None:
    c = translate_cluster(
        cluster_pb(
            """
name: zipkin
type: STRICT_DNS
respect_dns_ttl: true
dns_lookup_family: V4_ONLY
dns_refresh_rate: 30s
connect_timeout: 1s
load_assignment:
  cluster_name: zipkin
  endpoints:
  - lb_endpoints:
    - endpoint: {address: {socket_address: {address: zipkin.istio-system, port_value: 9411}}}
    - endpoint: {address: {socket_address: {address: zipkin2.istio-system, port_value: 9411}}}
"""
        ),
        P,
    )
    assert c.type is DiscoveryType.STRICT_DNS
    assert c.respect_dns_ttl is True
    assert c.dns_lookup_family is DnsLookupFamily.V4_ONLY
    assert c.dns_refresh_rate == 30.0
    assert [e.address for e in c.endpoints] == [
        SocketAddress("zipkin.istio-system", 9411),
        SocketAddress("zipkin2.istio-system", 9411),
    ]


def test_logical_dns_needs_exactly_one_endpoint() -> None:
    one = """
name: www
type: LOGICAL_DNS
load_assignment:
  endpoints:
  - lb_endpoints:
    - endpoint: {address: {socket_address: {address: www.envoyproxy.io, port_value: 443}}}
"""
    assert translate_cluster(cluster_pb(one), P).type is DiscoveryType.LOGICAL_DNS
    two = yaml.safe_load(one)
    two["load_assignment"]["endpoints"][0]["lb_endpoints"] *= 2
    e = refused(two)
    assert e.path == f"{P}.load_assignment"
    assert e.reason == "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint"


def test_static_hostname_is_refused_with_envoys_message() -> None:
    data = static_with()
    data["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
        "address"
    ] = "localhost"
    e = refused(data)
    assert (
        e.path == f"{P}.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"
    )
    assert e.reason == (
        "malformed IP address: localhost. Consider setting resolver_name or setting cluster type to "
        "'STRICT_DNS' or 'LOGICAL_DNS'"
    )


def test_dns_cluster_with_pipe_is_refused() -> None:
    data = static_with(type="STRICT_DNS")
    data["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = {
        "pipe": {"path": "/x"}
    }
    assert refused(data).path == f"{P}.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address"


def test_static_cluster_without_load_assignment_is_empty() -> None:
    assert translate_cluster(cluster_pb("name: empty"), P).endpoints == ()


@pytest.mark.parametrize(
    ("extra", "path", "reason"),
    [
        ({"type": "EDS"}, f"{P}.eds_cluster_config.eds_config", "value is required"),
        (
            {"type": "ORIGINAL_DST"},
            f"{P}.lb_policy",
            "cluster: LB policy ROUND_ROBIN is not valid for Cluster type ORIGINAL_DST. "
            "Only 'CLUSTER_PROVIDED' is allowed with cluster type 'ORIGINAL_DST'",
        ),
        (
            {"lb_policy": "CLUSTER_PROVIDED"},
            f"{P}.lb_policy",
            "cluster manager: cluster provided LB specified but cluster 'backend' did not provide one. "
            "Check cluster documentation.",
        ),
        ({"lb_policy": 77}, f"{P}.lb_policy", "value must be one of the defined enum values, got 77"),
        ({"connect_timeout": "0s"}, f"{P}.connect_timeout", "value must be greater than 0s"),
        ({"dns_refresh_rate": "0s"}, f"{P}.dns_refresh_rate", "value must be greater than 1ms"),
        ({"name": ""}, f"{P}.name", "value length must be at least 1 characters"),
        (
            {"circuit_breakers": {"per_host_thresholds": [{"max_connections": 1}]}},
            f"{P}.circuit_breakers.per_host_thresholds",
            "field is not supported by sidecar yet",
        ),
        (
            {"outlier_detection": {"max_ejection_time_jitter": "1s"}},
            f"{P}.outlier_detection.max_ejection_time_jitter",
            "field is not supported by sidecar yet",
        ),
        (
            {"outlier_detection": {"enforcing_local_origin_success_rate": 5}},
            f"{P}.outlier_detection.enforcing_local_origin_success_rate",
            "field is not supported by sidecar yet",
        ),
        (
            {"outlier_detection": {"monitors": [{"name": "m"}]}},
            f"{P}.outlier_detection.monitors",
            "field is not supported by sidecar yet",
        ),
        (
            {"outlier_detection": {"max_ejection_percent": 101}},
            f"{P}.outlier_detection.max_ejection_percent",
            "value must be less than or equal to 100",
        ),
        (
            {"outlier_detection": {"interval": "0s"}},
            f"{P}.outlier_detection.interval",
            "value must be greater than 0s",
        ),
        (
            {"outlier_detection": {"base_ejection_time": "10s", "max_ejection_time": "5s"}},
            f"{P}.outlier_detection",
            "outlier detector's max_ejection_time cannot be smaller than base_ejection_time",
        ),
        (
            {
                "health_checks": [
                    {
                        "timeout": "1s",
                        "interval": "1s",
                        "unhealthy_threshold": 1,
                        "healthy_threshold": 1,
                        "grpc_health_check": {},
                    }
                ]
            },
            f"{P}.health_checks[0].grpc_health_check",
            "grpc_health_check is not supported by sidecar yet (HTTP and TCP checks are)",
        ),
        (
            {
                "transport_socket": {
                    "name": "tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "enforce_rsa_key_usage": True,
                    },
                }
            },
            f"{P}.transport_socket.typed_config.enforce_rsa_key_usage",
            "field is not supported by sidecar yet",
        ),
        (
            {"common_lb_config": {"consistent_hashing_lb_config": {"use_hostname_for_hashing": True}}},
            f"{P}.common_lb_config.consistent_hashing_lb_config",
            "field is not supported by sidecar yet",
        ),
        (
            {"protocol_selection": "USE_DOWNSTREAM_PROTOCOL"},
            f"{P}.protocol_selection",
            "USE_DOWNSTREAM_PROTOCOL is not supported by sidecar yet",
        ),
        (
            {"http_protocol_options": {"accept_http_10": True}},
            f"{P}.http_protocol_options.accept_http_10",
            "field is not supported by sidecar yet",
        ),
        (
            {"common_http_protocol_options": {"max_connection_duration": "1s"}},
            f"{P}.common_http_protocol_options.max_connection_duration",
            "field is not supported by sidecar yet",
        ),
    ],
)
def test_refusals(extra: dict[str, Any], path: str, reason: str) -> None:
    e = refused(static_with(**extra))
    assert (e.path, e.reason) == (path, reason)


def test_endpoint_field_refusals() -> None:
    data = static_with()
    lbe = data["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    lbe["load_balancing_weight"] = 0
    e = refused(data)
    assert e.path == f"{P}.load_assignment.endpoints[0].lb_endpoints[0].load_balancing_weight"
    assert e.reason == "value must be greater than or equal to 1"
    del lbe["load_balancing_weight"]
    lbe["endpoint"]["address"]["socket_address"]["protocol"] = "UDP"
    e = refused(data)
    assert (
        e.path == f"{P}.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.protocol"
    )


def test_ignored_fields_are_accepted() -> None:
    c = translate_cluster(
        cluster_pb(
            static_with(
                alt_stat_name="alt",
                metadata={"filter_metadata": {"istio": {"config": "x"}}},
                upstream_connection_options={"tcp_keepalive": {"keepalive_time": 300}},
                common_lb_config={},
            )
        ),
        P,
    )
    assert c.name == "backend"


def typed_hpo(**fields: Any) -> dict[str, Any]:
    return {HPO: {"@type": f"type.googleapis.com/{HPO}", **fields}}


H1 = {"explicit_http_config": {"http_protocol_options": {}}}


def test_typed_http_protocol_options() -> None:
    c = translate_cluster(
        cluster_pb(
            static_with(
                typed_extension_protocol_options=typed_hpo(
                    common_http_protocol_options={"idle_timeout": "30s", "max_requests_per_connection": 7},
                    **H1,
                )
            )
        ),
        P,
    )
    assert (c.idle_timeout, c.max_requests_per_connection) == (30.0, 7)


def test_use_downstream_protocol_config_is_http1_while_downstreams_are() -> None:
    # Istio's PassthroughCluster / inbound clusters carry it; with HTTP/1 downstreams only, the
    # upstream is HTTP/1.1.  Its common options still apply.
    c = translate_cluster(
        cluster_pb(
            static_with(
                typed_extension_protocol_options=typed_hpo(
                    common_http_protocol_options={"idle_timeout": "20s"},
                    use_downstream_protocol_config={"http_protocol_options": {}, "http2_protocol_options": {}},
                )
            )
        ),
        P,
    )
    assert c.idle_timeout == 20.0


def test_typed_options_under_the_legacy_name() -> None:
    opts = {"envoy.upstreams.http.http_protocol_options": typed_hpo(**H1)[HPO]}
    assert (
        translate_cluster(cluster_pb(static_with(typed_extension_protocol_options=opts)), P).idle_timeout
        == 3600.0
    )


def test_deprecated_cluster_protocol_fields() -> None:
    c = translate_cluster(
        cluster_pb(
            static_with(max_requests_per_connection=1, common_http_protocol_options={"idle_timeout": "10s"})
        ),
        P,
    )
    assert (c.idle_timeout, c.max_requests_per_connection) == (10.0, 1)


def test_deprecated_max_requests_combines_with_typed_options() -> None:
    # Istio's xds-grpc cluster: max_requests_per_connection on the Cluster plus typed options.
    c = translate_cluster(
        cluster_pb(
            static_with(max_requests_per_connection=1, typed_extension_protocol_options=typed_hpo(**H1))
        ),
        P,
    )
    assert c.max_requests_per_connection == 1


def test_typed_options_win_over_deprecated_ones() -> None:
    c = translate_cluster(
        cluster_pb(
            static_with(
                common_http_protocol_options={"idle_timeout": "10s"},
                typed_extension_protocol_options=typed_hpo(
                    common_http_protocol_options={"idle_timeout": "20s"}, **H1
                ),
            )
        ),
        P,
    )
    assert c.idle_timeout == 20.0


@pytest.mark.parametrize(
    ("extra", "path", "reason"),
    [
        (
            {
                "max_requests_per_connection": 3,
                "typed_extension_protocol_options": typed_hpo(
                    common_http_protocol_options={"max_requests_per_connection": 5}, **H1
                ),
            },
            P,
            "Only one of max_requests_per_connection from Cluster or HttpProtocolOptions can be specified",
        ),
        (
            {"typed_extension_protocol_options": typed_hpo()},
            f"{P}.typed_extension_protocol_options[{HPO}]",
            'field: "upstream_protocol_options", reason: is required',
        ),
        (
            {"typed_extension_protocol_options": typed_hpo(explicit_http_config={"http3_protocol_options": {}})},
            f"{P}.typed_extension_protocol_options[{HPO}].explicit_http_config.http3_protocol_options",
            "HTTP/3 upstreams are not supported by sidecar yet",
        ),
        (
            {"typed_extension_protocol_options": typed_hpo(auto_config={"http_protocol_options": {}})},
            f"{P}.typed_extension_protocol_options[{HPO}].auto_config",
            "field is not supported by sidecar yet",
        ),
        (
            {"typed_extension_protocol_options": {"foo": typed_hpo(**H1)[HPO]}},
            f"{P}.typed_extension_protocol_options[foo]",
            "Didn't find a registered network or http filter or protocol options implementation for name: 'foo'",
        ),
    ],
)
def test_protocol_option_refusals(extra: dict[str, Any], path: str, reason: str) -> None:
    e = refused(static_with(**extra))
    assert (e.path, e.reason) == (path, reason)


def test_config_hash_is_stable_and_tracks_changes() -> None:
    a = translate_cluster(cluster_pb(STATIC), P)
    b = translate_cluster(cluster_pb(STATIC), "elsewhere")
    c = translate_cluster(cluster_pb(static_with(connect_timeout="1s")), P)
    assert a.config_hash == b.config_hash != 0
    assert c.config_hash != a.config_hash


def test_circuit_breaker_thresholds_default_priority() -> None:
    from envoy.config.cluster.v3 import cluster_pb2
    from google.protobuf import json_format

    from sidecar.translate.cds import translate_cluster
    from sidecar.translate.errors import ConfigError

    pb = json_format.ParseDict(
        {"name": "c", "circuit_breakers": {"thresholds": [{"max_requests": 7, "max_retries": 0}]}},
        cluster_pb2.Cluster(),
    )
    t = translate_cluster(pb, "clusters[0]").circuit_breakers
    assert (t.max_connections, t.max_pending_requests, t.max_requests, t.max_retries) == (1024, 1024, 7, 0)
    # HIGH thresholds only apply to HIGH priority routes, which are refused: checked, then left out
    # (Istio's bootstrap sets both on xds-grpc).
    both = json_format.ParseDict(
        {"name": "c", "circuit_breakers": {"thresholds": [
            {"priority": "HIGH", "max_requests": 9}, {"max_requests": 7}, {"priority": "HIGH", "max_requests": 5}]}},
        cluster_pb2.Cluster(),
    )
    assert translate_cluster(both, "clusters[0]").circuit_breakers.max_requests == 7
    high_route = json_format.ParseDict(
        {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "c", "priority": "HIGH"}}]}]},
        route_pb2.RouteConfiguration(),
    )
    with pytest.raises(ConfigError) as e:
        translate_route_configuration(high_route, "r")
    assert e.value.path.endswith("routes[0].route.priority")


@pytest.mark.parametrize(
    "options",
    [
        {"http2_protocol_options": {}},
        {"typed_extension_protocol_options": typed_hpo(explicit_http_config={"http2_protocol_options": {}})},
    ],
)
def test_http2_clusters_are_accepted_and_marked(options: dict[str, Any]) -> None:
    """Istio's bootstrap (xds-grpc, sds-grpc) and istiod's grpc clusters are HTTP/2: they load, marked
    `http2` so the HTTP/1 pool never sends them HTTP/1.1 (it answers 502, protocol error)."""
    c = translate_cluster(cluster_pb(static_with(**options)), P)
    assert c.http2 is True
    assert translate_cluster(cluster_pb(static_with(**{"typed_extension_protocol_options": typed_hpo(**H1)})), P).http2 is False
    assert translate_cluster(cluster_pb(STATIC), P).http2 is False


def test_outlier_detection_defaults_and_fields() -> None:
    from sidecar.model.outlier import OutlierDetection

    assert translate_cluster(cluster_pb(STATIC), P).outlier_detection is None
    assert translate_cluster(cluster_pb(static_with(outlier_detection={})), P).outlier_detection == (
        OutlierDetection()
    )
    od = {
        "consecutive_5xx": 3,
        "consecutive_gateway_failure": 4,
        "enforcing_consecutive_gateway_failure": 50,
        "consecutive_local_origin_failure": 2,
        "enforcing_consecutive_local_origin_failure": 0,
        "split_external_local_origin_errors": True,
        "interval": "0.2s",
        "base_ejection_time": "1s",
        "max_ejection_percent": 50,
        "success_rate_minimum_hosts": 2,
        "success_rate_request_volume": 7,
        "success_rate_stdev_factor": 1000,
        "enforcing_success_rate": 0,
        "failure_percentage_threshold": 60,
        "enforcing_failure_percentage": 100,
        "failure_percentage_minimum_hosts": 1,
        "failure_percentage_request_volume": 9,
        "always_eject_one_host": True,
        "successful_active_health_check_uneject_host": False,  # no health checks: ignored
    }
    got = translate_cluster(cluster_pb(static_with(outlier_detection=od)), P).outlier_detection
    assert got == OutlierDetection(
        consecutive_5xx=3,
        consecutive_gateway_failure=4,
        enforcing_consecutive_gateway_failure=50,
        consecutive_local_origin_failure=2,
        enforcing_consecutive_local_origin_failure=0,
        split_external_local_origin_errors=True,
        interval=0.2,
        base_ejection_time=1.0,
        max_ejection_time=300.0,
        max_ejection_percent=50,
        success_rate_minimum_hosts=2,
        success_rate_request_volume=7,
        success_rate_stdev_factor=1000,
        enforcing_success_rate=0,
        failure_percentage_threshold=60,
        enforcing_failure_percentage=100,
        failure_percentage_minimum_hosts=1,
        failure_percentage_request_volume=9,
        always_eject_one_host=True,
    )
    # An unset max_ejection_time is max(300 s, base_ejection_time).
    long = translate_cluster(cluster_pb(static_with(outlier_detection={"base_ejection_time": "400s"})), P)
    assert long.outlier_detection is not None and long.outlier_detection.max_ejection_time == 400.0


def test_retry_budget_defaults() -> None:
    from envoy.config.cluster.v3 import cluster_pb2
    from google.protobuf import json_format

    from sidecar.translate.cds import translate_cluster

    pb = json_format.ParseDict(
        {"name": "c", "circuit_breakers": {"thresholds": [{"retry_budget": {}}]}}, cluster_pb2.Cluster()
    )
    t = translate_cluster(pb, "clusters[0]").circuit_breakers
    assert (t.retry_budget_percent, t.min_retry_concurrency) == (20.0, 3)

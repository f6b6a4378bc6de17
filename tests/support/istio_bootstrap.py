"""An Envoy bootstrap shaped like the one Istio's pilot-agent writes (etc/istio/proxy/envoy-rev.json,
rendered from istio's tools/packaging/common/envoy_bootstrap.json with the default mesh config):
node metadata, layered_runtime, the internal_listener bootstrap extension as a TypedStruct,
stats_config with Istio's tags and inclusion list, admin with an access log, ADS over the
`xds-grpc` cluster (a Unix socket, HTTP/2, DEFAULT and HIGH circuit breaker thresholds,
max_requests_per_connection 1, tcp keepalive), `sds-grpc` on the workload SDS socket (HTTP/2),
`prometheus_stats` and `agent`, the zipkin cluster and tracer, and the two static listeners:
15090 (/stats/prometheus -> admin) and 15021 (/healthz/ready -> pilot-agent).

Ports are parameters so tests can run beside each other; the socket paths are the relative ones
pilot-agent uses (the proxy runs with the pod's working directory)."""

from __future__ import annotations

import json
from typing import Any

XDS_PATH = "./etc/istio/proxy/XDS"
SDS_PATH = "./var/run/secrets/workload-spiffe-uds/socket"
_HPO_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_H2 = {_HPO_KEY: {"@type": f"type.googleapis.com/{_HPO_KEY}", "explicit_http_config": {"http2_protocol_options": {}}}}
NODE_ID = "sidecar~10.1.2.3~productpage-v1-6b746f74dc-9stvs.default~default.svc.cluster.local"


def _static(name: str, address: dict[str, Any], connect_timeout: str = "0.250s", **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]},
    }
    c.update(extra)
    return c


def _tcp(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"protocol": "TCP", "address": host, "port_value": port}}


def _hcm_listener(port: int, stat_prefix: str, prefix: str, cluster: str) -> dict[str, Any]:
    return {
        "address": _tcp("0.0.0.0", port),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                ".HttpConnectionManager",
                "codec_type": "AUTO",
                "stat_prefix": stat_prefix,
                "route_config": {"virtual_hosts": [{
                    "name": "backend", "domains": ["*"],
                    "routes": [{"match": {"prefix": prefix}, "route": {"cluster": cluster}}],
                }]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    }


def istio_bootstrap(*, admin_port: int, prometheus_port: int, status_port: int, agent_port: int) -> dict[str, Any]:
    limits = {"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}
    return {
        "node": {
            "id": NODE_ID,
            "cluster": "productpage.default",
            "locality": {},
            "metadata": {
                "ISTIO_VERSION": "1.24.0",
                "CLUSTER_ID": "Kubernetes",
                "NAMESPACE": "default",
                "MESH_ID": "cluster.local",
                "NAME": "productpage-v1-6b746f74dc-9stvs",
                "LABELS": {"app": "productpage", "version": "v1"},
                "INTERCEPTION_MODE": "REDIRECT",
                "WORKLOAD_NAME": "productpage-v1",
                "SERVICE_ACCOUNT": "bookinfo-productpage",
                "PROXY_CONFIG": {"concurrency": 2, "statusPort": 15020},
            },
        },
        "layered_runtime": {"layers": [
            {"name": "global config", "static_layer": {
                "envoy.reloadable_features.http_reject_path_with_fragment": "false",
                "re2.max_program_size.error_level": "32768",
            }},
            {"name": "admin", "admin_layer": {}},
        ]},
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {
                "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                "type_url": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                "value": {"buffer_size_kb": 64},
            },
        }],
        "stats_config": {
            "use_all_default_tags": False,
            "stats_tags": [
                {"tag_name": "cluster_name", "regex": "^cluster\\.((.+?(\\..+?\\.svc\\.cluster\\.local)?)\\.)"},
                {"tag_name": "tcp_prefix", "regex": "^tcp\\.((.*?)\\.)\\w+?$"},
                {"regex": "_rq(_(\\d{3}))$", "tag_name": "response_code"},
                {"tag_name": "response_code_class", "regex": "_rq(_(\\dxx))$"},
                {"tag_name": "authz_enforce_result", "regex": "rbac(\\.(allowed|denied))"},
            ],
            "stats_matcher": {"inclusion_list": {"patterns": [
                {"prefix": "reporter="}, {"prefix": "cluster_manager"}, {"prefix": "listener_manager"},
                {"prefix": "server"}, {"prefix": "cluster.xds-grpc"}, {"suffix": "rbac.allowed"},
                {"safe_regex": {"regex": "vhost\\.*\\.route\\.*"}}, {"prefix": "component"}, {"prefix": "istio"},
            ]}},
        },
        "admin": {
            "access_log": [{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": "/dev/null",
                },
            }],
            "profile_path": "/var/lib/istio/data/envoy.prof",
            "address": _tcp("127.0.0.1", admin_port),
        },
        "dynamic_resources": {
            "lds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "ads_config": {
                "api_type": "GRPC",
                "set_node_on_first_message_only": True,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
        },
        "static_resources": {
            "clusters": [
                _static("prometheus_stats", _tcp("127.0.0.1", admin_port)),
                _static("agent", _tcp("127.0.0.1", agent_port)),
                _static("sds-grpc", {"pipe": {"path": SDS_PATH}}, "1s", typed_extension_protocol_options=_H2),
                _static(
                    "xds-grpc",
                    {"pipe": {"path": XDS_PATH}},
                    "1s",
                    circuit_breakers={"thresholds": [{"priority": "DEFAULT", **limits}, {"priority": "HIGH", **limits}]},
                    upstream_connection_options={"tcp_keepalive": {"keepalive_time": 300}},
                    max_requests_per_connection=1,
                    typed_extension_protocol_options=_H2,
                ),
                {
                    "name": "zipkin",
                    "type": "STRICT_DNS",
                    "respect_dns_ttl": True,
                    "dns_lookup_family": "V4_ONLY",
                    "dns_refresh_rate": "30s",
                    "connect_timeout": "1s",
                    "lb_policy": "ROUND_ROBIN",
                    "load_assignment": {"cluster_name": "zipkin", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "localhost", "port_value": 9411}}}},
                    ]}]},
                },
            ],
            "listeners": [
                _hcm_listener(prometheus_port, "stats", "/stats/prometheus", "prometheus_stats"),
                _hcm_listener(status_port, "agent", "/healthz/ready", "agent"),
            ],
        },
        "tracing": {"http": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": "zipkin",
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON",
                "trace_id_128bit": True,
                "shared_span_context": False,
            },
        }},
    }


def istio_bootstrap_json(**ports: int) -> str:
    return json.dumps(istio_bootstrap(**ports), indent=1)


# The flags pilot-agent starts Envoy with (pkg/envoy/proxy.go), minus -c and --concurrency which the
# test harness sets.
PILOT_AGENT_ARGS = (
    "--drain-time-s", "45",
    "--drain-strategy", "immediate",
    "--local-address-ip-version", "v4",
    "--file-flush-interval-msec", "1000",
    "--disable-hot-restart",
    "--allow-unknown-static-fields",
    "--log-format", "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t",
    "-l", "warning",
    "--component-log-level", "misc:error",
)

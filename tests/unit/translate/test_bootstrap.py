"""load_bootstrap and translate_bootstrap: realistic bootstraps (Envoy's docs example, an Istio-shaped
one) translated field by field; Envoy's loading rules (extensions, --config-yaml merge); refusals and
parse errors with their exact paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.cli import Options
from sidecar.model.cluster import DiscoveryType, DnsLookupFamily, LbPolicy
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.model.listener import HttpConnectionManager
from sidecar.model.route import RouteAction
from sidecar.model.snapshot import Admin, Node
from sidecar.translate.bootstrap import load_bootstrap, translate_bootstrap, translate_dynamic
from sidecar.translate.errors import ConfigError

NO_FLAGS = Options()


# Envoy's "getting started" static configuration (configs/envoyproxy_io_proxy.yaml), without the
# stdout access log and the upstream TLS, which are not supported yet.
ENVOY_DEMO = """
static_resources:
  listeners:
  - name: listener_0
    address:
      socket_address:
        address: 0.0.0.0
        port_value: 10000
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: local_route
            virtual_hosts:
            - name: local_service
              domains: ["*"]
              routes:
              - match:
                  prefix: "/"
                route:
                  host_rewrite_literal: www.envoyproxy.io
                  cluster: service_envoyproxy_io
  clusters:
  - name: service_envoyproxy_io
    type: LOGICAL_DNS
    # Comment out the following line to test on v6 networks
    dns_lookup_family: V4_ONLY
    load_assignment:
      cluster_name: service_envoyproxy_io
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: www.envoyproxy.io
                port_value: 443
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: 9901}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def load_yaml(text: str, allow_unknown: bool = False) -> Any:
    return load_bootstrap(None, text, allow_unknown)


def translate_yaml(text: str, options: Options = NO_FLAGS) -> Any:
    return translate_bootstrap(load_yaml(text), options)


def refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        translate_bootstrap(load_yaml(text), NO_FLAGS)
    return e.value


def test_envoy_demo_bootstrap(tmp_path: Path) -> None:
    pb = load_bootstrap(write(tmp_path, "envoy-demo.yaml", ENVOY_DEMO), None, False)
    snap = translate_bootstrap(pb, NO_FLAGS)
    (lst,) = snap.listeners
    assert lst.name == "listener_0"
    assert lst.address == SocketAddress("0.0.0.0", 10000)
    (h,) = lst.filter_chains[0].filters
    assert isinstance(h, HttpConnectionManager)
    assert h.stat_prefix == "ingress_http"
    assert h.route_config.name == "local_route"
    (vhost,) = h.route_config.virtual_hosts
    assert (vhost.name, vhost.domains) == ("local_service", ("*",))
    (route,) = vhost.routes
    assert isinstance(route.action, RouteAction)
    assert (route.action.cluster, route.action.host_rewrite_literal) == (
        "service_envoyproxy_io",
        "www.envoyproxy.io",
    )
    assert h.route_config.table is not None
    assert [f.name for f in h.http_filters] == ["envoy.filters.http.router"]
    assert list(snap.clusters) == ["service_envoyproxy_io"]
    c = snap.clusters["service_envoyproxy_io"]
    assert c.type is DiscoveryType.LOGICAL_DNS
    assert c.dns_lookup_family is DnsLookupFamily.V4_ONLY
    assert c.lb_policy is LbPolicy.ROUND_ROBIN
    assert c.endpoints == (Endpoint(SocketAddress("www.envoyproxy.io", 443)),)
    assert snap.admin == Admin(address=SocketAddress("127.0.0.1", 9901))
    assert snap.node == Node()
    # /config_dump shows the bootstrap as loaded, with proto field names as Envoy prints them.
    assert snap.bootstrap_json["static_resources"]["clusters"][0]["dns_lookup_family"] == "V4_ONLY"
    assert snap.bootstrap_json["admin"]["address"]["socket_address"]["port_value"] == 9901


def test_json_file_and_other_extensions_are_json(tmp_path: Path) -> None:
    data = yaml.safe_load(ENVOY_DEMO)
    for name in ("bootstrap.json", "envoy-rev.conf", "BOOT.JSON"):
        pb = load_bootstrap(write(tmp_path, name, json.dumps(data)), None, False)
        assert pb.static_resources.listeners[0].name == "listener_0"
    # YAML in a file that is not .yaml/.yml is parsed as JSON, and fails as in Envoy.
    with pytest.raises(ConfigError) as e:
        load_bootstrap(write(tmp_path, "boot.txt", "node: {id: x}"), None, False)
    assert e.value.reason.startswith("Unable to parse JSON")


def test_yml_extension(tmp_path: Path) -> None:
    assert load_bootstrap(write(tmp_path, "b.yml", "node: {id: n1}"), None, False).node.id == "n1"


@pytest.mark.parametrize("name", ["b.pb", "b.pb_text"])
def test_protobuf_encodings_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_bootstrap(write(tmp_path, name, ""), None, False)
    assert ".pb" in e.value.reason and "JSON or YAML" in e.value.reason


def test_missing_file_and_missing_config(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as e:
        load_bootstrap(missing, None, False)
    assert (e.value.path, e.value.reason) == (missing, f"Invalid path: {missing}")
    with pytest.raises(ConfigError) as e:
        load_bootstrap(None, None, False)
    assert (
        e.value.reason
        == "At least one of --config-path or --config-yaml or Options::configProto() should be non-empty"
    )


def test_config_yaml_merges_over_the_file_as_protobuf_merge_from(tmp_path: Path) -> None:
    path = write(tmp_path, "b.yaml", ENVOY_DEMO + "node: {id: from-file, cluster: file-cluster}\n")
    overlay = """
node: {id: from-flag}
admin: {address: {socket_address: {port_value: 15000}}}
static_resources:
  clusters:
  - name: extra
    load_assignment:
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]
"""
    snap = translate_bootstrap(load_bootstrap(path, overlay, False), NO_FLAGS)
    # Scalars are replaced, messages merged field by field, repeated fields appended.
    assert snap.node == Node(id="from-flag", cluster="file-cluster")
    assert snap.admin.address == SocketAddress("127.0.0.1", 15000)
    assert list(snap.clusters) == ["service_envoyproxy_io", "extra"]


def test_unknown_field_is_an_error_with_its_path_unless_allowed() -> None:
    text = ENVOY_DEMO.replace("    filter_chains:", "    bogus_field: 1\n    filter_chains:", 1)
    with pytest.raises(ConfigError) as e:
        load_yaml(text)
    assert e.value.path == "static_resources.listeners[0].bogus_field"
    assert e.value.reason == "unknown field 'bogus_field' in envoy.config.listener.v3.Listener"
    assert load_yaml(text, allow_unknown=True).static_resources.listeners[0].name == "listener_0"


def test_unknown_field_inside_a_typed_config() -> None:
    text = ENVOY_DEMO.replace("stat_prefix: ingress_http", "stat_prefix: ingress_http\n          nope: 1")
    with pytest.raises(ConfigError) as e:
        load_yaml(text)
    assert e.value.path == "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.nope"


def test_unknown_type_url_names_path_and_url() -> None:
    text = ENVOY_DEMO.replace("envoy.extensions.filters.http.router.v3.Router", "acme.filters.Magic")
    with pytest.raises(ConfigError) as e:
        load_yaml(text)
    assert (
        e.value.path
        == "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"
    )
    assert "'type.googleapis.com/acme.filters.Magic'" in e.value.reason


def test_bad_values_name_their_field() -> None:
    with pytest.raises(ConfigError) as e:
        load_yaml("static_resources: {clusters: [{name: a, connect_timeout: soon}]}")
    assert e.value.path == "static_resources.clusters[0].connect_timeout"
    assert "Duration" in e.value.reason
    with pytest.raises(ConfigError) as e:
        load_yaml("static_resources: {clusters: [{name: a, type: FOO}]}")
    assert e.value.path == "static_resources.clusters[0].type"
    with pytest.raises(ConfigError) as e:
        load_yaml("static_resources: {clusters: [{name: a, per_connection_buffer_limit_bytes: -1}]}")
    assert e.value.path == "static_resources.clusters.per_connection_buffer_limit_bytes"
    with pytest.raises(ConfigError) as e:
        load_yaml("[1, 2]")
    assert e.value.reason == "the bootstrap must be a mapping, not list"
    with pytest.raises(ConfigError) as e:
        load_yaml("node: {id: [")
    assert e.value.path == "--config-yaml" and e.value.reason.startswith("Unable to parse YAML")


def test_yaml_dates_stay_strings() -> None:
    assert load_yaml("node: {id: 2024-01-01}").node.id == "2024-01-01"


def test_service_flags_override_the_node() -> None:
    text = "node: {id: boot-id, cluster: boot-cluster, locality: {zone: boot-zone}, metadata: {ISTIO_VERSION: '1.24', LABELS: {app: x}}}"
    snap = translate_yaml(text)
    assert snap.node == Node(
        id="boot-id",
        cluster="boot-cluster",
        zone="boot-zone",
        metadata={"ISTIO_VERSION": "1.24", "LABELS": {"app": "x"}},
    )
    flags = Options(service_node="cli-node", service_cluster="cli-cluster", service_zone="cli-zone")
    snap = translate_yaml(text, flags)
    # Envoy 1.40 reports the command-line values in /server_info; the bootstrap dump keeps the file's.
    assert (snap.node.id, snap.node.cluster, snap.node.zone) == ("cli-node", "cli-cluster", "cli-zone")
    assert snap.bootstrap_json["node"]["id"] == "boot-id"
    # An empty flag leaves the bootstrap's value.
    assert translate_yaml(text, Options(service_node="n")).node.cluster == "boot-cluster"


def test_admin_variants() -> None:
    assert translate_yaml("node: {id: x}").admin == Admin()
    snap = translate_yaml(
        "admin: {access_log_path: /dev/null, profile_path: /tmp/p, address: {pipe: {path: /tmp/admin.sock}}}"
    )
    assert snap.admin == Admin(
        address=SocketAddress("", 0, pipe="/tmp/admin.sock"), access_log_path="/dev/null"
    )
    e = refused(
        "admin: {allow_paths: [{exact: /stats}], address: {socket_address: {address: 127.0.0.1, port_value: 1}}}"
    )
    assert (e.path, e.reason) == ("admin.allow_paths", "field is not supported by sidecar yet")


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        (
            "dynamic_resources: {lds_config: {ads: {}}}",
            "dynamic_resources.lds_config.ads",
            "an ads config source needs dynamic_resources.ads_config",
        ),
        ("header_prefix: x-acme", "header_prefix", "field is not supported by sidecar yet"),
        ("hds_config: {api_type: GRPC}", "hds_config", "field is not supported by sidecar yet"),
        (
            "static_resources: {secrets: [{name: s}]}",
            "static_resources.secrets[0]",
            "secret type is required",
        ),
        (
            "cluster_manager: {upstream_bind_config: {source_address: {address: 127.0.0.6, port_value: 0}}}",
            "cluster_manager.upstream_bind_config",
            "field is not supported by sidecar yet",
        ),
    ],
)
def test_refused_bootstrap_fields(text: str, path: str, reason: str) -> None:
    e = refused(text)
    assert (e.path, e.reason) == (path, reason)


def test_harmless_bootstrap_fields_are_ignored() -> None:
    snap = translate_yaml(
        """
node: {id: x, user_agent_name: envoy, client_features: [a]}
node_context_params: [cluster]
stats_config: {use_all_default_tags: false}
stats_flush_interval: 5s
watchdogs: {main_thread_watchdog: {miss_timeout: 1s}}
layered_runtime: {layers: [{name: static, static_layer: {a: 1}}]}
overload_manager: {refresh_interval: 1s}
enable_dispatcher_stats: true
cluster_manager: {local_cluster_name: local}
"""
    )
    assert snap.node.id == "x" and snap.listeners == ()


def test_duplicate_clusters_and_listeners() -> None:
    data = yaml.safe_load(ENVOY_DEMO)
    data["static_resources"]["clusters"] *= 2
    e = refused(json.dumps(data))
    assert (e.path, e.reason) == (
        "static_resources.clusters[1].name",
        "cluster manager: duplicate cluster 'service_envoyproxy_io'",
    )
    data = yaml.safe_load(ENVOY_DEMO)
    second = json.loads(json.dumps(data["static_resources"]["listeners"][0]))
    second["address"]["socket_address"]["port_value"] = 10001
    data["static_resources"]["listeners"].append(second)
    e = refused(json.dumps(data))
    assert (e.path, e.reason) == (
        "static_resources.listeners[1].name",
        "listener manager: duplicate listener 'listener_0'",
    )
    second["name"] = "listener_1"
    second["address"]["socket_address"]["port_value"] = 10000
    e = refused(json.dumps(data))
    assert e.path == "static_resources.listeners[1].address"
    assert (
        e.reason
        == "error adding listener: 'listener_1' has duplicate address '0.0.0.0:10000' as existing listener"
    )
    # Port 0 asks the kernel for a port: two such listeners never clash.
    for lst in data["static_resources"]["listeners"]:
        lst["address"]["socket_address"]["port_value"] = 0
    assert len(translate_yaml(json.dumps(data)).listeners) == 2


def test_static_route_to_unknown_cluster_is_refused() -> None:
    # Inline route tables default to validate_clusters: true (route.proto), so Envoy refuses this.
    e = refused(
        ENVOY_DEMO.replace("cluster: service_envoyproxy_io\n  clusters:", "cluster: nowhere\n  clusters:")
    )
    assert e.path == (
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
        ".virtual_hosts[0].routes[0].route.cluster"
    )
    assert e.reason == "route: unknown cluster 'nowhere'"


def test_cluster_errors_carry_the_bootstrap_path() -> None:
    e = refused(ENVOY_DEMO.replace("type: LOGICAL_DNS", "type: EDS"))
    assert (e.path, e.reason) == ("static_resources.clusters[0].eds_cluster_config.eds_config", "value is required")


# An Istio-shaped bootstrap (tools/packaging/common/envoy_bootstrap.json) without the parts that
# need xDS: node metadata, runtime, stats config, TypedStruct bootstrap extensions, the admin access
# log, the nameless prometheus listener and the STATIC clusters.
ISTIO_LIKE = {
    "node": {
        "id": "sidecar~10.1.2.3~productpage-v1-6b7f6f7d9c-abcde.default~default.svc.cluster.local",
        "cluster": "productpage.default",
        "locality": {"region": "r", "zone": "z"},
        "metadata": {"ISTIO_VERSION": "1.24.0", "CLUSTER_ID": "Kubernetes"},
    },
    "layered_runtime": {
        "layers": [
            {
                "name": "global config",
                "static_layer": {"overload.global_downstream_max_connections": 2147483647},
            },
            {"name": "admin", "admin_layer": {}},
        ]
    },
    "bootstrap_extensions": [
        {
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {
                "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                "type_url": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                "value": {"buffer_size_kb": 64},
            },
        }
    ],
    "stats_config": {
        "use_all_default_tags": False,
        "stats_tags": [{"tag_name": "cluster_name", "regex": "^cluster\\.((.+?)\\.)"}],
    },
    "admin": {
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": "/dev/null",
                },
            }
        ],
        "profile_path": "/var/lib/istio/data/envoy.prof",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}},
    },
    "static_resources": {
        "clusters": [
            {
                "name": "prometheus_stats",
                "type": "STATIC",
                "connect_timeout": "0.250s",
                "lb_policy": "ROUND_ROBIN",
                "load_assignment": {
                    "cluster_name": "prometheus_stats",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "protocol": "TCP",
                                                "address": "127.0.0.1",
                                                "port_value": 15000,
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            },
            {
                "name": "agent",
                "type": "STATIC",
                "connect_timeout": "0.250s",
                "lb_policy": "ROUND_ROBIN",
                "load_assignment": {
                    "cluster_name": "agent",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "protocol": "TCP",
                                                "address": "127.0.0.1",
                                                "port_value": 15020,
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            },
        ],
        "listeners": [
            {
                "address": {"socket_address": {"protocol": "TCP", "address": "0.0.0.0", "port_value": 15090}},
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.http_connection_manager",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                    "codec_type": "AUTO",
                                    "stat_prefix": "stats",
                                    "route_config": {
                                        "virtual_hosts": [
                                            {
                                                "name": "backend",
                                                "domains": ["*"],
                                                "routes": [
                                                    {
                                                        "match": {"prefix": "/stats/prometheus"},
                                                        "route": {"cluster": "prometheus_stats"},
                                                    }
                                                ],
                                            }
                                        ]
                                    },
                                    "http_filters": [
                                        {
                                            "name": "envoy.filters.http.router",
                                            "typed_config": {
                                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                            },
                                        }
                                    ],
                                },
                            }
                        ]
                    }
                ],
            }
        ],
    },
}


def test_istio_like_bootstrap(tmp_path: Path) -> None:
    path = write(tmp_path, "envoy-rev.json", json.dumps(ISTIO_LIKE))
    snap = translate_bootstrap(load_bootstrap(path, None, True), Options(allow_unknown_static_fields=True))
    assert snap.node.id.startswith("sidecar~10.1.2.3~")
    assert (snap.node.cluster, snap.node.zone) == ("productpage.default", "z")
    assert snap.node.metadata == {"ISTIO_VERSION": "1.24.0", "CLUSTER_ID": "Kubernetes"}
    assert snap.admin == Admin(address=SocketAddress("127.0.0.1", 15000))
    assert list(snap.clusters) == ["prometheus_stats", "agent"]
    assert snap.clusters["agent"].connect_timeout == 0.25
    assert snap.clusters["agent"].endpoints == (Endpoint(SocketAddress("127.0.0.1", 15020)),)
    (lst,) = snap.listeners
    assert lst.address == SocketAddress("0.0.0.0", 15090)
    # Nameless, as Istio writes it: a UUID that is the same each time this config is loaded.
    again = translate_bootstrap(load_bootstrap(path, None, True), NO_FLAGS)
    assert len(lst.name) == 36 and lst.name == again.listeners[0].name


def test_istio_bootstrap_with_ads() -> None:
    data = json.loads(json.dumps(ISTIO_LIKE))
    data["dynamic_resources"] = {
        "lds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
        "cds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
        "ads_config": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
        },
    }
    pb = load_yaml(json.dumps(data))
    translate_bootstrap(pb, NO_FLAGS)
    dynamic, node = translate_dynamic(pb, NO_FLAGS)
    assert dynamic.ads is not None and dynamic.ads.grpc is not None
    assert dynamic.ads.grpc.cluster_name == "xds-grpc"
    assert dynamic.lds is not None and dynamic.lds.ads and dynamic.lds.initial_fetch_timeout == 0
    assert node.user_agent_name == "envoy"

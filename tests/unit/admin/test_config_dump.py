"""/config_dump: Envoy's ConfigDump shape, ?resource=, ?mask=, ?name_regex=, ?include_eds, redaction."""

from __future__ import annotations

from typing import Any

import orjson
from google.protobuf import json_format

from sidecar.admin import config_dump
from sidecar.admin.context import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
    XdsResource,
)
from sidecar.admin.protojson import address_json, snake_case, timestamp
from sidecar.admin.request import JSON, PLAIN, Request, parse_query
from tests.integration.admin.fake_context import BOOTSTRAP, REVIEWS, FakeAdminContext, make_snapshot

ADMIN = "type.googleapis.com/envoy.admin.v3."


def _dump(ctx: FakeAdminContext, query: str = "") -> tuple[int, str, Any]:
    resp = config_dump.handle(ctx, Request("GET", "/config_dump", parse_query(query)))
    body = orjson.loads(resp.body) if resp.content_type == JSON else resp.body.decode()
    return resp.status, resp.content_type, body


def _dynamic_ctx() -> FakeAdminContext:
    ctx = FakeAdminContext()
    ctx.xds = {
        CLUSTER_TYPE: [
            XdsResource(
                "outbound|80||eds.example",
                "v7",
                1_700_000_010.25,
                {"name": "outbound|80||eds.example", "type": "EDS"},
            ),
            XdsResource("warm", "v8", 1_700_000_011.0, {"name": "warm"}, warming=True),
        ],
        LISTENER_TYPE: [
            XdsResource(
                "virtualInbound",
                "L3",
                1_700_000_012.0,
                {
                    "name": "virtualInbound",
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "hcm",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                                        "HttpConnectionManager",
                                        "route_config": {"name": "inbound|9080||"},
                                    },
                                }
                            ]
                        }
                    ],
                },
            )
        ],
        ROUTE_TYPE: [XdsResource("9080", "R1", 1_700_000_013.0, {"name": "9080"})],
        SECRET_TYPE: [
            XdsResource(
                "default",
                "S1",
                1_700_000_014.0,
                {
                    "name": "default",
                    "tls_certificate": {
                        "private_key": {"inline_bytes": "c2VjcmV0"},
                        "certificate_chain": {"inline_bytes": "Y2VydA=="},
                    },
                },
            )
        ],
        ENDPOINT_TYPE: [
            XdsResource(
                "outbound|80||eds.example",
                "E1",
                1_700_000_015.0,
                {"cluster_name": "outbound|80||eds.example"},
            )
        ],
    }
    return ctx


def test_static_shape_matches_envoy() -> None:
    status, ctype, body = _dump(FakeAdminContext())
    assert (status, ctype) == (200, JSON)
    types = [c["@type"] for c in body["configs"]]
    assert types == [
        ADMIN + t
        for t in (
            "BootstrapConfigDump",
            "ClustersConfigDump",
            "ListenersConfigDump",
            "ScopedRoutesConfigDump",
            "RoutesConfigDump",
            "SecretsConfigDump",
        )
    ]
    boot, clusters, listeners, scoped, routes, secrets = body["configs"]
    assert boot["bootstrap"]["node"]["id"] == BOOTSTRAP["node"]["id"]
    assert boot["last_updated"] == "2023-11-14T22:13:20Z"
    assert [c["cluster"]["name"] for c in clusters["static_clusters"]] == ["backend2", REVIEWS]
    assert clusters["static_clusters"][0]["cluster"]["@type"] == CLUSTER_TYPE
    assert [x["listener"]["name"] for x in listeners["static_listeners"]] == ["http_in", "tcp_in"]
    assert scoped == {"@type": ADMIN + "ScopedRoutesConfigDump"}
    (route,) = routes["static_route_configs"]
    assert route["route_config"]["@type"] == ROUTE_TYPE and route["route_config"]["name"] == "local_route"
    (secret,) = secrets["static_secrets"]
    assert secret["name"] == "server_cert" and secret["secret"]["@type"] == SECRET_TYPE
    key = secret["secret"]["tls_certificate"]["private_key"]
    assert key == {"inline_string": "[redacted]"}
    # redacted in the bootstrap copy too, and the snapshot's own data is untouched
    boot_key = boot["bootstrap"]["static_resources"]["secrets"][0]["tls_certificate"]["private_key"]
    assert boot_key == {"inline_string": "[redacted]"}
    assert BOOTSTRAP["static_resources"]["secrets"][0]["tls_certificate"]["private_key"][
        "inline_string"
    ].endswith("secret")


def test_dynamic_sections() -> None:
    _, _, body = _dump(_dynamic_ctx(), "include_eds")
    by_type = {c["@type"].rsplit(".", 1)[-1]: c for c in body["configs"]}
    clusters = by_type["ClustersConfigDump"]
    assert clusters["version_info"] == "v8"
    (active,) = clusters["dynamic_active_clusters"]
    assert active == {
        "version_info": "v7",
        "cluster": {"@type": CLUSTER_TYPE, "name": "outbound|80||eds.example", "type": "EDS"},
        "last_updated": "2023-11-14T22:13:30.250Z",
    }
    assert clusters["dynamic_warming_clusters"][0]["cluster"]["name"] == "warm"
    (dl,) = by_type["ListenersConfigDump"]["dynamic_listeners"]
    assert dl["name"] == "virtualInbound" and dl["active_state"]["version_info"] == "L3"
    routes = by_type["RoutesConfigDump"]
    assert [r["route_config"]["name"] for r in routes["static_route_configs"]] == [
        "local_route",
        "inbound|9080||",
    ]
    assert routes["dynamic_route_configs"][0]["version_info"] == "R1"
    (ds,) = by_type["SecretsConfigDump"]["dynamic_active_secrets"]
    assert ds["secret"]["tls_certificate"]["private_key"] == {"inline_bytes": "W3JlZGFjdGVkXQ=="}
    assert ds["secret"]["tls_certificate"]["certificate_chain"] == {"inline_bytes": "Y2VydA=="}
    eds = by_type["EndpointsConfigDump"]
    assert [e["endpoint_config"]["cluster_name"] for e in eds["static_endpoint_configs"]] == [
        REVIEWS,
        "backend2",
    ]
    first = eds["static_endpoint_configs"][0]["endpoint_config"]
    assert first["endpoints"][0]["lb_endpoints"][1] == {
        "endpoint": {
            "address": {"socket_address": {"address": "127.0.0.2", "port_value": 19005}},
            "health_check_config": {},
        },
        "health_status": "UNHEALTHY",
        "load_balancing_weight": 3,
    }
    assert first["policy"] == {"overprovisioning_factor": 140}
    # Envoy: one entry per active CDS cluster, endpoint_config only (built from its hosts).
    (dyn,) = eds["dynamic_endpoint_configs"]
    assert list(dyn) == ["endpoint_config"]
    assert dyn["endpoint_config"]["cluster_name"] == "outbound|80||eds.example"


def test_resource_mask_and_name_regex() -> None:
    ctx = _dynamic_ctx()
    _, _, body = _dump(ctx, "resource=static_clusters&mask=cluster.name")
    assert body == {
        "configs": [
            {
                "@type": ADMIN + "ClustersConfigDump.StaticCluster",
                "cluster": {"@type": CLUSTER_TYPE, "name": n},
            }
            for n in ("backend2", REVIEWS)
        ]
    }
    _, _, body = _dump(ctx, "resource=dynamic_active_secrets")
    assert body["configs"][0]["@type"] == ADMIN + "SecretsConfigDump.DynamicSecret"
    assert _dump(ctx, "resource=dynamic_warming_secrets")[2] == {}
    _, _, body = _dump(ctx, "resource=static_listeners&name_regex=tcp.*")
    assert [c["listener"]["name"] for c in body["configs"]] == ["tcp_in"]
    assert _dump(ctx, "resource=static_listeners&name_regex=tcp")[2] == {}  # a full match, as Envoy's
    _, _, body = _dump(ctx, "name_regex=backend2")
    clusters = body["configs"][1]
    assert [c["cluster"]["name"] for c in clusters["static_clusters"]] == ["backend2"]
    assert "dynamic_active_clusters" not in clusters
    _, _, body = _dump(ctx, "mask=bootstrap.node.id,last_updated")
    assert body == {
        "configs": [
            {
                "@type": ADMIN + "BootstrapConfigDump",
                "bootstrap": {"node": {"id": BOOTSTRAP["node"]["id"]}},
                "last_updated": "2023-11-14T22:13:20Z",
            }
        ]
    }
    _, _, body = _dump(ctx, "mask=version_info")
    assert [c["@type"].rsplit(".", 1)[-1] for c in body["configs"]] == [
        "ClustersConfigDump",
        "ListenersConfigDump",
    ]
    _, _, body = _dump(ctx, "resource=static_endpoint_configs&include_eds")
    assert len(body["configs"]) == 2


def test_errors() -> None:
    ctx = FakeAdminContext()
    assert _dump(ctx, "resource=bogus") == (404, PLAIN, "bogus not found in config dump")
    assert _dump(ctx, "resource=static_endpoint_configs") == (
        404,
        PLAIN,
        "static_endpoint_configs not found in config dump",
    )
    assert _dump(ctx, "mask=bogus") == (
        400,
        PLAIN,
        "FieldMask bogus could not be successfully applied to any configs.",
    )
    assert _dump(ctx, "mask=static_clusters,bootstrap.admin")[0] == 400  # no single config has both
    assert _dump(ctx, "resource=static_clusters&mask=bogus")[0] == 400
    assert _dump(ctx, "resource=static_listeners&mask=listener.filter_chains.filters")[0] == 400  # repeated
    status, ctype, text = _dump(ctx, "name_regex=(")
    assert (status, ctype) == (400, PLAIN) and text.startswith(
        "INVALID_ARGUMENT: Error while parsing name_regex"
    )


def test_camel_case_bootstrap_is_printed_with_proto_names() -> None:
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    msg = json_format.ParseDict(
        {
            "admin": {"address": {"socket_address": {"address": "::1", "port_value": 1}}},
            "static_resources": {"clusters": [{"name": "c", "connect_timeout": "2s"}]},
        },
        bootstrap_pb2.Bootstrap(),
    )
    camel = json_format.MessageToDict(msg)
    assert "staticResources" in camel
    ctx = FakeAdminContext(snapshot=make_snapshot(camel))
    _, _, body = _dump(ctx)
    assert body["configs"][0]["bootstrap"]["admin"]["address"]["socket_address"]["port_value"] == 1
    assert body["configs"][1]["static_clusters"][0]["cluster"] == {
        "@type": CLUSTER_TYPE,
        "name": "c",
        "connect_timeout": "2s",
    }
    # snake_case JSON is left alone, whatever its Struct keys look like
    snake = {"node": {"metadata": {"ISTIO_VERSION": "1", "LABELS": {"service.istio.io/canonicalName": "x"}}}}
    assert snake_case(snake, "envoy.config.bootstrap.v3.Bootstrap") is snake
    # an unknown Any type cannot be re-encoded: the JSON stays as given
    odd = {
        "staticResources": {
            "listeners": [{"filterChains": [{"filters": [{"typedConfig": {"@type": "x/y.Z"}}]}]}]
        }
    }
    assert snake_case(odd, "envoy.config.bootstrap.v3.Bootstrap") is odd


def test_helpers() -> None:
    assert timestamp(0.0) == "1970-01-01T00:00:00Z"
    assert timestamp(1.5) == "1970-01-01T00:00:01.500Z"
    assert address_json("[::1]:80") == {"socket_address": {"address": "::1", "port_value": 80}}
    assert address_json("/var/run/x.sock") == {"pipe": {"path": "/var/run/x.sock"}}
    assert address_json("@abstract") == {"pipe": {"path": "@abstract"}}

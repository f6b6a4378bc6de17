"""health_checks, priorities, localities and common_lb_config through cds translation: what is
translated (with Envoy's defaults) and what is refused (field path and Envoy's wording)."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from sidecar.model.health_check import DEFAULT_EXPECTED_STATUSES
from sidecar.model.route import AppendAction
from sidecar.translate.cds import translate_cluster
from sidecar.translate.errors import ConfigError

P = "c"
HC = {"timeout": "1s", "interval": "2s", "unhealthy_threshold": 3, "healthy_threshold": 2}


def cluster(**extra: Any) -> cluster_pb2.Cluster:
    data: dict[str, Any] = {
        "name": "b",
        "type": "STATIC",
        "load_assignment": {
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8001}}
                            }
                        }
                    ]
                }
            ]
        },
    }
    data.update(extra)
    return json_format.ParseDict(data, cluster_pb2.Cluster())


def refused(**extra: Any) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        translate_cluster(cluster(**extra), P)
    return e.value


def test_http_health_check_defaults() -> None:
    c = translate_cluster(cluster(health_checks=[{**HC, "http_health_check": {"path": "/h"}}]), P)
    (hc,) = c.health_checks
    assert (hc.timeout, hc.interval, hc.unhealthy_threshold, hc.healthy_threshold) == (1.0, 2.0, 3, 2)
    assert hc.no_traffic_interval == 60.0 and hc.reuse_connection
    assert hc.tcp is None and hc.http is not None
    assert hc.http.method == "GET" and hc.http.expected_statuses == DEFAULT_EXPECTED_STATUSES
    assert hc.http.response_buffer_size == 1024


def test_http_health_check_every_field() -> None:
    http = {
        "path": "/ready",
        "host": "svc.local",
        "method": "POST",
        "send": {"text": "70696e67"},
        "receive": [{"text": "6f6b"}, {"binary": "IQ=="}],
        "request_headers_to_add": [
            {"header": {"key": "X-A", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        ],
        "request_headers_to_remove": ["User-Agent"],
        "expected_statuses": [{"start": 200, "end": 300}],
        "retriable_statuses": [{"start": 503, "end": 504}],
        "service_name_matcher": {"prefix": "svc"},
    }
    extra = {
        "no_traffic_interval": "3s",
        "unhealthy_interval": "4s",
        "reuse_connection": False,
        "interval_jitter_percent": 5,
    }
    (hc,) = translate_cluster(
        cluster(health_checks=[{**HC, **extra, "http_health_check": http}]), P
    ).health_checks
    h = hc.http
    assert h is not None
    assert (h.path, h.host, h.method, h.send, h.receive) == (
        "/ready",
        "svc.local",
        "POST",
        b"ping",
        (b"ok", b"!"),
    )
    assert h.request_headers_to_add[0].name == b"x-a"
    assert h.request_headers_to_add[0].append_action is AppendAction.OVERWRITE_IF_EXISTS_OR_ADD
    assert h.request_headers_to_remove == (b"user-agent",)
    assert (h.expected_statuses, h.retriable_statuses) == (((200, 300),), ((503, 504),))
    assert h.service_name_matcher is not None and h.service_name_matcher.match("svc-a")
    assert (
        hc.no_traffic_interval,
        hc.unhealthy_interval,
        hc.reuse_connection,
        hc.interval_jitter_percent,
    ) == (
        3.0,
        4.0,
        False,
        5,
    )


def test_tcp_health_check() -> None:
    (hc,) = translate_cluster(
        cluster(
            health_checks=[
                {**HC, "tcp_health_check": {"send": {"text": "50494e47"}, "receive": [{"text": "504f4e47"}]}}
            ]
        ),
        P,
    ).health_checks
    assert hc.tcp is not None and (hc.tcp.send, hc.tcp.receive) == (b"PING", (b"PONG",))


@pytest.mark.parametrize(
    ("hc", "path", "reason"),
    [
        (
            {**HC, "grpc_health_check": {}},
            "health_checks[0].grpc_health_check",
            "grpc_health_check is not supported by sidecar yet (HTTP and TCP checks are)",
        ),
        (
            {"interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1, "tcp_health_check": {}},
            "health_checks[0].timeout",
            "value is required",
        ),
        ({**HC}, "health_checks[0]", 'field: "health_checker", reason: is required'),
        (
            {**HC, "timeout": "0s", "tcp_health_check": {}},
            "health_checks[0].timeout",
            "value must be greater than 0s",
        ),
        (
            {**HC, "tcp_health_check": {"send": {"text": "zz"}}},
            "health_checks[0].tcp_health_check.send.text",
            "invalid hex string 'zz'",
        ),
        (
            {**HC, "http_health_check": {"path": "/h", "send": {"text": "00"}}},
            "health_checks[0].http_health_check.send",
            "HTTP health check cannot specify a request payload with method 'GET'. Only methods that support a "
            "request body (POST, PUT, PATCH, OPTIONS) can be used with payload.",
        ),
        (
            {**HC, "http_health_check": {"path": "/h", "expected_statuses": [{"start": 200, "end": 200}]}},
            "health_checks[0].http_health_check.expected_statuses[0]",
            "Invalid http expected status range: expecting start < end, but found start=200 and end=200",
        ),
        (
            {**HC, "http_health_check": {"path": "/h", "retriable_statuses": [{"start": 99, "end": 200}]}},
            "health_checks[0].http_health_check.retriable_statuses[0]",
            "Invalid http retriable status range: expecting start >= 100, but found start=99",
        ),
        (
            {**HC, "http_health_check": {"path": "/h", "receive": [{"text": "41" * 2000}]}},
            "health_checks[0].http_health_check.receive",
            "The expected response length '2000' is over than http health response buffer size '1024'",
        ),
        (
            {**HC, "http_health_check": {"path": ""}},
            "health_checks[0].http_health_check.path",
            "value length must be at least 1 characters",
        ),
        (
            {**HC, "http_health_check": {"path": "/h", "codec_client_type": "HTTP2"}},
            "health_checks[0].http_health_check.codec_client_type",
            "HTTP2 health checks are not supported by sidecar yet",
        ),
        (
            {**HC, "http_health_check": {"path": "/h", "method": "CONNECT"}},
            "health_checks[0].http_health_check.method",
            "value must not be in list [CONNECT]",
        ),
        (
            {**HC, "tcp_health_check": {}, "tls_options": {}},
            "health_checks[0].tls_options",
            "field is not supported by sidecar yet",
        ),
    ],
)
def test_health_check_refusals(hc: dict[str, Any], path: str, reason: str) -> None:
    e = refused(health_checks=[hc])
    assert (e.path, e.reason) == (f"{P}.{path}", reason)


def test_only_one_health_check() -> None:
    e = refused(health_checks=[{**HC, "tcp_health_check": {}}, {**HC, "tcp_health_check": {}}])
    assert e.path == f"{P}.health_checks[1]"


def test_common_lb_config_and_policy() -> None:
    c = translate_cluster(
        cluster(
            common_lb_config={
                "healthy_panic_threshold": {"value": 25.5},
                "locality_weighted_lb_config": {},
                "update_merge_window": "0s",
                "ignore_new_hosts_until_first_hc": True,
            },
            load_assignment={
                "policy": {"overprovisioning_factor": 200, "weighted_priority_health": True},
                "endpoints": [
                    {
                        "locality": {"region": "r", "zone": "z", "sub_zone": "s"},
                        "load_balancing_weight": 7,
                        "priority": 2,
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": "127.0.0.1", "port_value": 8001}
                                    },
                                    "health_check_config": {
                                        "port_value": 9000,
                                        "hostname": "hc.local",
                                        "disable_active_health_check": True,
                                    },
                                }
                            }
                        ],
                    },
                    {
                        "load_balancing_weight": 3,
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": "127.0.0.1", "port_value": 8002}
                                    }
                                }
                            }
                        ],
                    },
                ],
            },
        ),
        P,
    )
    assert (c.healthy_panic_threshold, c.locality_weighted_lb, c.update_merge_window) == (25.5, True, 0.0)
    assert c.ignore_new_hosts_until_first_hc and not c.fail_traffic_on_panic
    assert (c.overprovisioning_factor, c.weighted_priority_health) == (200, True)
    e0, e1 = c.endpoints
    assert (e0.priority, e0.locality, e0.locality_weight) == (2, ("r", "z", "s"), 7)
    assert (e0.health_check_port, e0.health_check_hostname, e0.disable_active_health_check) == (
        9000,
        "hc.local",
        True,
    )
    assert (e1.locality, e1.locality_weight) == (("", "", ""), 0)  # no locality: its weight is not recorded


def test_zone_aware_lb_config_keeps_fail_traffic_on_panic() -> None:
    # Zone-aware routing itself needs a local cluster, which sidecar has not: Envoy routes no zones.
    zone = {"fail_traffic_on_panic": True, "min_cluster_size": 3}
    c = translate_cluster(cluster(common_lb_config={"zone_aware_lb_config": zone}), P)
    assert c.fail_traffic_on_panic and not c.locality_weighted_lb


@pytest.mark.parametrize(
    ("extra", "path", "reason"),
    [
        (
            {"common_lb_config": {"healthy_panic_threshold": {"value": 120}}},
            "common_lb_config.healthy_panic_threshold.value",
            "value must be inside range [0, 100]",
        ),
        (
            {"common_lb_config": {"override_host_status": {}}},
            "common_lb_config.override_host_status",
            "field is not supported by sidecar yet",
        ),
        (
            {"load_assignment": {"policy": {"overprovisioning_factor": 0}}},
            "load_assignment.policy.overprovisioning_factor",
            "value must be greater than 0",
        ),
        (
            {
                "load_assignment": {
                    "policy": {"drop_overloads": [{"category": "x", "drop_percentage": {"numerator": 1}}]}
                }
            },
            "load_assignment.policy.drop_overloads",
            "field is not supported by sidecar yet",
        ),
        (
            {"load_assignment": {"endpoints": [{"load_balancing_weight": 0, "lb_endpoints": []}]}},
            "load_assignment.endpoints[0].load_balancing_weight",
            "value must be greater than or equal to 1",
        ),
        (
            {
                "load_assignment": {
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {"address": "127.0.0.1", "port_value": 1}
                                        },
                                        "health_check_config": {
                                            "address": {
                                                "socket_address": {"address": "127.0.0.2", "port_value": 1}
                                            }
                                        },
                                    }
                                }
                            ]
                        }
                    ]
                }
            },
            "load_assignment.endpoints[0].lb_endpoints[0].endpoint.health_check_config.address",
            "field is not supported by sidecar yet",
        ),
    ],
)
def test_lb_refusals(extra: dict[str, Any], path: str, reason: str) -> None:
    e = refused(**extra)
    assert (e.path, e.reason) == (f"{P}.{path}", reason)

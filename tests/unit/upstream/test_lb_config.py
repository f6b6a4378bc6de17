"""Translation of the load balancer configs (cds) and RouteAction.hash_policy (rds), and
ClusterState building the right balancer."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from google.protobuf import json_format

from sidecar.model.cluster import LbPolicy
from sidecar.model.route import HashPolicy, HashPolicyKind
from sidecar.translate.cds import translate_cluster
from sidecar.translate.errors import ConfigError
from sidecar.translate.rds import translate_route_action

P = "c"


def cluster(**extra: Any) -> cluster_pb2.Cluster:
    data: dict[str, Any] = {
        "name": "b",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "b",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}
                            }
                        }
                        for p in (8001, 8002)
                    ]
                }
            ],
        },
    }
    data.update(extra)
    return json_format.ParseDict(data, cluster_pb2.Cluster())


def refused_cluster(**extra: Any) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        translate_cluster(cluster(**extra), P)
    return e.value


def test_defaults() -> None:
    c = translate_cluster(cluster(lb_policy="RING_HASH"), P)
    assert c.lb_policy is LbPolicy.RING_HASH
    assert (c.ring_hash_minimum_ring_size, c.ring_hash_maximum_ring_size) == (1024, 8388608)
    c = translate_cluster(cluster(lb_policy="MAGLEV"), P)
    assert c.maglev_table_size == 65537
    c = translate_cluster(cluster(lb_policy="LEAST_REQUEST"), P)
    assert (c.least_request_choice_count, c.least_request_active_request_bias) == (2, None)


def test_configs_read() -> None:
    c = translate_cluster(
        cluster(
            lb_policy="LEAST_REQUEST",
            least_request_lb_config={
                "choice_count": 3,
                "active_request_bias": {"default_value": 0.5, "runtime_key": "k"},
            },
        ),
        P,
    )
    assert (c.least_request_choice_count, c.least_request_active_request_bias) == (3, 0.5)
    c = translate_cluster(
        cluster(
            lb_policy="RING_HASH", ring_hash_lb_config={"minimum_ring_size": 64, "maximum_ring_size": 128}
        ),
        P,
    )
    assert (c.ring_hash_minimum_ring_size, c.ring_hash_maximum_ring_size) == (64, 128)
    c = translate_cluster(cluster(lb_policy="MAGLEV", maglev_lb_config={"table_size": 251}), P)
    assert c.maglev_table_size == 251
    # A config for another policy is ignored, as Envoy does.
    c = translate_cluster(cluster(lb_policy="ROUND_ROBIN", maglev_lb_config={"table_size": 4}), P)
    assert c.maglev_table_size == 65537


@pytest.mark.parametrize(
    ("extra", "path", "reason"),
    [
        (
            {"lb_policy": "LEAST_REQUEST", "least_request_lb_config": {"choice_count": 1}},
            f"{P}.least_request_lb_config.choice_count",
            "value must be greater than or equal to 2",
        ),
        (
            {"lb_policy": "LEAST_REQUEST", "least_request_lb_config": {"slow_start_config": {}}},
            f"{P}.least_request_lb_config.slow_start_config",
            "field is not supported by sidecar yet",
        ),
        (
            {
                "lb_policy": "RING_HASH",
                "ring_hash_lb_config": {"minimum_ring_size": 2048, "maximum_ring_size": 1024},
            },
            f"{P}.ring_hash_lb_config",
            "ring hash: minimum_ring_size (2048) > maximum_ring_size (1024)",
        ),
        (
            {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"maximum_ring_size": 8388609}},
            f"{P}.ring_hash_lb_config.maximum_ring_size",
            "value must be less than or equal to 8388608",
        ),
        (
            {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"hash_function": "MURMUR_HASH_2"}},
            f"{P}.ring_hash_lb_config.hash_function",
            "MURMUR_HASH_2 is not supported by sidecar yet",
        ),
        (
            {"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 65536}},
            f"{P}.maglev_lb_config.table_size",
            "The table size of maglev must be prime number",
        ),
    ],
)
def test_refusals(extra: dict[str, Any], path: str, reason: str) -> None:
    e = refused_cluster(**extra)
    assert (e.path, e.reason) == (path, reason)


def test_endpoint_hash_key_refused_for_hashing_policies() -> None:
    pb = cluster(lb_policy="MAGLEV")
    pb.load_assignment.endpoints[0].lb_endpoints[1].metadata.filter_metadata["envoy.lb"].update(
        {"hash_key": "x"}
    )
    with pytest.raises(ConfigError) as e:
        translate_cluster(pb, P)
    assert (
        e.value.path
        == f"{P}.load_assignment.endpoints[0].lb_endpoints[1].metadata.filter_metadata[envoy.lb].hash_key"
    )


def action(hash_policy: list[dict[str, Any]]) -> rc_pb2.RouteAction:
    return json_format.ParseDict({"cluster": "b", "hash_policy": hash_policy}, rc_pb2.RouteAction())


def test_hash_policy_translated() -> None:
    a = translate_route_action(
        action(
            [
                {"header": {"header_name": "X-User"}},
                {"cookie": {"name": "sess", "path": "/"}, "terminal": True},
                {"connection_properties": {"source_ip": True}},
                {"connection_properties": {"source_ip": False}, "terminal": True},
                {"query_parameter": {"name": "q"}},
            ]
        ),
        "r",
    )
    assert a.hash_policy == (
        HashPolicy(HashPolicyKind.HEADER, "x-user"),
        HashPolicy(HashPolicyKind.COOKIE, "sess", terminal=True),
        HashPolicy(HashPolicyKind.SOURCE_IP),
        HashPolicy(HashPolicyKind.QUERY_PARAMETER, "q"),
    )
    assert translate_route_action(action([]), "r").hash_policy == ()


@pytest.mark.parametrize(
    ("policy", "path", "reason"),
    [
        (
            {"filter_state": {"key": "k"}},
            "r.hash_policy[0].filter_state",
            "field is not supported by sidecar yet",
        ),
        (
            {
                "header": {
                    "header_name": "x",
                    "regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "b"},
                }
            },
            "r.hash_policy[0].header.regex_rewrite",
            "field is not supported by sidecar yet",
        ),
        (
            {"header": {"header_name": ""}},
            "r.hash_policy[0].header.header_name",
            "value length must be at least 1 characters",
        ),
        ({"terminal": True}, "r.hash_policy[0]", 'field: "policy_specifier", reason: is required'),
    ],
)
def test_hash_policy_refusals(policy: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        translate_route_action(action([policy]), "r")
    assert (e.value.path, e.value.reason) == (path, reason)


def _state(pb: cluster_pb2.Cluster) -> Any:
    import asyncio

    from sidecar.observe.stats import Stats
    from sidecar.upstream.cluster_manager import ClusterState

    loop = asyncio.new_event_loop()
    try:
        return ClusterState(translate_cluster(pb, P), Stats(max_slots=4096), loop)
    finally:
        loop.close()


def test_cluster_state_hash_pick_is_sticky_and_matches_the_core() -> None:
    from sidecar.upstream.lb.ring_hash import RingHash

    state = _state(cluster(lb_policy="RING_HASH"))
    assert state.hashing
    ring = RingHash(("127.0.0.1:8001", "127.0.0.1:8002"), (1, 1))
    for h in (0, 1, 2**63, 2**64 - 1, 12345678901234567):
        host = state.pick(h)
        assert host is state.pick(h)
        assert host.address.port == (8001, 8002)[ring.pick(h)]
    # No hash: a random host, both show up.
    assert {state.pick().address.port for _ in range(200)} == {8001, 8002}
    # Re-applying the same endpoints keeps the balancer.
    lb = state.balancer.picker(0)
    state.set_endpoints(h.endpoint for h in state.hosts)
    assert state.balancer.picker(0) is lb


def test_cluster_state_least_request_and_maglev() -> None:
    state = _state(cluster(lb_policy="LEAST_REQUEST"))
    assert not state.hashing
    state.hosts[0].rq_active = 5
    picks = [state.pick().address.port for _ in range(400)]
    # The busy host is chosen only when both samples are it (about a quarter of the time).
    assert picks.count(8001) < 160
    m = _state(cluster(lb_policy="MAGLEV", maglev_lb_config={"table_size": 251}))
    assert m.hashing and m.pick(7) is m.pick(7 + 251)

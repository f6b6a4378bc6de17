"""Envoy's per-resource acceptance of CDS and LDS (CdsApiHelper / LdsApiImpl::onConfigUpdate), on
envoy and on the sidecar against the same fake control plane (tests/support/xds_scenario.py): a
response with one good new resource and one bad one is NACKed (error_detail names the bad one, the
version stays the previous one), the good one is in use, the others keep serving.  (A resource that
fails proto validation (PGV) is refused by Envoy for the whole response at decoding: not covered.)"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from tests.support.fake_xds import CLUSTER, LISTENER, ROUTE
from tests.support.ports import free_port
from tests.support.xds_scenario import Env, eds_cluster, http_listener, poll, route, start_env

pytestmark = pytest.mark.differential


def static_cluster(name: str, port: int) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    c.connect_timeout.seconds = 1
    c.load_assignment.cluster_name = name
    sa = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    sa.address, sa.port_value = "127.0.0.1", port
    return c


def bad_cluster(name: str) -> cluster_pb2.Cluster:
    c = static_cluster(name, 1)
    # Not an IP address: a STATIC cluster cannot resolve it (Envoy: malformed IP address).
    c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address = "bad.example"
    return c


def dynamic_names(env: Env) -> dict[str, list[str]]:
    dump = json.loads(env.admin("/config_dump?include_eds"))
    out: dict[str, list[str]] = {}
    for c in dump["configs"]:
        kind = c["@type"].rsplit(".", 1)[-1]
        if kind == "ClustersConfigDump":
            out["clusters"] = sorted(x["cluster"]["name"] for x in c.get("dynamic_active_clusters", []))
        elif kind == "ListenersConfigDump":
            # (Envoy also lists refused listeners with an error_state: not compared.)
            out["listeners"] = sorted(x["name"] for x in c.get("dynamic_listeners", []) if "active_state" in x)
        elif kind == "EndpointsConfigDump":
            eps = c.get("dynamic_endpoint_configs", [])
            out["endpoint_keys"] = sorted({k for e in eps for k in e})
            out["endpoints"] = sorted(e["endpoint_config"]["cluster_name"] for e in eps)
    return out


async def observe(env: Env) -> list[Any]:
    seen: list[Any] = []
    good = static_cluster("c", env.ups["b"].port)
    clusters = [("a", eds_cluster("a")), ("b", eds_cluster("b"))]
    nonce = await env.push(CLUSTER, [*clusters, ("c", good), ("bad", bad_cluster("bad"))])
    nack = await env.until(lambda r: r.type_url == CLUSTER and r.nonce == nonce)
    seen.append(("cds nack", nack.error is not None and "bad" in nack.error, nack.version))
    await env.push(ROUTE, [("r1", route("r1", "c"))])
    seen.append(("good cluster serves", await poll(env.get, (200, "b"))))
    seen.append(("dump after cds", dynamic_names(env)))
    # LDS: a good new listener and a bad one in one response; l1 unchanged.
    port2 = free_port()
    l2 = http_listener("l2", port2, "r1")
    nonce = await env.push(
        LISTENER,
        [("l1", http_listener("l1", env.port, "r1")), ("l2", l2), ("l3", http_listener("l3", 0, "r1", bad=True))],
    )
    nack = await env.until(lambda r: r.type_url == LISTENER and r.nonce == nonce)
    seen.append(("lds nack", nack.error is not None and "l3" in nack.error, nack.version))
    saved = env.port
    env.port = port2
    seen.append(("good listener serves", await poll(env.get, (200, "b"))))
    env.port = saved
    seen.append(("old listener serves", await env.get()))
    seen.append(("dump after lds", dynamic_names(env)))
    # The bad cluster fixed: accepted (ACK with the new version).
    nonce = await env.push(CLUSTER, [*clusters, ("c", good), ("bad", static_cluster("bad", 1))])
    ack = await env.until(lambda r: r.type_url == CLUSTER and r.nonce == nonce)
    seen.append(("cds ack", ack.error, ack.version == str(env.version)))
    return seen


@pytest.mark.timeout(120)
@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
async def test_partial_acceptance_same_as_envoy(api_type: str, tmp_path: Path) -> None:
    kinds = [k.strip() for k in os.environ.get("DIFF_PROXIES", "envoy,sidecar").split(",") if k.strip()]
    results = {}
    for kind in kinds:
        workdir = tmp_path / kind
        workdir.mkdir()
        async with start_env(kind, api_type, 1, workdir) as env:
            results[kind] = await observe(env)
    ours = results["sidecar"]
    assert ours[0][0] == "cds nack" and ours[0][1] is True
    assert ours[1] == ("good cluster serves", (200, "b"))
    if "envoy" in results:
        for theirs, mine in zip(results["envoy"], ours, strict=True):
            assert mine == theirs

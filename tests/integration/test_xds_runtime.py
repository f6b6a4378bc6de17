"""The sidecar as a process, configured by tests/support/fake_xds.py over ADS (SotW and Delta, one
and two workers): the initial load then traffic, route updates reaching the next request, a NACKed
listener leaving the old config serving, the control plane going away and coming back, EDS-only
updates keeping the cluster's stats, listener removal, updates under load, and /config_dump's
dynamic sections.  The scenario itself is tests/support/xds_scenario.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.fake_xds import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.support.http1 import Client, request
from tests.support.upstream import Behaviour
from tests.support.xds_scenario import Env, cla, http_listener, poll, route, start_env


@pytest.fixture(params=[("GRPC", 1), ("DELTA_GRPC", 1), ("GRPC", 2)], ids=["sotw", "delta", "sotw-2-workers"])
async def env(request: Any, tmp_path: Any) -> AsyncIterator[Env]:
    api_type, workers = request.param
    async with start_env("sidecar", api_type, workers, tmp_path) as e:
        yield e


async def test_initial_load_then_traffic(env: Env) -> None:
    assert await env.get() == (200, "a")
    assert env.stat("cluster_manager.cds.update_success") >= 1
    assert env.stat("listener_manager.lds.update_success") == 1
    assert env.stat("listener_manager.workers_started") == 1


async def test_route_update_reaches_next_request(env: Env) -> None:
    assert await env.get() == (200, "a")
    await env.push(ROUTE, [("r1", route("r1", "b"))])
    assert await poll(env.get, (200, "b")) == (200, "b")
    # Every worker has it (each request is a new connection, spread over the workers' sockets).
    assert [await env.get() for _ in range(8)] == [(200, "b")] * 8


async def test_bad_listener_is_nacked_and_old_config_serves(env: Env) -> None:
    nonce = await env.push(LISTENER, [("l1", http_listener("l1", env.port, "r1", bad=True))])
    nack = await env.until(lambda r: r.nonce == nonce)
    assert nack.error is not None and "stat_prefix" in nack.error
    assert await env.get() == (200, "a")
    assert env.stat("listener_manager.lds.update_rejected") == 1


async def test_control_plane_gone_traffic_flows_then_resubscribes(env: Env) -> None:
    assert env.stream is not None
    await env.stream.drop()
    for _ in range(5):
        assert await env.get() == (200, "a")
    env.stream = await env.fake.next_stream(20)
    got = {(await env.stream.next_request()).type_url for _ in range(4)}
    assert got == {CLUSTER, ENDPOINT, LISTENER, ROUTE}
    assert await env.get() == (200, "a")


async def test_eds_only_update_keeps_cluster_stats(env: Env) -> None:
    for _ in range(3):
        assert await env.get() == (200, "a")
    # Workers flush their counters on a short timer: poll.
    assert await poll(env.stat_at_least("cluster.a.upstream_rq_total", 3), True) is True
    # a now points at b's upstream: same ClusterState, so its counters keep counting.
    await env.push(ENDPOINT, [("a", cla("a", env.ups["b"].port))])
    assert await poll(env.get, (200, "b")) == (200, "b")
    assert await poll(env.stat_at_least("cluster.a.upstream_rq_total", 4), True) is True


async def test_listener_removed_stops_accepting(env: Env) -> None:
    await env.push(LISTENER, [])
    if env.delta:
        assert env.stream is not None
        await env.stream.send_delta(LISTENER, [], removed=["l1"], system_version="x")

    async def refused() -> bool:
        try:
            await env.get()
        except OSError:
            return True
        return False

    assert await poll(refused, True) is True


async def test_config_dump_dynamic_sections(env: Env) -> None:
    dump = json.loads(env.admin("/config_dump?include_eds"))
    by_type = {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}
    clusters = by_type["ClustersConfigDump"]["dynamic_active_clusters"]
    assert sorted(c["cluster"]["name"] for c in clusters) == ["a", "b"]
    assert all(c["version_info"] for c in clusters)
    listeners = by_type["ListenersConfigDump"]["dynamic_listeners"]
    assert [x["name"] for x in listeners] == ["l1"] and "active_state" in listeners[0]
    routes = by_type["RoutesConfigDump"]["dynamic_route_configs"]
    assert [r["route_config"]["name"] for r in routes] == ["r1"]
    eps = by_type["EndpointsConfigDump"]["dynamic_endpoint_configs"]
    assert sorted(e["endpoint_config"]["cluster_name"] for e in eps) == ["a", "b"]


async def test_updates_under_load_fail_no_request(env: Env) -> None:
    """Route, endpoint and listener updates (and a NACK) while a client sends requests on fresh
    connections: every one succeeds, and the last config is the one serving."""
    stop = asyncio.Event()
    results: list[tuple[int, str]] = []

    async def load() -> None:
        while not stop.is_set() and len(results) < 5000:
            try:
                results.append(await env.get())
            except OSError as e:
                results.append((0, repr(e)))

    task = asyncio.ensure_future(load())
    try:
        await env.push(ROUTE, [("r1", route("r1", "b"))])
        await asyncio.sleep(0.2)
        await env.push(ENDPOINT, [("a", cla("a", env.ups["a"].port)), ("b", cla("b", env.ups["a"].port))])
        await asyncio.sleep(0.2)
        # A changed listener on the same address: it warms until r2 arrives, then replaces l1.
        await env.push(LISTENER, [("l1", http_listener("l1", env.port, "r2"))])
        await env.until(lambda r: r.type_url == ROUTE and "r2" in r.names)
        await env.push(ROUTE, [("r1", route("r1", "b")), ("r2", route("r2", "b"))])
        await asyncio.sleep(0.2)
        await env.push(ENDPOINT, [("a", cla("a", env.ups["a"].port)), ("b", cla("b", env.ups["b"].port))])
        await env.push(LISTENER, [("l1", http_listener("l1", env.port, "r2", bad=True))])
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await task
    assert len(results) > 10
    assert [r for r in results if r[0] != 200] == []
    assert await poll(env.get, (200, "b")) == (200, "b")


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(120)
async def test_memory_flat_over_1000_route_updates(tmp_path: Any) -> None:
    async with start_env("sidecar", "GRPC", 1, tmp_path) as env:
        assert env.proxy.proc is not None
        pid = env.proxy.proc.pid

        async def updates(n: int) -> None:
            for i in range(n):
                rc = route("r1", "ab"[i % 2])
                rc.virtual_hosts[0].domains.append(f"host-{i}.example.com")
                nonce = await env.push(ROUTE, [("r1", rc)])
                ack = await env.until(lambda r, nonce=nonce: r.nonce == nonce)  # type: ignore[misc]
                assert ack.error is None

        await updates(200)
        assert await env.get() in ((200, "a"), (200, "b"))
        before = _rss_kb(pid)
        await updates(1000)
        assert await env.get() in ((200, "a"), (200, "b"))
        after = _rss_kb(pid)
        print(f"RSS over 1000 route updates: {before} kB -> {after} kB")
        assert after - before < 8 * 1024, (before, after)


async def test_updated_listener_drains_old_connections(env: Env) -> None:
    """A changed listener: new connections get the new config at once; a request in flight on a
    connection the old one accepted finishes on the old config, and its response asks the client to
    close (connection: close)."""
    env.ups["a"].behave(Behaviour(body=b"a", delay=1.0))
    with Client(env.port) as old:
        old.send(request())
        await asyncio.to_thread(env.ups["a"].wait_for, 1)  # in flight, held by the upstream
        await env.push(LISTENER, [("l1", http_listener("l1", env.port, "r2"))])
        await env.until(lambda r: r.type_url == ROUTE and "r2" in r.names)
        await env.push(ROUTE, [("r1", route("r1", "a")), ("r2", route("r2", "b"))])
        assert await poll(env.get, (200, "b")) == (200, "b")
        resp = await asyncio.to_thread(old.read_response)
        assert (resp.status, resp.text) == (200, "a")
        assert resp.header("connection") == "close"

"""Active health checks on loopback: the cluster manager probes real upstreams, takes a host out when
its health path answers 503 and back when it recovers; a TCP check against a closed port fails that
host; a TCP send/receive check passes on the expected answer.  Waits poll with a deadline; nothing
asserts timings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from sidecar.model.cluster import Cluster
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.model.health_check import HealthCheck, HttpCheck, TcpCheck
from sidecar.observe.stats import Stats
from sidecar.upstream.cluster_manager import ClusterManager, ClusterState
from tests.support.ports import free_port
from tests.support.tcp_upstream import TcpBehaviour, TcpUpstream
from tests.support.upstream import Behaviour, Upstreams

FAST = dict(timeout=0.5, interval=0.05, no_traffic_interval=0.05, unhealthy_threshold=1, healthy_threshold=1)


@pytest.fixture
def ups() -> Iterator[Upstreams]:
    with Upstreams(("a", "b")) as u:
        yield u


def ep(port: int) -> Endpoint:
    return Endpoint(SocketAddress("127.0.0.1", port))


async def start(cfg: Cluster) -> tuple[ClusterManager, ClusterState, Stats]:
    stats = Stats(max_slots=4096)
    cm = ClusterManager(stats, asyncio.get_running_loop())
    cm.update({cfg.name: cfg})
    await cm.initialize()
    cs = cm.get(cfg.name)
    assert cs is not None
    return cm, cs, stats


def served(cs: ClusterState, n: int = 40) -> set[int]:
    out = set()
    for _ in range(n):
        h = cs.pick()
        assert h is not None
        out.add(h.address.port)
    return out


async def stop(cm: ClusterManager, *tcp: TcpUpstream) -> None:
    """Close the probes, then let the upstreams see their connections end before they stop."""
    cm.close()
    await asyncio.sleep(0.01)  # the cancelled sessions close their connections
    for t in tcp:
        t.wait(lambda conns: all(c.done for c in conns), timeout=2.0)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


async def test_http_check_takes_a_failing_host_out_and_back(ups: Upstreams) -> None:
    a, b = ups["a"].port, ups["b"].port
    hc = HealthCheck(http=HttpCheck(path="/healthz"), **FAST)  # type: ignore[arg-type]
    cm, cs, stats = await start(
        Cluster(name="web", endpoints=(ep(a), ep(b)), health_checks=(hc,), update_merge_window=0.0)
    )
    try:
        assert not cs.warming and served(cs) == {a, b}
        probes = [r for r in ups.requests() if r.target == "/healthz"]
        assert probes and probes[0].request_line == b"GET /healthz HTTP/1.1"
        assert probes[0].headers[:2] == (("host", "web"), ("user-agent", "Envoy/HC"))
        ups["b"].on("/healthz", Behaviour(status=503))
        assert await until(lambda: served(cs) == {a})
        assert stats.value("cluster.web.health_check.healthy") == 1
        assert stats.value("cluster.web.membership_healthy") == 1
        ups["b"].reset()  # answers 200 again
        assert await until(lambda: served(cs) == {a, b})
        assert stats.value("cluster.web.health_check.failure") >= 1
        assert stats.value("cluster.web.health_check.network_failure") == 0
        assert stats.value("cluster.web.health_check.attempt") >= stats.value(
            "cluster.web.health_check.success"
        )
        # Probes are not upstream traffic.
        assert stats.value("cluster.web.upstream_cx_total") == 0
    finally:
        await stop(cm)


async def test_tcp_check_against_a_closed_port() -> None:
    tcp = TcpUpstream("open")
    tcp.start()
    closed = free_port()
    try:
        hc = HealthCheck(tcp=TcpCheck(), **FAST)  # type: ignore[arg-type]
        cm, cs, stats = await start(
            Cluster(name="t", endpoints=(ep(tcp.port), ep(closed)), health_checks=(hc,))
        )
        try:
            # Warmed: each host had its first check, so the closed one is out already.
            assert served(cs) == {tcp.port}
            assert stats.value("cluster.t.health_check.healthy") == 1
            assert stats.value("cluster.t.health_check.network_failure") >= 1
            assert cs.hosts[1].health_flags() == ("failed_active_hc",)
        finally:
            await stop(cm, tcp)
    finally:
        tcp.close()


async def test_tcp_send_and_receive() -> None:
    good, bad = TcpUpstream("good"), TcpUpstream("bad")
    good.behave(TcpBehaviour(greeting=b"", echo=True))  # echoes PING back: the receive matches
    bad.behave(TcpBehaviour(greeting=b"nope", echo=False))
    good.start()
    bad.start()
    try:
        check = TcpCheck(send=b"PING", receive=(b"PI", b"NG"))
        hc = HealthCheck(tcp=check, **{**FAST, "timeout": 0.3})  # type: ignore[arg-type]
        cm, cs, stats = await start(
            Cluster(name="p", endpoints=(ep(good.port), ep(bad.port)), health_checks=(hc,))
        )
        try:
            assert served(cs) == {good.port}
            assert await until(lambda: stats.value("cluster.p.health_check.success") >= 3)
            # The unanswered check ends at its timeout: a network failure.
            assert stats.value("cluster.p.health_check.network_failure") >= 1
            assert any(b"PING" in bytes(c.received) for c in good.connections)
        finally:
            await stop(cm, good, bad)
    finally:
        good.close()
        bad.close()

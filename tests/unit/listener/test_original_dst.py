"""listener.original_dst: sockaddr parsing, the TPROXY fallback and the capture socket options;
upstream.original_dst: the ORIGINAL_DST cluster's host choice (header, restored destination, port
override, cleanup) and upstream_bind_config's source address."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from sidecar.listener.original_dst import (
    IP_TRANSPARENT,
    SOL_IP,
    original_destination,
    parse_sockaddr,
    set_capture_options,
)
from sidecar.model.cluster import Cluster, DiscoveryType, LbPolicy, OriginalDstConfig
from sidecar.model.endpoint import SocketAddress
from sidecar.observe.stats import Stats
from sidecar.upstream.cluster_manager import ClusterManager
from sidecar.upstream.original_dst import parse_host_port, source_address


def sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("<H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + b"\x00" * 8


def sockaddr_in6(ip: str, port: int) -> bytes:
    return (
        struct.pack("<H", socket.AF_INET6)
        + struct.pack("!HI", port, 0)
        + socket.inet_pton(socket.AF_INET6, ip)
        + struct.pack("<I", 0)
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (sockaddr_in("10.1.2.3", 8080), ("10.1.2.3", 8080)),
        (sockaddr_in("127.0.0.1", 65535), ("127.0.0.1", 65535)),
        (sockaddr_in("10.1.2.3", 80) + b"\x00" * 12, ("10.1.2.3", 80)),  # a 28-byte buffer
        (sockaddr_in6("fd00::1", 443), ("fd00::1", 443)),
        (sockaddr_in6("::ffff:10.0.0.1", 80), ("::ffff:a00:1", 80)),
        (b"", None),
        (b"\x02\x00\x00", None),
        (struct.pack("<H", socket.AF_UNIX) + b"\x00" * 14, None),
        (sockaddr_in6("::1", 1)[:20], None),
    ],
)
def test_parse_sockaddr(raw: bytes, expected: tuple[str, int] | None) -> None:
    assert parse_sockaddr(raw) == expected


def test_unix_socket_has_no_original_destination() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert original_destination(a) is None


def test_transparent_socket_falls_back_to_its_local_address() -> None:
    """Not redirected and not tracked: SO_ORIGINAL_DST fails; on an IP_TRANSPARENT socket the local
    address is the original destination (TPROXY), else there is none."""
    with socket.socket() as srv:
        set_capture_options(srv, transparent=True, freebind=True)
        assert srv.getsockopt(SOL_IP, IP_TRANSPARENT) == 1
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()) as cli:
            acc, _ = srv.accept()
            with acc:
                dst = original_destination(acc)
                # With conntrack tracking loopback, SO_ORIGINAL_DST itself answers (the same address).
                assert dst == srv.getsockname()
                assert cli.getpeername() == srv.getsockname()


# -- ORIGINAL_DST clusters ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"10.0.0.1:80", SocketAddress("10.0.0.1", 80)),
        (b"[::1]:8443", SocketAddress("::1", 8443)),
        (b"[0:0::1]:1", SocketAddress("::1", 1)),
        (b"10.0.0.1", None),
        (b"host:80", None),
        (b"10.0.0.1:99999", None),
        (b"10.0.0.1:-1", None),
        (b"::1:80", None),
        (b"[::1]80", None),
        (b"\xff:1", None),
    ],
)
def test_parse_host_port(value: bytes, expected: SocketAddress | None) -> None:
    assert parse_host_port(value) == expected


def od_cluster(**cfg: object) -> Cluster:
    return Cluster(
        "PassthroughCluster",
        type=DiscoveryType.ORIGINAL_DST,
        lb_policy=LbPolicy.CLUSTER_PROVIDED,
        original_dst=OriginalDstConfig(**cfg),  # type: ignore[arg-type]
    )


async def test_original_dst_hosts_by_destination_header_and_override() -> None:
    stats = Stats()
    cm = ClusterManager(stats, asyncio.get_running_loop())
    cm.update({"p": od_cluster(use_http_header=True), "q": od_cluster(upstream_port_override=9999)})
    p = cm.get("p")
    assert p is not None and p.original_dst is not None
    assert p.pick() is None  # no context: nothing to connect to
    dst = SocketAddress("10.0.0.1", 80)
    h1 = p.original_dst.pick(dst)
    assert h1 is not None and h1.address == dst
    assert p.original_dst.pick(dst) is h1  # the same host (and pool) for the same destination
    h2 = p.original_dst.pick(dst, b"10.0.0.2:8080")
    assert h2 is not None and h2.address == SocketAddress("10.0.0.2", 8080)
    # An invalid header counts and falls back to the restored destination.
    assert p.original_dst.pick(dst, b"nonsense") is h1
    assert stats.value("cluster.PassthroughCluster.original_dst_host_invalid") == 1
    assert p.original_dst.pick(None) is None
    assert {h.address for h in p.hosts} == {dst, SocketAddress("10.0.0.2", 8080)}
    q = cm.get("q")
    assert q is not None and q.original_dst is not None
    # use_http_header is off for q: the header is not consulted.
    hq = q.original_dst.pick(dst, b"10.0.0.2:8080")
    assert hq is not None and hq.address == SocketAddress("10.0.0.1", 9999)
    cm.close()


async def test_unused_hosts_are_cleaned_up() -> None:
    cm = ClusterManager(Stats(), asyncio.get_running_loop())
    cm.update({"p": od_cluster(cleanup_interval=0.05)})
    p = cm.get("p")
    assert p is not None and p.original_dst is not None
    kept, dropped = SocketAddress("10.0.0.1", 80), SocketAddress("10.0.0.2", 80)
    busy = p.original_dst.pick(SocketAddress("10.0.0.3", 80))
    assert busy is not None
    busy.cx_active = 1  # a connection in flight keeps its host
    p.original_dst.pick(dropped)
    for _ in range(40):  # bounded: a few cleanup intervals
        p.original_dst.pick(kept)
        await asyncio.sleep(0.02)
        if dropped not in p.original_dst.hosts:
            break
    assert dropped not in p.original_dst.hosts
    assert set(p.original_dst.hosts) == {kept, SocketAddress("10.0.0.3", 80)}
    assert p.stats.membership_total == 2
    cm.close()
    assert p.original_dst.timer is None


def test_source_address_only_for_the_same_family() -> None:
    c = Cluster("in", upstream_bind_address=SocketAddress("127.0.0.6", 0))
    assert source_address(c, SocketAddress("10.0.0.1", 80)) == ("127.0.0.6", 0)
    assert source_address(c, SocketAddress("fd00::1", 80)) is None
    assert source_address(c, SocketAddress("", 0, pipe="/tmp/x")) is None
    assert source_address(Cluster("none"), SocketAddress("10.0.0.1", 80)) is None

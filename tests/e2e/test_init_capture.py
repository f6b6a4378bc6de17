"""What the installed rules do to real connections, in a pod namespace joined to a remote one.

Each mode is checked: iptables through the nf_tables backend, through the legacy backend, and
Istio's native nftables mode.  Listeners stand in for the proxy (15001 outbound, 15006 inbound) and
read SO_ORIGINAL_DST to show the original destination survives the redirect.
"""

from __future__ import annotations

import socket

import pytest

from tests.e2e.conftest import InitRunner
from tests.support import netns

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(30)]

MODES = {
    "iptables-nft": ("--force-iptables-binary=nft",),
    "iptables-legacy": ("--force-iptables-binary=legacy",),
    "nftables": ("--native-nftables",),
}

# What istio's sidecar injector passes: the agent/envoy admin ports are excluded inbound (-d).
INJECTOR_FLAGS = (
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
)

CONNECT_AS = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.sendall(b"hello")
s.close()
"""


def _connect(ns: netns.NetNS, host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = ns.socket(family)
    sock.settimeout(3)
    sock.connect((host, port))
    return sock


def _nothing_pending(listener: socket.socket) -> bool:
    """True when no connection waits on the listener (handshakes complete before connect() returns)."""
    listener.setblocking(False)
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return True
    finally:
        listener.settimeout(1.0)
    conn.close()
    return False


@pytest.mark.parametrize("mode", list(MODES))
def test_outbound_app_traffic_lands_on_15001_with_original_destination(
    pair: netns.Pair, sidecar_init: InitRunner, mode: str
) -> None:
    sidecar_init(pair.pod, *INJECTOR_FLAGS, *MODES[mode])
    proxy = netns.listener(pair.pod, "0.0.0.0", 15001)
    with _connect(pair.pod, pair.remote_ip, 80) as app:  # uid 0: an app, not the proxy
        conn, _ = proxy.accept()
        with conn:
            assert netns.original_dst(conn) == (pair.remote_ip, 80)
            app.sendall(b"ping")
            assert conn.recv(4) == b"ping"


@pytest.mark.parametrize("mode", list(MODES))
def test_proxy_uid_1337_is_not_captured(pair: netns.Pair, sidecar_init: InitRunner, mode: str) -> None:
    sidecar_init(pair.pod, *INJECTOR_FLAGS, *MODES[mode])
    proxy = netns.listener(pair.pod, "0.0.0.0", 15001)
    remote = netns.listener(pair.remote, pair.remote_ip, 80)
    pair.pod.python(CONNECT_AS, pair.remote_ip, "80", user=1337)
    conn, peer = remote.accept()
    with conn:
        assert peer[0] == pair.pod_ip
        assert conn.recv(5) == b"hello"
    assert _nothing_pending(proxy)


@pytest.mark.parametrize("mode", list(MODES))
def test_inbound_lands_on_15006_with_original_destination(
    pair: netns.Pair, sidecar_init: InitRunner, mode: str
) -> None:
    sidecar_init(pair.pod, *INJECTOR_FLAGS, *MODES[mode])
    inbound = netns.listener(pair.pod, "0.0.0.0", 15006)
    with _connect(pair.remote, pair.pod_ip, 8080):
        conn, peer = inbound.accept()
        with conn:
            assert peer[0] == pair.remote_ip
            assert netns.original_dst(conn) == (pair.pod_ip, 8080)


@pytest.mark.parametrize("mode", list(MODES))
def test_excluded_ports_and_cidrs_are_not_captured(
    pair: netns.Pair, sidecar_init: InitRunner, mode: str
) -> None:
    pair.remote.run("ip", "addr", "add", "10.201.0.3/24", "dev", "eth0")
    sidecar_init(pair.pod, *INJECTOR_FLAGS, "-x", "10.201.0.3/32", "-o", "9090", *MODES[mode])
    proxy = netns.listener(pair.pod, "0.0.0.0", 15001)
    inbound = netns.listener(pair.pod, "0.0.0.0", 15006)
    direct = [("10.201.0.3", 80), (pair.remote_ip, 9090)]
    remotes = [netns.listener(pair.remote, host, port) for host, port in direct]
    for (host, port), remote in zip(direct, remotes, strict=True):
        with _connect(pair.pod, host, port):
            conn, _ = remote.accept()  # reached the real destination
            conn.close()
    assert _nothing_pending(proxy)
    # Inbound: 15021 (excluded by -d, as the injector does) and 15008 (the tunnel port, always).
    for port in (15021, 15008):
        app = netns.listener(pair.pod, "0.0.0.0", port)
        with _connect(pair.remote, pair.pod_ip, port):
            conn, _ = app.accept()
            conn.close()
    assert _nothing_pending(inbound)
    # ... while everything else is still captured.
    with _connect(pair.pod, pair.remote_ip, 9091):
        conn, _ = proxy.accept()
        assert netns.original_dst(conn) == (pair.remote_ip, 9091)
        conn.close()


@pytest.mark.parametrize("mode", ["iptables-nft", "nftables"])
def test_ipv6_outbound_and_inbound_are_captured_with_dual_stack(
    pair: netns.Pair, sidecar_init: InitRunner, mode: str
) -> None:
    sidecar_init(pair.pod, *INJECTOR_FLAGS, "--dual-stack", *MODES[mode])
    proxy = netns.listener(pair.pod, "::", 15001)
    inbound = netns.listener(pair.pod, "::", 15006)
    with _connect(pair.pod, pair.remote_ip6, 80):
        conn, _ = proxy.accept()
        assert netns.original_dst(conn) == (pair.remote_ip6, 80)
        conn.close()
    with _connect(pair.remote, pair.pod_ip6, 8080):
        conn, _ = inbound.accept()
        assert netns.original_dst(conn) == (pair.pod_ip6, 8080)
        conn.close()
    assert (
        "::6/128" in pair.pod.run("ip", "-6", "addr", "show", "dev", "lo").stdout
    )  # istio's ConfigureRoutes


@pytest.mark.parametrize("mode", ["iptables-nft", "nftables"])
def test_proxy_to_app_over_loopback_goes_inbound_and_127_0_0_6_does_not(
    pair: netns.Pair, sidecar_init: InitRunner, mode: str
) -> None:
    """The proxy calling the pod's own IP goes through 15006 (app->VIP->proxy->proxy->app);
    the inbound passthrough's upstream, bound to 127.0.0.6, reaches the app directly."""
    sidecar_init(pair.pod, *INJECTOR_FLAGS, *MODES[mode])
    inbound = netns.listener(pair.pod, "0.0.0.0", 15006)
    app = netns.listener(pair.pod, "0.0.0.0", 8080)
    pair.pod.python(CONNECT_AS, pair.pod_ip, "8080", user=1337)
    conn, _ = inbound.accept()
    assert netns.original_dst(conn) == (pair.pod_ip, 8080)
    conn.close()
    bound_to_six = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.6", 0))
s.settimeout(3)
s.connect((sys.argv[1], 8080))
s.close()
"""
    pair.pod.python(bound_to_six, pair.pod_ip, user=1337)
    conn, peer = app.accept()
    assert peer[0] == "127.0.0.6"
    conn.close()
    assert _nothing_pending(inbound)

"""TPROXY mode end to end: policy routing set up over netlink, inbound connections delivered to a
transparent listener on 15006 with their original destination as the socket's local address."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import InitRunner
from tests.support import netns

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(30)]

MODES = {"iptables-nft": ("--force-iptables-binary=nft",), "nftables": ("--native-nftables",)}
FLAGS = ("-m", "TPROXY", "-b", "*", "-d", "15021", "-i", "*")


@pytest.mark.parametrize("mode", list(MODES))
def test_tproxy_inbound_reaches_transparent_listener_and_cleanup_removes_routing(
    pair: netns.Pair, sidecar_init: InitRunner, mode: str
) -> None:
    pod = pair.pod
    rules_before = pod.run("ip", "rule").stdout
    sidecar_init(pod, *FLAGS, *MODES[mode])
    assert "fwmark 0x539 lookup 133" in pod.run("ip", "rule").stdout
    assert "local default dev lo" in pod.run("ip", "route", "show", "table", "133").stdout

    proxy = netns.listener(pod, "0.0.0.0", 15006, transparent=True)
    client = pair.remote.socket()
    client.settimeout(3)
    client.connect((pair.pod_ip, 8080))
    conn, peer = proxy.accept()
    with conn, client:
        # TPROXY keeps the packet unchanged: the accepted socket is "bound" to the original destination.
        assert conn.getsockname() == (pair.pod_ip, 8080)
        assert peer == client.getsockname()
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.sendall(b"pong")
        assert client.recv(4) == b"pong"

    # An excluded port is not diverted: a plain listener on it gets the connection.
    plain = netns.listener(pod, "0.0.0.0", 15021)
    with pair.remote.socket() as direct:
        direct.settimeout(3)
        direct.connect((pair.pod_ip, 15021))
        c2, _ = plain.accept()
        c2.close()

    sidecar_init(pod, *FLAGS, *MODES[mode], "--cleanup")
    assert pod.run("ip", "rule").stdout == rules_before
    assert pod.run("ip", "route", "show", "table", "133").stdout == ""


def test_cleanup_without_mode_flags_still_removes_tproxy_leftovers(
    pair: netns.Pair, sidecar_init: InitRunner
) -> None:
    """A cleanup run given only the defaults finds TPROXY's mark rules and routing of the same mark/table."""
    pod = pair.pod
    before = pod.run("iptables-nft-save").stdout.count("\n-A ")
    sidecar_init(pod, *FLAGS, "-c", "eth9", "--force-iptables-binary=nft")
    assert "CONNMARK" in pod.run("iptables-nft-save", "-t", "mangle").stdout
    sidecar_init(pod, "-c", "eth9", "--cleanup", "--force-iptables-binary=nft")
    saved = pod.run("iptables-nft-save").stdout
    assert saved.count("\n-A ") == before
    assert "fwmark" not in pod.run("ip", "rule").stdout
    assert pod.run("ip", "route", "show", "table", "133").stdout == ""

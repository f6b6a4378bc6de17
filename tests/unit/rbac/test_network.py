"""The network RBAC evaluator (l4/rbac.py): one decision on the first bytes by default, a check per
read with CONTINUOUS, shadow rules counted only, no rules no counting, and Envoy's stat names."""

from __future__ import annotations

from typing import Any

from sidecar.l4.rbac import NetworkRbacRuntime, connection_view
from sidecar.model.rbac import PeerIdentity
from sidecar.observe.stats import Stats
from sidecar.rbac import ConnectionView
from tests.unit.rbac.support import SPIFFE_SLEEP, ip, network_rbac

FROM_5 = {
    "action": "ALLOW",
    "policies": {
        "from-5": {
            "permissions": [{"any": True}],
            "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.5", "prefix_len": 32}}],
        }
    },
}
SLEEP_ONLY = {
    "action": "ALLOW",
    "policies": {
        "sleep": {
            "permissions": [{"destination_port": 9000}],
            "principals": [{"authenticated": {"principal_name": {"exact": SPIFFE_SLEEP}}}],
        }
    },
}


def view(source: str = "127.0.0.5", port: int = 9000, peer: PeerIdentity | None = None) -> ConnectionView:
    return ConnectionView(source=ip(source), destination=ip("127.0.0.1"), port=port, peer=peer)


def counts(stats: Stats) -> dict[str, int]:
    return {name: v for name, _, v in stats.items()}


def test_one_time_decides_on_the_first_bytes() -> None:
    stats = Stats(max_slots=64)
    rt = NetworkRbacRuntime(network_rbac({"stat_prefix": "tcp.", "rules": FROM_5}), stats)
    ok = rt.connection()
    assert ok.pending and ok.on_data(view()) and not ok.pending
    assert ok.on_data(view())  # later reads: no new check, not counted
    bad = rt.connection()
    assert bad.on_data(view("127.0.0.6")) is False
    assert bad.detail == "rbac_access_denied_matched_policy[none]"
    assert counts(stats) == {
        "tcp.rbac.allowed": 1,
        "tcp.rbac.denied": 1,
        "tcp.rbac.shadow_allowed": 0,
        "tcp.rbac.shadow_denied": 0,
    }


def test_continuous_checks_every_read() -> None:
    stats = Stats(max_slots=64)
    cfg = network_rbac(
        {
            "stat_prefix": "tcp",
            "enforcement_type": "CONTINUOUS",
            "rules": FROM_5,
            "shadow_rules": {"action": "DENY"},
        }
    )
    rt = NetworkRbacRuntime(cfg, stats)
    gate = rt.connection()
    for _ in range(3):
        assert gate.on_data(view()) and gate.pending
    assert counts(stats)["tcp.rbac.allowed"] == 3
    assert counts(stats)["tcp.rbac.shadow_allowed"] == 3


def test_deny_policy_names_the_match() -> None:
    rt = NetworkRbacRuntime(network_rbac({"stat_prefix": "x", "rules": {**FROM_5, "action": "DENY"}}), None)
    gate = rt.connection()
    assert gate.on_data(view()) is False
    assert gate.detail == "rbac_access_denied_matched_policy[from-5]"
    assert rt.stats.value("denied") == 1


def test_shadow_only_never_denies() -> None:
    stats = Stats(max_slots=64)
    cfg = network_rbac(
        {"stat_prefix": "tcp.", "shadow_rules": FROM_5, "shadow_rules_stat_prefix": "istio_dry_run_allow_"}
    )
    rt = NetworkRbacRuntime(cfg, stats)
    assert rt.connection().on_data(view("10.0.0.1"))
    assert rt.connection().on_data(view())
    got = counts(stats)
    assert got["tcp.rbac.istio_dry_run_allow_.shadow_denied"] == 1
    assert got["tcp.rbac.istio_dry_run_allow_.shadow_allowed"] == 1
    assert got["tcp.rbac.allowed"] == got["tcp.rbac.denied"] == 0


def test_no_engine_allows_without_counting() -> None:
    rt = NetworkRbacRuntime(network_rbac({"stat_prefix": "tcp."}), None)
    gate = rt.connection()
    assert gate.on_data(view("10.9.9.9")) and not gate.pending
    assert rt.stats.value("allowed") == rt.stats.value("denied") == 0


def test_authenticated_principal_with_a_fake_peer() -> None:
    """TLS is built separately: a fake peer identity stands in for the handshake's certificate."""
    rt = NetworkRbacRuntime(network_rbac({"stat_prefix": "tcp.", "rules": SLEEP_ONLY}), None)
    assert rt.connection().on_data(view(peer=PeerIdentity(uri_sans=(SPIFFE_SLEEP,))))
    assert not rt.connection().on_data(
        view(peer=PeerIdentity(uri_sans=("spiffe://cluster.local/ns/x/sa/y",)))
    )
    assert not rt.connection().on_data(view(peer=None))  # plaintext
    assert not rt.connection().on_data(view(port=9001, peer=PeerIdentity(uri_sans=(SPIFFE_SLEEP,))))


def test_delay_deny_is_exposed_to_the_wiring() -> None:
    rt = NetworkRbacRuntime(network_rbac({"stat_prefix": "t", "delay_deny": "0.25s", "rules": {}}), None)
    assert rt.delay_deny == 0.25
    assert rt.connection().on_data(view()) is False


class FakeTransport:
    def __init__(self, extra: dict[str, Any]) -> None:
        self.extra = extra

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)


class FakeConnection:
    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.peer_identity = PeerIdentity(uri_sans=(SPIFFE_SLEEP,))
        self.requested_server_name = "outbound_.9000_._.svc"


def test_connection_view_of_a_transport() -> None:
    t = FakeTransport({"peername": ("127.0.0.5", 40000), "sockname": ("127.0.0.1", 9000)})
    v = connection_view(t)
    assert (v.source, v.destination, v.port, v.sni, v.peer) == (
        ip("127.0.0.5"),
        ip("127.0.0.1"),
        9000,
        "",
        None,
    )
    redirected = connection_view(t, local=("10.0.0.7", 8080))
    assert (redirected.destination, redirected.port) == (ip("10.0.0.7"), 8080)
    tls = connection_view(t, FakeConnection(t))
    assert tls.peer == PeerIdentity(uri_sans=(SPIFFE_SLEEP,)) and tls.sni == "outbound_.9000_._.svc"
    v6 = connection_view(FakeTransport({"peername": ("::1", 1, 0, 0), "sockname": ("::1", 2, 0, 0)}))
    assert (v6.source, v6.port) == (ip("::1"), 2)

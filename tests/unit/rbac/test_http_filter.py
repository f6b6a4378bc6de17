"""The HTTP RBAC filter without sockets: decisions, the 403 local reply, shadow rules counted and
never enforced, per-route RBACPerRoute, Envoy's stat names, and the request view's addresses
(remote_ip by Envoy's x-forwarded-for rules)."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.http.events import RequestHead
from sidecar.http.filters.base import CONTINUE, STOP
from sidecar.http.filters.rbac import (
    DENIED_BODY,
    HttpRequestView,
    RbacFilter,
    RbacRuntime,
    last_xff_address,
)
from sidecar.http.filters.registry import filter_factories
from sidecar.model.listener import HttpConnectionManager, HttpFilterConfig
from sidecar.model.rbac import HttpRbac, PeerIdentity, RbacPerRoute
from sidecar.model.route import RouteConfiguration
from sidecar.observe.stats import Stats
from sidecar.rbac.stats import RbacStats
from tests.unit.rbac.support import SPIFFE_SLEEP, http_rbac, ip

GET_ONLY = {
    "action": "ALLOW",
    "policies": {
        "get": {
            "permissions": [{"header": {"name": ":method", "string_match": {"exact": "GET"}}}],
            "principals": [{"any": True}],
        }
    },
}
DENY_ADMIN = {
    "action": "DENY",
    "policies": {
        "admin": {
            "permissions": [{"url_path": {"path": {"prefix": "/admin"}}}],
            "principals": [{"any": True}],
        }
    },
}


class FakeConn:
    def __init__(self, peer: str = "127.0.0.5", local: str = "127.0.0.1", port: int = 15006) -> None:
        self.peer_ip = peer.encode()
        self.local_ip = local.encode()
        self.local_addr = b"%s:%d" % (self.local_ip, port)
        self.transport = None


class Level:
    def __init__(self, cfg: object = None, name: str = "envoy.filters.http.rbac") -> None:
        self.typed_per_filter_config = () if cfg is None else ((name, cfg),)


class FakeStream:
    def __init__(
        self, conn: FakeConn | None = None, route: Level | None = None, vhost: Level | None = None
    ) -> None:
        self.conn = conn or FakeConn()
        self.route = route
        self.vhost = vhost
        self.replies: list[tuple[int, bytes | None]] = []

    def local_reply(self, status: int, body: bytes | None, extra: Any = None, close: bool = False) -> None:
        self.replies.append((status, body))


def head(
    method: str = "GET", path: str = "/", headers: list[tuple[bytes, bytes]] | None = None
) -> RequestHead:
    return RequestHead(method.encode(), path.encode(), b"1.1", list(headers or []), b"svc", True)


def run(
    cfg: HttpRbac, h: RequestHead, stream: FakeStream | None = None, stats: RbacStats | None = None
) -> tuple[int, FakeStream, RbacStats]:
    st = stats or RbacStats(None, "http.ing.", cfg.rules_stat_prefix, cfg.shadow_rules_stat_prefix)
    s = stream or FakeStream()
    verdict = RbacFilter(RbacRuntime("envoy.filters.http.rbac", cfg, st)).on_request_head(s, h, True)  # type: ignore[arg-type]
    return verdict, s, st


def test_allowed_and_denied() -> None:
    cfg = http_rbac({"rules": GET_ONLY})
    v, s, st = run(cfg, head("GET"))
    assert v == CONTINUE and s.replies == []
    v, s, st = run(cfg, head("POST"), stats=st)
    assert v == STOP and s.replies == [(403, b"RBAC: access denied")]
    assert DENIED_BODY == b"RBAC: access denied"
    assert (st.value("allowed"), st.value("denied")) == (1, 1)


def test_no_rules_enforces_and_counts_nothing() -> None:
    v, s, st = run(HttpRbac(), head("DELETE"))
    assert v == CONTINUE and s.replies == []
    assert [st.value(n) for n in ("allowed", "denied", "shadow_allowed", "shadow_denied")] == [0, 0, 0, 0]


def test_empty_rules_deny_everything() -> None:
    v, s, _ = run(http_rbac({"rules": {}}), head("GET"))
    assert v == STOP and s.replies[0][0] == 403


def test_shadow_rules_are_counted_not_enforced() -> None:
    cfg = http_rbac({"shadow_rules": DENY_ADMIN, "track_per_rule_stats": True})
    st = RbacStats(None, "http.ing.", "", "")
    v, s, _ = run(cfg, head("GET", "/admin/x"), stats=st)
    assert v == CONTINUE and s.replies == []
    run(cfg, head("GET", "/ok"), stats=st)
    assert (st.value("shadow_allowed"), st.value("shadow_denied")) == (1, 1)
    assert (st.value("allowed"), st.value("denied")) == (0, 0)
    assert st.value("http.ing.rbac.policy.admin.shadow_denied") == 1


def test_per_route_override_replaces_or_disables() -> None:
    cfg = http_rbac({"rules": GET_ONLY})
    off = RbacPerRoute(None)
    v, s, st = run(cfg, head("POST"), FakeStream(route=Level(off)))
    assert v == CONTINUE and s.replies == [] and st.value("allowed") == 0  # disabled: not counted
    deny_all = RbacPerRoute(http_rbac({"rules": {}}))
    v, s, st = run(cfg, head("GET"), FakeStream(route=Level(deny_all)), st)
    assert v == STOP and st.value("denied") == 1
    # The virtual host's config applies when the route has none; the route's wins over it.
    v, _, _ = run(cfg, head("GET"), FakeStream(vhost=Level(deny_all)))
    assert v == STOP
    v, _, _ = run(cfg, head("POST"), FakeStream(route=Level(off), vhost=Level(deny_all)))
    assert v == CONTINUE
    # Another filter's per-route config is not ours.
    v, _, _ = run(cfg, head("POST"), FakeStream(route=Level(off, name="other-rbac")))
    assert v == STOP


def test_stat_names_match_envoy() -> None:
    """Names seen on Envoy 1.40 with rules_stat_prefix rp_, shadow_rules_stat_prefix sp_ and
    track_per_rule_stats (shadow counters hang off rbac., not off the rules prefix)."""
    stats = Stats(max_slots=256)
    cfg = http_rbac(
        {
            "rules": GET_ONLY,
            "shadow_rules": DENY_ADMIN,
            "rules_stat_prefix": "rp_",
            "shadow_rules_stat_prefix": "sp_",
            "track_per_rule_stats": True,
        }
    )
    st = RbacStats(stats, "http.ing.", "rp_", "sp_")
    run(cfg, head("GET", "/x"), stats=st)
    run(cfg, head("POST", "/admin"), stats=st)
    got = {name: v for name, _, v in stats.items() if "rbac" in name}
    assert got == {
        "http.ing.rbac.rp_.allowed": 1,
        "http.ing.rbac.rp_.denied": 1,
        "http.ing.rbac.rp_.policy.get.allowed": 1,
        "http.ing.rbac.sp_.shadow_allowed": 1,
        "http.ing.rbac.sp_.shadow_denied": 1,
        "http.ing.rbac.sp_.policy.admin.shadow_denied": 1,
    }
    plain = Stats(max_slots=64)
    RbacStats(plain, "http.ing.")
    assert sorted(n for n, _, _ in plain.items()) == [
        "http.ing.rbac.allowed",
        "http.ing.rbac.denied",
        "http.ing.rbac.shadow_allowed",
        "http.ing.rbac.shadow_denied",
    ]


def test_two_filters_with_one_prefix_add_up() -> None:
    """Istio's DENY and ALLOW filters count into the same http.<prefix>.rbac.allowed."""
    stats = Stats(max_slots=64)
    rc = RouteConfiguration(name="rc", virtual_hosts=())
    hcm = HttpConnectionManager(
        stat_prefix="ing",
        route_config=rc,
        http_filters=(
            HttpFilterConfig(
                "deny",
                "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                http_rbac({"rules": DENY_ADMIN}),
            ),
            HttpFilterConfig(
                "allow",
                "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                http_rbac({"rules": GET_ONLY}),
            ),
        ),
    )
    deny, allow, _router = filter_factories(hcm, stats)
    s = FakeStream()
    for f in (deny(), allow()):
        assert f.on_request_head(s, head("GET", "/x"), True) == CONTINUE
    assert deny().on_request_head(s, head("GET", "/admin"), True) == STOP
    assert stats.value("http.ing.rbac.allowed") == 2
    assert stats.value("http.ing.rbac.denied") == 1


# -- the request view ------------------------------------------------------------------------------


def hcm(**kw: Any) -> HttpConnectionManager:
    return HttpConnectionManager(
        stat_prefix="x", route_config=RouteConfiguration(name="rc", virtual_hosts=()), **kw
    )


@pytest.mark.parametrize(
    ("xff", "skip", "expected"),
    [
        (None, 0, None),
        ("10.0.0.1", 0, "10.0.0.1"),
        ("192.0.2.10, 192.0.2.1, 10.0.0.1", 0, "10.0.0.1"),
        ("192.0.2.10, 192.0.2.1, 10.0.0.1", 1, "192.0.2.1"),
        ("192.0.2.10, 192.0.2.1 ,10.0.0.1", 2, "192.0.2.10"),
        ("192.0.2.10, 192.0.2.1, 10.0.0.1", 3, None),
        ("", 0, None),
        (",", 0, None),
        ("10.0.0.1,", 0, None),
        ("not-an-ip", 0, None),
        ("2001:db8::1", 0, "2001:db8::1"),
    ],
)
def test_last_xff_address(xff: str | None, skip: int, expected: str | None) -> None:
    assert last_xff_address(xff, skip) == ip(expected)


def test_remote_address_rules() -> None:
    xff = [(b"x-forwarded-for", b"10.1.1.1, 10.2.2.2")]
    conn = FakeConn(peer="127.0.0.7")
    # Not the edge (Istio's sidecar inbound): the last XFF entry, else the peer.
    assert HttpRequestView(conn, head(headers=xff), hcm()).remote_address() == ip("10.2.2.2")
    assert HttpRequestView(conn, head(), hcm()).remote_address() == ip("127.0.0.7")
    assert HttpRequestView(conn, head(headers=xff), hcm(xff_num_trusted_hops=1)).remote_address() == ip(
        "10.1.1.1"
    )
    # The edge: the peer (our XFF already ends with what we appended) ...
    edge_xff = [(b"x-forwarded-for", b"10.1.1.1, 10.2.2.2, 192.0.2.99")]
    assert HttpRequestView(conn, head(headers=edge_xff), hcm(use_remote_address=True)).remote_address() == ip(
        "127.0.0.7"
    )
    # ... or, trusting one hop, the client's last entry before our append.
    trusted = hcm(use_remote_address=True, xff_num_trusted_hops=1)
    assert HttpRequestView(conn, head(headers=edge_xff), trusted).remote_address() == ip("10.2.2.2")
    skip = hcm(use_remote_address=True, xff_num_trusted_hops=1, skip_xff_append=True)
    assert HttpRequestView(conn, head(headers=xff), skip).remote_address() == ip("10.2.2.2")


def test_view_addresses_and_tls() -> None:
    conn = FakeConn(peer="127.0.0.5", local="127.0.0.1", port=9080)
    v = HttpRequestView(conn, head("PUT", "/p?q=1", [(b"x-a", b"1"), (b"x-a", b"2")]), hcm())
    assert v.source_address() == ip("127.0.0.5")
    assert (v.destination_address(), v.destination_port()) == (ip("127.0.0.1"), 9080)
    assert (
        v.request_path() == "/p?q=1" and v.header(":method") == "PUT" and v.header_values("x-a") == ["1", "2"]
    )
    assert v.peer_identity() is None and v.server_name() == ""
    conn.peer_identity = PeerIdentity(uri_sans=(SPIFFE_SLEEP,))  # type: ignore[attr-defined]
    conn.requested_server_name = "outbound_.9080_._.svc"  # type: ignore[attr-defined]
    assert v.peer_identity() == PeerIdentity(uri_sans=(SPIFFE_SLEEP,))
    assert v.server_name() == "outbound_.9080_._.svc"
    v6 = HttpRequestView(FakeConn(peer="::1", local="::1", port=80), head(), hcm())
    assert (v6.source_address(), v6.destination_port()) == (ip("::1"), 80)


def test_a_tls_layer_identity_is_read_by_duck_type() -> None:
    """The TLS layer has its own, richer PeerIdentity: only uri_sans, dns_sans and subject are read."""

    class TlsPeer:
        sha256 = "ab"
        uri_sans = (SPIFFE_SLEEP,)
        dns_sans = ()
        subject = ""
        ip_sans = ("10.0.0.1",)

    cfg = http_rbac(
        {
            "rules": {
                "policies": {
                    "sleep": {
                        "permissions": [{"any": True}],
                        "principals": [{"authenticated": {"principal_name": {"exact": SPIFFE_SLEEP}}}],
                    }
                }
            }
        }
    )
    conn = FakeConn()
    assert run(cfg, head(), FakeStream(conn))[0] == STOP  # plaintext
    conn.peer_identity = TlsPeer()  # type: ignore[attr-defined]
    assert run(cfg, head(), FakeStream(conn))[0] == CONTINUE

"""RBAC against Envoy (bootstraps/rbac.yaml): a DENY then an ALLOW HTTP filter as Istio layers them,
dry-run shadow rules, RBACPerRoute, remote_ip from x-forwarded-for, rules_stat_prefix and the LOG
action, and the network filter in front of tcp_proxy.  Compared: status, body, response headers,
whether the upstream saw the request, whether the connection was closed, and the counters.

Clients connect from 127.0.0.x sources to exercise the source-address principals.  Principals by
authenticated identity need TLS, built separately: here only "not authenticated" (plaintext) is
checked; the identity cases are unit tests with a fake peer (tests/unit/rbac)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.differential.harness import Differential, Target, mask_headers
from tests.support.http1 import Client, PeerClosed, ReadTimeout, request

pytestmark = pytest.mark.differential
BOOTSTRAP = "rbac.yaml"
UPSTREAMS = ("service1",)
TCP_UPSTREAMS = ("tcp_echo",)
DENIED = b"RBAC: access denied"


class SourceClient(Client):
    """tests.support.http1.Client from a chosen loopback source address."""

    def __init__(self, port: int, source: str, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self.reset = False


def _stats(t: Target, names: tuple[str, ...]) -> dict[str, int]:
    return {n: t.stat(n) for n in names}


def _exchange(
    t: Target,
    raw: bytes,
    listener: str = "listener_port",
    source: str = "127.0.0.1",
    stats: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One request from `source`: what the client and the upstream saw, and how the counters moved."""
    before = _stats(t, stats)
    t.ups.clear()
    with SourceClient(t.port(listener), source) as c:
        c.send(raw)
        r = c.read_response(raw.split(b" ", 1)[0].decode())
        # With `connection: close` Envoy closes after delayed_close_timeout (1 s): wait past it.
        closed = c.wait_closed(3.0 if r.header("connection") == "close" else 0.2)
    after = _stats(t, stats)
    return {
        "status": r.status,
        "body": r.body,
        "headers": mask_headers(r.headers),
        "upstream": [u.target for u in t.ups.requests()],
        "closed": closed,
        "stats": {n: after[n] - before[n] for n in stats if after[n] != before[n]},
    }


ING = (
    "http.ing.rbac.allowed",
    "http.ing.rbac.denied",
    "http.ing.rbac.shadow_allowed",
    "http.ing.rbac.shadow_denied",
    "http.ing.rbac.istio_dry_run_deny_.shadow_allowed",
    "http.ing.rbac.istio_dry_run_deny_.shadow_denied",
    "http.ing.rbac.policy.read-only.allowed",
    "http.ing.rbac.policy.admins.allowed",
    "http.ing.rbac.policy.forwarded.allowed",
    "http.ing.rbac.policy.host-and-port.allowed",
)


def test_allowed_by_method_and_path(diff: Differential) -> None:
    got = diff.run(lambda t: _exchange(t, request("GET", "/api/items?page=2"), stats=ING))
    assert (got["status"], got["upstream"]) == (200, ["/api/items?page=2"])
    # Both filters count into http.ing.rbac.allowed; the DENY filter's dry run too.
    assert got["stats"] == {
        "http.ing.rbac.allowed": 2,
        "http.ing.rbac.istio_dry_run_deny_.shadow_allowed": 1,
        "http.ing.rbac.policy.read-only.allowed": 1,
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/items"), ("GET", "/other"), ("GET", "/API/items"), ("HEAD", "/private")],
)
def test_denied_is_403_rbac_access_denied(diff: Differential, method: str, path: str) -> None:
    got = diff.run(
        lambda t: _exchange(t, request(method, path, body=b"x" if method == "POST" else None), stats=ING)
    )
    assert got["status"] == 403 and got["upstream"] == []
    if method != "HEAD":
        assert got["body"] == DENIED
    assert got["stats"]["http.ing.rbac.denied"] == 1


def test_deny_filter_wins_over_allow(diff: Differential) -> None:
    # An admin may do anything except what the DENY policy forbids (/admin from anyone but .9).
    admin = [("x-role", "admin")]
    got = diff.run(
        lambda t: _exchange(t, request("GET", "/admin/users", headers=admin), source="127.0.0.5", stats=ING)
    )
    assert got["status"] == 403 and got["stats"] == {
        "http.ing.rbac.denied": 1,
        "http.ing.rbac.istio_dry_run_deny_.shadow_allowed": 1,
    }
    ok = diff.run(lambda t: _exchange(t, request("GET", "/admin/users", headers=admin), source="127.0.0.9"))
    assert ok["status"] == 200


@pytest.mark.parametrize(
    ("source", "headers", "status"),
    [
        ("127.0.0.5", [("x-role", "admin")], 200),
        ("127.0.0.6", [("x-role", "admin")], 403),
        ("127.0.0.5", [("x-role", "user")], 403),
        ("127.0.0.5", [("x-role", "admin"), ("x-role", "user")], 200),
    ],
    ids=["admin-from-5", "admin-from-6", "user-from-5", "repeated-header"],
)
def test_source_ip_and_header_principals(
    diff: Differential, source: str, headers: list[tuple[str, str]], status: int
) -> None:
    got = diff.run(lambda t: _exchange(t, request("DELETE", "/x", headers=headers), source=source, stats=ING))
    assert got["status"] == status


def test_shadow_rules_counted_not_enforced(diff: Differential) -> None:
    got = diff.run(
        lambda t: _exchange(
            t, request("DELETE", "/api/x", headers=[("x-role", "admin")]), source="127.0.0.5", stats=ING
        )
    )
    assert got["status"] == 200  # the dry-run DENY matched and was not enforced
    assert got["stats"]["http.ing.rbac.istio_dry_run_deny_.shadow_denied"] == 1


@pytest.mark.parametrize(
    ("xff", "method", "status"),
    [
        ("10.1.2.3", "PUT", 200),
        ("10.1.2.3", "DELETE", 403),
        ("10.1.3.3", "PUT", 403),
        ("10.1.2.3, 192.0.2.1", "PUT", 403),
        ("garbage", "PUT", 403),
    ],
)
def test_remote_ip_from_x_forwarded_for(diff: Differential, xff: str, method: str, status: int) -> None:
    """Without use_remote_address the downstream remote address is XFF's last entry (remote_ip),
    while direct_remote_ip stays the peer."""
    got = diff.run(
        lambda t: _exchange(t, request(method, "/f", headers=[("x-forwarded-for", xff)]), stats=ING)
    )
    assert got["status"] == status


def test_host_port_ip_and_sni_permissions(diff: Differential) -> None:
    ok = diff.run(lambda t: _exchange(t, request("PATCH", "/h", host="allowed.test"), stats=ING))
    assert ok["status"] == 200 and ok["stats"]["http.ing.rbac.policy.host-and-port.allowed"] == 1
    no = diff.run(lambda t: _exchange(t, request("PATCH", "/h", host="other.test")))
    assert no["status"] == 403


def test_per_route_disable_and_replace(diff: Differential) -> None:
    opened = diff.run(lambda t: _exchange(t, request("POST", "/open/x", body=b"b"), stats=ING))
    assert (opened["status"], opened["upstream"]) == (200, ["/open/x"])
    assert opened["stats"] == {
        "http.ing.rbac.allowed": 1,
        "http.ing.rbac.istio_dry_run_deny_.shadow_allowed": 1,
    }
    locked = diff.run(lambda t: _exchange(t, request("GET", "/locked/api/"), source="127.0.0.5", stats=ING))
    assert locked["status"] == 403 and locked["stats"]["http.ing.rbac.denied"] == 1


PRE = (
    "http.pre.rbac.audit_.allowed",
    "http.pre.rbac.audit_.denied",
    "http.pre.rbac.rp.allowed",
    "http.pre.rbac.rp.denied",
    "http.pre.rbac.sp_.shadow_allowed",
    "http.pre.rbac.sp_.shadow_denied",
    "http.pre.rbac.rp.policy.no-post.denied",
    "http.pre.rbac.sp_.policy.only-api.shadow_allowed",
)


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/api/a", 200), ("GET", "/web", 200), ("POST", "/api/a", 403)]
)
def test_rules_stat_prefix_and_log_action(diff: Differential, method: str, path: str, status: int) -> None:
    body = b"x" if method == "POST" else None
    got = diff.run(
        lambda t: _exchange(t, request(method, path, body=body), listener="prefix_port", stats=PRE)
    )
    assert got["status"] == status
    assert got["stats"]["http.pre.rbac.audit_.allowed"] == 1  # LOG always allows


# -- network filter ---------------------------------------------------------------------------------

TCP = (
    "tcp.rbac.allowed",
    "tcp.rbac.denied",
    "tcpc.rbac.allowed",
    "tcpc.rbac.denied",
    "tcpc.rbac.dry_.shadow_allowed",
    "tcpc.rbac.dry_.shadow_denied",
)


def _tcp(t: Target, listener: str, source: str, sends: tuple[bytes, ...]) -> dict[str, Any]:
    before = _stats(t, TCP)
    t.tcp["tcp_echo"].reset()
    echoed: list[bytes] = []
    with SourceClient(t.port(listener), source, timeout=5.0) as c:
        for data in sends:
            try:
                c.send(data)
                echoed.append(c.read_some(3.0))
            except (PeerClosed, ReadTimeout, OSError):
                echoed.append(b"<closed>")
                break
        closed = c.wait_closed(0.3)
        # Read the counters before our FIN: Envoy runs onData for the end of stream too, which
        # CONTINUOUS counts as one more check.
        after = _stats(t, TCP)
    return {
        "echoed": echoed,
        "closed": closed,
        "stats": {n: after[n] - before[n] for n in TCP if after[n] != before[n]},
    }


def test_network_rbac_one_time(diff: Differential) -> None:
    ok = diff.run(lambda t: _tcp(t, "tcp_port", "127.0.0.5", (b"one", b"two")))
    assert ok == {"echoed": [b"one", b"two"], "closed": False, "stats": {"tcp.rbac.allowed": 1}}
    no = diff.run(lambda t: _tcp(t, "tcp_port", "127.0.0.6", (b"one",)))
    assert no["echoed"] in ([b""], [b"<closed>"]) and no["closed"] is True
    assert no["stats"] == {"tcp.rbac.denied": 1}


def test_network_rbac_continuous_with_shadow(diff: Differential) -> None:
    ok = diff.run(lambda t: _tcp(t, "tcpc_port", "127.0.0.5", (b"a", b"b")))
    assert ok["echoed"] == [b"a", b"b"]
    assert ok["stats"] == {"tcpc.rbac.allowed": 2, "tcpc.rbac.dry_.shadow_allowed": 2}
    other = diff.run(lambda t: _tcp(t, "tcpc_port", "127.0.0.7", (b"a",)))
    assert other["stats"] == {"tcpc.rbac.allowed": 1, "tcpc.rbac.dry_.shadow_denied": 1}
    denied = diff.run(lambda t: _tcp(t, "tcpc_port", "127.0.0.6", (b"a",)))
    assert denied["closed"] is True and denied["stats"]["tcpc.rbac.denied"] == 1


def test_grpc_request_denied_as_grpc_status(diff: Differential) -> None:
    grpc = [("content-type", "application/grpc"), ("te", "trailers")]
    got = diff.run(
        lambda t: _exchange(
            t, request("POST", "/pkg.Svc/Call", headers=grpc, body=b""), listener="prefix_port", stats=PRE
        )
    )
    assert got["status"] == 200 and got["upstream"] == []
    headers = dict(got["headers"])
    assert (headers["grpc-status"], headers["grpc-message"]) == ("7", "RBAC: access denied")
    assert got["stats"]["http.pre.rbac.rp.denied"] == 1

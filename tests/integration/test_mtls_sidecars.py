"""Two sidecars (processes) in front of two apps on loopback, talking mTLS as Istio sets them up
(tests/support/mtls_bootstraps.py): the client-side sidecar's outbound listener sends to a cluster
whose `tlsMode: istio` endpoint gets the UpstreamTlsContext (workload certificate, ROOTCA, the
server's SPIFFE ID); the server-side sidecar's inbound listener picks its TLS or plaintext chain with
tls_inspector (PERMISSIVE has both, STRICT only TLS) and lets RBAC see the client's identity.

Refusals: a client certificate of the wrong trust domain, the wrong service account or expired is
refused by the server sidecar, with the reason in its log and the ssl.* stat counted."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ca import Issued, TestCA
from tests.support.mtls_bootstraps import client_side, direct_tls, get, server_side, start, stats
from tests.support.proxy import ProxyProcess, start_proxy
from tests.support.upstream import Upstreams

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(Path(tmp_path_factory.mktemp("mtls-ca")))


@pytest.fixture(scope="module")
def app() -> Iterator[Upstreams]:
    with Upstreams(("app",)) as ups:
        yield ups


@pytest.fixture(scope="module", params=["PERMISSIVE", "STRICT"])
def pair(request: pytest.FixtureRequest, ca: TestCA, app: Upstreams) -> Iterator[dict[str, object]]:
    """A server sidecar (inbound) and a client sidecar (outbound) started as processes."""
    permissive = request.param == "PERMISSIVE"
    server_cert = ca.workload("default", "server")
    client_cert = ca.workload("default", "client")
    server, used = start(
        "sidecar",
        server_side(server_cert.cert_path, server_cert.key_path, ca.root_path, permissive=permissive),
        {**app.ports},
    )
    client, cused = start(
        "sidecar",
        client_side(client_cert.cert_path, client_cert.key_path, ca.root_path),
        {"inbound_port": used["inbound_port"], "inbound_tcp_port": used["inbound_tcp_port"]},
    )
    try:
        yield {
            "mode": request.param,
            "server": server,
            "client": client,
            **used,
            **{f"c_{k}": v for k, v in cused.items()},
        }
    finally:
        client.close()
        server.close()


def test_http_through_two_sidecars_over_mtls(pair: dict[str, object], app: Upstreams) -> None:
    app.reset()
    status, _ = get(int(pair["c_outbound_port"]), "/private")  # type: ignore[call-overload]
    # RBAC on the server side allows /private only to the client's SPIFFE identity.
    assert status == 200
    req = app["app"].requests[-1]
    assert req.target == "/private"
    server_ssl = stats(pair["admin_port"], "ssl")
    assert server_ssl[f"listener.127.0.0.1_{pair['inbound_port']}.ssl.handshake"] >= 1
    client_ssl = stats(pair["c_admin_port"], "ssl")
    assert client_ssl["cluster.server.ssl.handshake"] >= 1


def test_tcp_through_two_sidecars_over_mtls(pair: dict[str, object], app: Upstreams) -> None:
    status, _ = get(int(pair["c_outbound_tcp_port"]), "/tcp")  # type: ignore[call-overload]
    assert status == 200
    server_ssl = stats(pair["admin_port"], "ssl.handshake")
    assert server_ssl[f"listener.127.0.0.1_{pair['inbound_tcp_port']}.ssl.handshake"] >= 1


def test_plaintext_client_permissive_or_refused(pair: dict[str, object]) -> None:
    port = int(pair["inbound_port"])  # type: ignore[call-overload]
    if pair["mode"] == "PERMISSIVE":
        # The plaintext chain serves it, but RBAC sees no identity: only /public is allowed.
        assert get(port, "/public")[0] == 200
        assert get(port, "/private")[0] == 403
    else:
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected, OSError)):
            get(port, "/public")


def test_right_client_certificate_direct(pair: dict[str, object], ca: TestCA) -> None:
    good = ca.workload("default", "client", name="client-direct")
    # No ALPN at all, then Istio's ALPN: both reach a TLS chain; the handshake needs no ALPN match.
    assert direct_tls(pair["inbound_port"], good, ca) == "HTTP/1.1 200 OK"
    assert direct_tls(pair["inbound_port"], good, ca, ["istio-http/1.1", "istio"]) == "HTTP/1.1 200 OK"


@pytest.mark.parametrize("which", ["wrong_trust_domain", "wrong_sa", "expired", "none"])
def test_bad_client_certificates_refused(pair: dict[str, object], ca: TestCA, which: str) -> None:
    cert: Issued | None
    if which == "wrong_trust_domain":
        cert = ca.wrong_trust_domain("default", "client")
        stat = "fail_verify_san"
    elif which == "wrong_sa":
        cert = ca.workload("default", "intruder")
        stat = "fail_verify_san"
    elif which == "expired":
        cert = ca.workload("default", "client", expired=True, name="client-expired")
        stat = "fail_verify_error"
    else:
        cert = None
        stat = "fail_verify_no_cert"
    name = f"listener.127.0.0.1_{pair['inbound_port']}.ssl.{stat}"
    before = stats(pair["admin_port"], "ssl").get(name, 0)
    outcome = direct_tls(pair["inbound_port"], cert, ca)
    assert not outcome.startswith("HTTP/1.1 2"), outcome
    after = stats(pair["admin_port"], "ssl").get(name, 0)
    assert after == before + 1
    server = pair["server"]
    assert isinstance(server, ProxyProcess)
    log = server.stderr()
    if which in ("wrong_trust_domain", "wrong_sa"):
        assert "verify cert failed" in log or "SAN" in log
    elif which == "expired":
        assert "certificate has expired" in log


def test_wrong_server_identity_refused_by_client(ca: TestCA, app: Upstreams) -> None:
    """The client sidecar expects spiffe://.../sa/server: a server presenting another identity
    is refused (503 to the app) and counted as the cluster's fail_verify_san."""
    server_cert = ca.workload("default", "impostor")
    client_cert = ca.workload("default", "client", name="client-2")
    server, used = start_proxy(
        "sidecar",
        server_side(server_cert.cert_path, server_cert.key_path, ca.root_path, permissive=False),
        {**app.ports},
    )
    try:
        client, cused = start_proxy(
            "sidecar",
            client_side(client_cert.cert_path, client_cert.key_path, ca.root_path),
            {"inbound_port": used["inbound_port"], "inbound_tcp_port": used["inbound_tcp_port"]},
        )
        try:
            assert get(int(cused["outbound_port"]), "/x")[0] == 503  # type: ignore[call-overload]
            assert (
                stats(cused["admin_port"], "ssl.fail_verify_san")["cluster.server.ssl.fail_verify_san"] >= 1
            )
        finally:
            client.close()
    finally:
        server.close()


def test_rbac_principal_is_the_tls_peer_identity(pair: dict[str, object], ca: TestCA) -> None:
    """spiffe://.../sa/client2 passes the listener's SAN matcher (a prefix) but not RBAC's exact
    principal_name: RBAC reads the identity the handshake produced, not just "some TLS peer"."""
    other = ca.workload("default", "client2")
    assert direct_tls(pair["inbound_port"], other, ca, path="/public") == "HTTP/1.1 200 OK"
    assert direct_tls(pair["inbound_port"], other, ca, path="/private") == "HTTP/1.1 403 Forbidden"
    good = ca.workload("default", "client", name="client-rbac")
    assert direct_tls(pair["inbound_port"], good, ca, path="/private") == "HTTP/1.1 200 OK"


def test_network_rbac_principal_over_tls(pair: dict[str, object], ca: TestCA) -> None:
    """envoy.filters.network.rbac in front of tcp_proxy sees the TLS peer identity too."""
    other = ca.workload("default", "client3")
    good = ca.workload("default", "client", name="client-tcp-rbac")
    port = pair["inbound_tcp_port"]
    before = stats(pair["admin_port"], "rbac").get("inbound_tcp.rbac.denied", 0)
    assert direct_tls(port, good, ca) == "HTTP/1.1 200 OK"
    assert not direct_tls(port, other, ca).startswith("HTTP/")
    assert stats(pair["admin_port"], "rbac").get("inbound_tcp.rbac.denied", 0) == before + 1

"""mTLS against Envoy, both directions, with the same certificates and the Istio-style bootstraps of
tests/support/mtls_bootstraps.py.

- Server side: the same clients (right identity with and without Istio's ALPN, wrong trust domain,
  wrong service account, expired, no certificate, plaintext) against an envoy and a sidecar inbound
  listener, PERMISSIVE and STRICT: the same verdict (status line or refused) and the same ssl.*
  counters on the listener.
- Client side: an envoy client-side proxy in front of a sidecar server side and the reverse: the
  request goes through (RBAC on the server sees the client's SPIFFE identity), and both clients
  refuse a server presenting the wrong identity (503, cluster ssl.fail_verify_san)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ca import Issued, TestCA
from tests.support.mtls_bootstraps import client_side, direct_tls, get, server_side, start, stats
from tests.support.upstream import Upstreams

pytestmark = [pytest.mark.differential, pytest.mark.timeout(120)]
SSL_STATS = (
    "handshake",
    "connection_error",
    "no_certificate",
    "fail_verify_no_cert",
    "fail_verify_error",
    "fail_verify_san",
)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(Path(tmp_path_factory.mktemp("mtls-diff-ca")))


@pytest.fixture(scope="module")
def app() -> Iterator[Upstreams]:
    with Upstreams(("app",)) as ups:
        yield ups


def _verdict(outcome: str) -> str:
    return outcome if outcome.startswith("HTTP/") else "refused"


def _server_run(
    kind: str, mode: str, ca: TestCA, app: Upstreams, clients: dict[str, Issued | None]
) -> dict[str, object]:
    cert = ca.workload("default", "server", name=f"server-{kind}-{mode}")
    proc, used = start(
        kind,
        server_side(cert.cert_path, cert.key_path, ca.root_path, permissive=mode == "PERMISSIVE"),
        {**app.ports},
    )
    try:
        port = used["inbound_port"]
        out: dict[str, object] = {}
        for name, client in clients.items():
            out[name] = _verdict(direct_tls(port, client, ca))
            out[f"{name} /private"] = _verdict(direct_tls(port, client, ca, path="/private"))
        out["istio alpn"] = _verdict(direct_tls(port, clients["good"], ca, ["istio-http/1.1", "istio"]))
        # What the app is told about the downstream connection (x-forwarded-proto: https over TLS).
        out["xfp over tls"] = app["app"].requests[-1].header("x-forwarded-proto")
        try:
            out["plaintext"] = get(int(port), "/public")[0]  # type: ignore[call-overload]
            out["plaintext /private"] = get(int(port), "/private")[0]  # type: ignore[call-overload]
            out["xfp plaintext"] = app["app"].requests[-1].header("x-forwarded-proto")
        except OSError:
            out["plaintext"] = "refused"
        got = stats(used["admin_port"], "ssl")
        prefix = f"listener.127.0.0.1_{port}.ssl."
        for s in SSL_STATS:
            out[s] = got.get(prefix + s, 0)
        return out
    finally:
        proc.close()


@pytest.mark.parametrize("mode", ["PERMISSIVE", "STRICT"])
def test_server_side_verdicts_match_envoy(mode: str, ca: TestCA, app: Upstreams) -> None:
    clients: dict[str, Issued | None] = {
        "good": ca.workload("default", "client", name="diff-client"),
        "wrong trust domain": ca.wrong_trust_domain("default", "client"),
        "wrong sa": ca.workload("default", "other", name="diff-other"),
        "expired": ca.workload("default", "client", expired=True, name="diff-expired"),
        "no certificate": None,
    }
    envoy = _server_run("envoy", mode, ca, app, clients)
    sidecar = _server_run("sidecar", mode, ca, app, clients)
    assert envoy["good"] == "HTTP/1.1 200 OK"  # the oracle itself behaves as expected
    assert envoy["xfp over tls"] == "https"
    assert sidecar == envoy


@pytest.mark.parametrize(("client_kind", "server_kind"), [("envoy", "sidecar"), ("sidecar", "envoy")])
@pytest.mark.parametrize("server_id", ["server", "impostor"])
def test_mixed_pairs(client_kind: str, server_kind: str, server_id: str, ca: TestCA, app: Upstreams) -> None:
    scert = ca.workload("default", server_id, name=f"mixed-{server_id}-{server_kind}")
    ccert = ca.workload("default", "client", name=f"mixed-client-{client_kind}")
    server, used = start(
        server_kind,
        server_side(scert.cert_path, scert.key_path, ca.root_path, permissive=False),
        {**app.ports},
    )
    try:
        client, cused = start(
            client_kind,
            client_side(ccert.cert_path, ccert.key_path, ca.root_path),
            {"inbound_port": used["inbound_port"], "inbound_tcp_port": used["inbound_tcp_port"]},
        )
        try:
            status = get(int(cused["outbound_port"]), "/private")[0]  # type: ignore[call-overload]
            tcp_status = (
                get(int(cused["outbound_tcp_port"]), "/private")[0] if server_id == "server" else None
            )  # type: ignore[call-overload]
            san = stats(cused["admin_port"], "ssl.fail_verify_san").get(
                "cluster.server.ssl.fail_verify_san", 0
            )
        finally:
            client.close()
    finally:
        server.close()
    if server_id == "server":
        assert (status, tcp_status, san) == (200, 200, 0)
    else:
        assert status == 503
        assert san >= 1

"""mTLS on loopback with the sidecar's own server and client TLS (TlsProvider -> ServerTls/ClientTls)
and Istio-style certificates: the right peers are accepted with their SPIFFE identity; a wrong trust
domain, a wrong service account, expired, not yet valid, foreign and revoked certificates are
refused with Envoy's reason and stat; ALPN with Istio's values, including no overlap at all."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from sidecar.model.secret import (
    CertificateValidationContext,
    DataSource,
    MatchKind,
    SanMatcher,
    SanType,
    StringMatcher,
    TlsCertificate,
)
from sidecar.model.tls import (
    CommonTlsContext,
    DownstreamTlsContext,
    TlsParams,
    TlsVersion,
    UpstreamTlsContext,
)
from sidecar.tls.handshake import ClientTls, ServerTls
from sidecar.tls.provider import TlsProvider
from sidecar.tls.secrets import SecretStore
from sidecar.tls.stats import TlsStats
from tests.support.ca import Issued, TestCA
from tests.support.tls_loop import Outcome, TlsEchoServer, exchange

pytestmark = pytest.mark.timeout(60)

ISTIO_ALPN = ("istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCA]:
    yield TestCA(Path(tmp_path_factory.mktemp("ca")))


@pytest.fixture(scope="module")
def chained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCA]:
    yield TestCA(Path(tmp_path_factory.mktemp("ica")), name="chained", intermediate=True)


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCA]:
    yield TestCA(Path(tmp_path_factory.mktemp("other")), name="stranger")


def sans(*uris: str, kind: MatchKind = MatchKind.EXACT) -> tuple[SanMatcher, ...]:
    return tuple(SanMatcher(SanType.URI, StringMatcher(kind, u)) for u in uris)


def validation(
    ca: TestCA, matchers: tuple[SanMatcher, ...] = (), crl: bytes = b"", **kw: object
) -> CertificateValidationContext:
    return CertificateValidationContext(
        trusted_ca=DataSource(inline=ca.root_pem),
        crl=DataSource(inline=crl),
        san_matchers=matchers,
        **kw,  # type: ignore[arg-type]
    )


def inline(cert: Issued) -> tuple[TlsCertificate, ...]:
    return (TlsCertificate(DataSource(inline=cert.cert_pem), DataSource(inline=cert.key_pem)),)


def server_tls(
    cert: Issued,
    vc: CertificateValidationContext | None,
    *,
    require: bool = True,
    alpn: tuple[str, ...] = (),
    stats: TlsStats | None = None,
) -> ServerTls:
    cfg = DownstreamTlsContext(
        common=CommonTlsContext(tls_certificates=inline(cert), validation_context=vc, alpn_protocols=alpn),
        require_client_certificate=require,
    )
    p = TlsProvider(cfg, SecretStore(), stats or TlsStats("listener.127.0.0.1_15006."))
    assert isinstance(p.current, ServerTls), p.error
    return p.current


def client_tls(
    cert: Issued | None,
    vc: CertificateValidationContext | None,
    *,
    alpn: tuple[str, ...] = (),
    tls13: bool = False,
    sni: str = "outbound_.8080_._.svc.ns.svc.cluster.local",
) -> ClientTls:
    params = TlsParams(max_version=TlsVersion.TLSv1_3) if tls13 else TlsParams()
    cfg = UpstreamTlsContext(
        common=CommonTlsContext(
            tls_params=params,
            tls_certificates=inline(cert) if cert else (),
            validation_context=vc,
            alpn_protocols=alpn,
        ),
        sni=sni,
    )
    p = TlsProvider(cfg, SecretStore(), TlsStats("cluster.outbound|8080||svc."))
    assert isinstance(p.current, ClientTls), p.error
    return p.current


async def run(server: ServerTls, client: ClientTls) -> tuple[Outcome, TlsEchoServer]:
    srv = TlsEchoServer(lambda: server)
    port = await srv.start()
    try:
        outcome = await exchange(client, port)
        for _ in range(200):  # the server's verdict may land a moment after the client's
            if srv.events:
                break
            await asyncio.sleep(0.005)
    finally:
        await srv.close()
    return outcome, srv


# --- accepted ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
async def test_istio_mtls_both_ways(ca: TestCA, tls13: bool) -> None:
    srv_cert, cli_cert = ca.workload("bookinfo", "reviews"), ca.workload("bookinfo", "productpage")
    server = server_tls(srv_cert, validation(ca, sans("spiffe://cluster.local/", kind=MatchKind.PREFIX)))
    client = client_tls(cli_cert, validation(ca, sans(srv_cert.uri)), tls13=tls13)
    outcome, srv = await run(server, client)
    assert outcome.ok and outcome.echoed == b"ping\n"
    assert outcome.handshake is not None and outcome.handshake.peer is not None
    assert outcome.handshake.peer.spiffe is not None
    assert outcome.handshake.peer.spiffe.principal == "cluster.local/ns/bookinfo/sa/reviews"
    assert outcome.handshake.version == ("TLSv1.3" if tls13 else "TLSv1.2")
    (event,) = srv.events
    assert event.handshake is not None and event.handshake.ok
    assert event.handshake.peer is not None and event.handshake.peer.subject == ""  # Istio: empty subject
    assert event.handshake.peer.uri_sans == (cli_cert.uri,)
    assert server.stats.handshake == 1 and client.stats.handshake == 1
    assert server.stats.fail_verify_san == server.stats.fail_verify_error == 0


async def test_chain_through_an_intermediate(chained: TestCA) -> None:
    srv_cert, cli_cert = chained.workload("a", "srv"), chained.workload("b", "cli")
    outcome, _ = await run(
        server_tls(srv_cert, validation(chained, sans(cli_cert.uri))),
        client_tls(cli_cert, validation(chained, sans(srv_cert.uri))),
    )
    assert outcome.ok


# --- refused by the server ---------------------------------------------------------------------------------------


async def refused_by_server(server: ServerTls, client: ClientTls) -> str:
    outcome, srv = await run(server, client)
    assert not outcome.ok, outcome
    (event,) = srv.events
    if event.handshake is not None:
        assert not event.handshake.ok
        return event.handshake.reason
    return event.error


async def test_wrong_trust_domain_refused(ca: TestCA) -> None:
    server = server_tls(
        ca.workload("a", "srv"), validation(ca, sans("spiffe://cluster.local/", kind=MatchKind.PREFIX))
    )
    reason = await refused_by_server(server, client_tls(ca.wrong_trust_domain("b", "cli"), validation(ca)))
    assert reason == "verify cert failed: SAN matcher"
    assert server.stats.fail_verify_san == 1


async def test_wrong_service_account_refused(ca: TestCA) -> None:
    server = server_tls(
        ca.workload("a", "srv"), validation(ca, sans("spiffe://cluster.local/ns/b/sa/allowed"))
    )
    reason = await refused_by_server(server, client_tls(ca.workload("b", "other"), validation(ca)))
    assert reason == "verify cert failed: SAN matcher"
    assert server.stats.fail_verify_san == 1


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("expired", "verify cert failed: certificate has expired"),
        ("future", "verify cert failed: certificate is not yet valid"),
        ("stranger", "verify cert failed: unable to get local issuer certificate"),
    ],
)
async def test_bad_client_chains_refused(ca: TestCA, stranger: TestCA, variant: str, reason: str) -> None:
    cert = {
        "expired": lambda: ca.workload("b", "cli", expired=True),
        "future": lambda: ca.workload("b", "cli", not_yet_valid=True),
        "stranger": lambda: stranger.workload("b", "cli"),
    }[variant]()
    server = server_tls(ca.workload("a", "srv"), validation(ca))
    assert await refused_by_server(server, client_tls(cert, validation(ca))) == reason
    assert server.stats.fail_verify_error == 1 and server.stats.connection_error == 0


async def test_missing_client_certificate_refused(ca: TestCA) -> None:
    server = server_tls(ca.workload("a", "srv"), validation(ca))
    reason = await refused_by_server(server, client_tls(None, validation(ca)))
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reason
    assert server.stats.fail_verify_no_cert == 1


async def test_revoked_client_refused_by_crl(tmp_path: Path) -> None:
    ca = TestCA(tmp_path, name="crl")
    good, revoked = ca.workload("b", "good"), ca.workload("b", "revoked")
    ca.revoke(revoked)
    server = server_tls(ca.workload("a", "srv"), validation(ca, crl=ca.crl_pem()))
    assert await refused_by_server(server, client_tls(revoked, validation(ca))) == (
        "verify cert failed: certificate revoked"
    )
    assert server.stats.fail_verify_error == 1
    outcome, _ = await run(server, client_tls(good, validation(ca)))
    assert outcome.ok


async def test_crl_checks_the_whole_chain_unless_leaf_only(tmp_path: Path) -> None:
    """Envoy's default CRL check covers every CA in the chain (X509_V_FLAG_CRL_CHECK_ALL): with an
    intermediate, a CRL from the intermediate alone is not enough; only_verify_leaf_cert_crl is."""
    ca = TestCA(tmp_path, name="crlchain", intermediate=True)
    cli = ca.workload("b", "cli")
    whole = ca.crl_pem()
    intermediate_only = whole[whole.index(b"-----BEGIN X509 CRL-----", 10) :]
    srv = ca.workload("a", "srv")
    strict = server_tls(srv, validation(ca, crl=intermediate_only))
    assert await refused_by_server(strict, client_tls(cli, validation(ca))) == (
        "verify cert failed: unable to get certificate CRL"
    )
    leaf_only = server_tls(srv, validation(ca, crl=intermediate_only, only_verify_leaf_cert_crl=True))
    assert (await run(leaf_only, client_tls(cli, validation(ca))))[0].ok
    complete = server_tls(srv, validation(ca, crl=whole))
    assert (await run(complete, client_tls(cli, validation(ca))))[0].ok


# --- refused by the client -----------------------------------------------------------------------------------------


async def test_client_refuses_a_server_with_the_wrong_san(ca: TestCA) -> None:
    client = client_tls(
        ca.workload("b", "cli"), validation(ca, sans("spiffe://cluster.local/ns/a/sa/expected"))
    )
    outcome, _ = await run(server_tls(ca.workload("a", "impostor"), validation(ca)), client)
    assert outcome.handshake is None and outcome.error == "verify cert failed: SAN matcher"
    assert client.stats.fail_verify_san == 1 and client.stats.handshake == 0


async def test_client_refuses_an_expired_server(ca: TestCA) -> None:
    client = client_tls(ca.workload("b", "cli"), validation(ca))
    outcome, _ = await run(server_tls(ca.workload("a", "srv", expired=True), validation(ca)), client)
    assert outcome.error == "verify cert failed: certificate has expired"
    assert client.stats.fail_verify_error == 1


async def test_no_hostname_check_with_spiffe_certificates(ca: TestCA) -> None:
    """The SNI is an Istio cluster name, nothing in the certificate says so, and that is fine:
    Envoy never checks hostnames; the SAN matcher decides."""
    srv = ca.workload("a", "srv")
    client = client_tls(
        ca.workload("b", "cli"), validation(ca, sans(srv.uri)), sni="outbound_.9080_.v1_.reviews"
    )
    outcome, _ = await run(server_tls(srv, validation(ca)), client)
    assert outcome.ok


# --- ALPN ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_alpn", "client_alpn", "selected"),
    [
        (ISTIO_ALPN, ISTIO_ALPN, "istio-peer-exchange"),
        (("istio-peer-exchange", "h2", "http/1.1"), ("istio-peer-exchange", "istio"), "istio-peer-exchange"),
        (("h2", "http/1.1"), ("istio-http/1.1", "http/1.1"), "http/1.1"),
        (ISTIO_ALPN, ("istio-h2",), "istio-h2"),
        (("h2", "http/1.1"), ("istio-http/1.1", "istio"), None),  # no overlap: still connects
        (ISTIO_ALPN, (), None),
        ((), ISTIO_ALPN, None),
    ],
)
async def test_alpn(
    ca: TestCA, server_alpn: tuple[str, ...], client_alpn: tuple[str, ...], selected: str | None
) -> None:
    srv, cli = ca.workload("a", "srv"), ca.workload("b", "cli")
    outcome, server = await run(
        server_tls(srv, validation(ca), alpn=server_alpn),
        client_tls(cli, validation(ca, sans(srv.uri)), alpn=client_alpn),
    )
    assert outcome.ok
    assert outcome.handshake is not None and outcome.handshake.alpn == selected
    assert server.events[0].handshake is not None and server.events[0].handshake.alpn == selected


def test_mtls_and_alpn_on_uvloop(ca: TestCA) -> None:
    """The production loop: uvloop's TLS transport with the same contexts."""
    srv, cli = ca.workload("a", "srv"), ca.workload("b", "cli")

    async def main() -> Outcome:
        outcome, _ = await run(
            server_tls(srv, validation(ca, sans(cli.uri)), alpn=ISTIO_ALPN),
            client_tls(cli, validation(ca, sans(srv.uri)), alpn=("istio-http/1.1",), tls13=True),
        )
        return outcome

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        outcome = runner.run(main())
    assert outcome.ok and outcome.handshake is not None
    assert (outcome.handshake.alpn, outcome.handshake.version) == ("istio-http/1.1", "TLSv1.3")

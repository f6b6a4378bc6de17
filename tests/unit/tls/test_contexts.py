"""sidecar.tls.contexts and .handshake: SSL contexts built from the test CA, Envoy's verify modes,
the content-hash cache, and the verdicts and stats after in-memory handshakes."""

from __future__ import annotations

import ssl

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from sidecar.model.secret import (
    CertificateValidationContext,
    DataSource,
    MatchKind,
    SanMatcher,
    SanType,
    StringMatcher,
    TrustChainVerification,
)
from sidecar.model.tls import (
    CommonTlsContext,
    DownstreamTlsContext,
    TlsParams,
    TlsVersion,
    UpstreamTlsContext,
)
from sidecar.tls import native
from sidecar.tls.contexts import (
    ContextCache,
    TlsContextError,
    TlsMaterials,
    build_ssl_context,
    flatten_cipher_suites,
    rejected_cipher_suites,
)
from sidecar.tls.handshake import ClientTls, ServerTls, tls_for
from sidecar.tls.identity import Validation
from sidecar.tls.stats import TlsStats
from tests.support.ca import Issued, TestCA
from tests.unit.tls.memory_tls import handshake

SERVER = DownstreamTlsContext(require_client_certificate=True)
CLIENT = UpstreamTlsContext(sni="outbound_.80_._.svc")


def uri(value: str) -> SanMatcher:
    return SanMatcher(SanType.URI, StringMatcher(MatchKind.EXACT, value))


def vc(ca: TestCA, *sans: str, **kw: object) -> CertificateValidationContext:
    return CertificateValidationContext(
        trusted_ca=DataSource(inline=ca.root_pem),
        san_matchers=tuple(uri(s) for s in sans),
        **kw,  # type: ignore[arg-type]
    )


def mat(
    cert: Issued | None, ca: TestCA | None, v: CertificateValidationContext | None, crl: bytes = b""
) -> TlsMaterials:
    return TlsMaterials(
        cert_chain=cert.cert_pem if cert else b"",
        private_key=cert.key_pem if cert else b"",
        trusted_ca=ca.root_pem if ca and v is not None else b"",
        crl=crl,
        validation=v,
    )


def server(cfg: DownstreamTlsContext, m: TlsMaterials, stats: TlsStats | None = None) -> ServerTls:
    st = stats or TlsStats("listener.test.")
    t = tls_for(cfg, build_ssl_context(cfg, m, st), m, st)
    assert isinstance(t, ServerTls)
    return t


def client(cfg: UpstreamTlsContext, m: TlsMaterials, stats: TlsStats | None = None) -> ClientTls:
    st = stats or TlsStats("cluster.test.")
    t = tls_for(cfg, build_ssl_context(cfg, m, st), m, st)
    assert isinstance(t, ClientTls)
    return t


@pytest.fixture(scope="module")
def certs(ca: TestCA) -> dict[str, Issued]:
    return {"server": ca.workload("ns-a", "server"), "client": ca.workload("ns-b", "client")}


# --- building ---------------------------------------------------------------------------------------------


def test_server_context_settings(ca: TestCA, certs: dict[str, Issued]) -> None:
    ctx = build_ssl_context(SERVER, mat(certs["server"], ca, vc(ca)), TlsStats())
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert not ctx.check_hostname
    assert ctx.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert not ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF  # no CRL given, no CRL checks
    assert (ctx.minimum_version, ctx.maximum_version) == (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert not ctx.options & ssl.OP_NO_TICKET  # Envoy issues session tickets unless told not to


def test_verify_modes_follow_envoy(ca: TestCA, certs: dict[str, Issued]) -> None:
    s = certs["server"]
    optional = DownstreamTlsContext()
    assert build_ssl_context(optional, mat(s, None, None), TlsStats()).verify_mode == ssl.CERT_NONE
    assert build_ssl_context(optional, mat(s, ca, vc(ca)), TlsStats()).verify_mode == ssl.CERT_OPTIONAL
    # SAN matchers make a client certificate mandatory even without require_client_certificate.
    assert build_ssl_context(optional, mat(s, ca, vc(ca, "x")), TlsStats()).verify_mode == ssl.CERT_REQUIRED
    # require_client_certificate only counts with a trusted CA (addClientValidationContext).
    assert build_ssl_context(SERVER, mat(s, None, None), TlsStats()).verify_mode == ssl.CERT_NONE
    assert build_ssl_context(CLIENT, mat(None, ca, vc(ca)), TlsStats()).verify_mode == ssl.CERT_REQUIRED
    assert build_ssl_context(CLIENT, mat(None, None, None), TlsStats()).verify_mode == ssl.CERT_NONE


def test_client_defaults_to_tls12(ca: TestCA) -> None:
    """ClientContextConfigImpl: TLSv1_2..TLSv1_2 unless tls_params say otherwise (Envoy 1.40 as
    observed: its upstream handshakes with a TLS 1.3 server negotiate TLSv1.2)."""
    ctx = build_ssl_context(CLIENT, mat(None, None, None), TlsStats())
    assert (ctx.minimum_version, ctx.maximum_version) == (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
    up = UpstreamTlsContext(common=CommonTlsContext(tls_params=TlsParams(max_version=TlsVersion.TLSv1_3)))
    assert build_ssl_context(up, mat(None, None, None), TlsStats()).maximum_version == ssl.TLSVersion.TLSv1_3


def test_crl_flags(ca: TestCA, certs: dict[str, Issued]) -> None:
    crl = ca.crl_pem()
    chain = build_ssl_context(SERVER, mat(certs["server"], ca, vc(ca), crl), TlsStats())
    assert chain.verify_flags & ssl.VERIFY_CRL_CHECK_CHAIN == ssl.VERIFY_CRL_CHECK_CHAIN
    leaf_only = vc(ca, only_verify_leaf_cert_crl=True)
    leaf = build_ssl_context(SERVER, mat(certs["server"], ca, leaf_only, crl), TlsStats())
    assert leaf.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert leaf.verify_flags & ssl.VERIFY_CRL_CHECK_CHAIN != ssl.VERIFY_CRL_CHECK_CHAIN


def test_build_errors(ca: TestCA, certs: dict[str, Issued]) -> None:
    s, c = certs["server"], certs["client"]
    mismatched = TlsMaterials(cert_chain=s.cert_pem, private_key=c.key_pem)
    with pytest.raises(TlsContextError, match="certificate chain or private key"):
        build_ssl_context(SERVER, mismatched, TlsStats())
    with pytest.raises(TlsContextError, match="no certificate found"):
        build_ssl_context(SERVER, TlsMaterials(cert_chain=b"garbage", private_key=s.key_pem), TlsStats())
    with pytest.raises(TlsContextError, match="must have a certificate"):
        build_ssl_context(SERVER, TlsMaterials(), TlsStats())
    bad_ca = TlsMaterials(s.cert_pem, s.key_pem, trusted_ca=b"nothing", validation=vc(ca))
    with pytest.raises(TlsContextError, match="trusted CA"):
        build_ssl_context(SERVER, bad_ca, TlsStats())
    # After merging SDS secrets, SAN matchers with no CA are still refused.
    no_ca = TlsMaterials(
        s.cert_pem, s.key_pem, validation=CertificateValidationContext(san_matchers=(uri("x"),))
    )
    with pytest.raises(TlsContextError, match="without trusted CA is insecure"):
        build_ssl_context(SERVER, no_ca, TlsStats())


def test_pkcs12(ca: TestCA, certs: dict[str, Issued]) -> None:
    s = certs["server"]
    blob = pkcs12.serialize_key_and_certificates(
        b"srv", s.key, s.cert, None, serialization.BestAvailableEncryption(b"pw")
    )
    m = TlsMaterials(pkcs12=blob, password=b"pw")
    pair = handshake(
        build_ssl_context(DownstreamTlsContext(), m, TlsStats()),
        build_ssl_context(CLIENT, mat(None, ca, vc(ca, s.uri)), TlsStats()),
    )
    assert pair.ok


def test_cipher_helpers() -> None:
    assert flatten_cipher_suites(["[A|B]:C", "D"]) == ("A", "B", "C", "D")
    assert rejected_cipher_suites(("ECDHE-RSA-AES128-GCM-SHA256", "BOGUS")) == ["BOGUS"]
    assert rejected_cipher_suites(("ECDHE-RSA-AES128-GCM-SHA256", "!aNULL")) == []
    assert rejected_cipher_suites(("!aNULL",)) == ["!aNULL"]  # selects nothing at all


def test_native_settings() -> None:
    assert native.AVAILABLE
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert native.set_groups(ctx, ("X25519", "P-256"))
    assert not native.set_groups(ctx, ("no-such-group",))
    assert native.set_sigalgs(ctx, ("ecdsa_secp256r1_sha256", "rsa_pss_rsae_sha256"))
    assert native.set_verify_depth(ctx, 3) and native.set_session_timeout(ctx, 60)
    assert native.disable_session_cache(ctx)


# --- the cache ---------------------------------------------------------------------------------------------------


def test_cache_shares_equal_contexts(ca: TestCA, certs: dict[str, Issued]) -> None:
    cache = ContextCache()
    st = TlsStats()
    a = cache.get(SERVER, mat(certs["server"], ca, vc(ca, "spiffe://a")), st)
    # SAN matchers are checked after the handshake, so they do not split SSL contexts.
    b = cache.get(SERVER, mat(certs["server"], ca, vc(ca, "spiffe://b")), TlsStats())
    assert a is b and cache.builds == 1
    rotated = cache.get(SERVER, mat(certs["client"], ca, vc(ca, "spiffe://a")), st)
    assert rotated is not a and cache.builds == 2
    other_alpn = DownstreamTlsContext(
        common=CommonTlsContext(alpn_protocols=("h2",)), require_client_certificate=True
    )
    assert cache.get(other_alpn, mat(certs["server"], ca, vc(ca)), st) is not a
    assert cache.builds == 3


def test_cache_holds_contexts_weakly(ca: TestCA, certs: dict[str, Issued]) -> None:
    cache = ContextCache()
    m = mat(certs["server"], ca, vc(ca))
    key = cache.key(SERVER, m, TlsStats())
    ctx = cache.get(SERVER, m, TlsStats())
    assert cache._contexts.get(key) is ctx
    del ctx
    assert cache._contexts.get(key) is None


# --- verdicts after in-memory handshakes ---------------------------------------------------------------------------


def test_mutual_tls_verdicts(ca: TestCA, certs: dict[str, Issued]) -> None:
    s, c = certs["server"], certs["client"]
    srv = server(SERVER, mat(s, ca, vc(ca, c.uri)))
    cli = client(CLIENT, mat(c, ca, vc(ca, s.uri)))
    pair = handshake(srv.ssl_context, cli.ssl_context, sni=cli.server_hostname)
    assert pair.ok
    sv, cv = srv.on_handshake(pair.server), cli.on_handshake(pair.client)
    assert sv.ok and cv.ok
    assert sv.peer is not None and sv.peer.spiffe is not None and sv.peer.spiffe.service_account == "client"
    assert cv.peer is not None and cv.peer.uri_sans == (s.uri,)
    assert sv.validation is Validation.VALIDATED and cv.validation is Validation.VALIDATED
    # The client's default maximum (TLS 1.2, as Envoy's) decides the version.
    assert srv.stats.handshake == 1 and srv.stats.value("versions.TLSv1.2") == 1
    assert cli.stats.value("versions.TLSv1.2") == 1
    assert srv.stats.value("ciphers.ECDHE-ECDSA-AES128-GCM-SHA256") == 1
    # Envoy's ssl.curves.* and ssl.sigalgs.* (the peer's signature: both sides signed here).
    assert srv.stats.value("curves.X25519") == cli.stats.value("curves.X25519") == 1
    assert srv.stats.value("sigalgs.ecdsa_secp256r1_sha256") == 1


def test_wrong_san_is_refused_after_the_handshake(ca: TestCA, certs: dict[str, Issued]) -> None:
    s, c = certs["server"], certs["client"]
    srv = server(SERVER, mat(s, ca, vc(ca, "spiffe://cluster.local/ns/ns-b/sa/someone-else")))
    cli = client(CLIENT, mat(c, ca, vc(ca, s.uri)))
    pair = handshake(srv.ssl_context, cli.ssl_context)
    assert pair.ok  # the chain is fine: OpenSSL accepts
    verdict = srv.on_handshake(pair.server)
    assert not verdict.ok and verdict.reason == "verify cert failed: SAN matcher"
    assert verdict.validation is Validation.FAILED
    # As in Envoy, where the SAN check is part of the handshake: no ssl.handshake for a refusal.
    assert srv.stats.fail_verify_san == 1 and srv.stats.handshake == 0


def test_untrusted_chain_fails_the_handshake(ca: TestCA, certs: dict[str, Issued], tmp_path: object) -> None:
    import pathlib

    other = TestCA(pathlib.Path(str(tmp_path)), name="other")
    intruder = other.workload("ns-b", "client")
    srv = server(SERVER, mat(certs["server"], ca, vc(ca)))
    cli = client(CLIENT, mat(intruder, ca, vc(ca)))
    pair = handshake(srv.ssl_context, cli.ssl_context)
    assert pair.server_error is not None
    reason = srv.on_handshake_error(pair.server_error)
    assert reason == "verify cert failed: unable to get local issuer certificate"
    assert srv.stats.fail_verify_error == 1 and srv.stats.connection_error == 0
    # And the other way round: the client refuses a server from another root, with OpenSSL's words.
    cli2 = client(CLIENT, mat(None, ca, vc(ca)))
    srv2 = server(DownstreamTlsContext(), mat(other.workload("x", "y"), None, None))
    pair = handshake(srv2.ssl_context, cli2.ssl_context)
    assert pair.client_error is not None
    assert (
        cli2.on_handshake_error(pair.client_error)
        == "verify cert failed: unable to get local issuer certificate"
    )
    assert cli2.stats.fail_verify_error == 1


def test_missing_client_certificate(ca: TestCA, certs: dict[str, Issued]) -> None:
    srv = server(SERVER, mat(certs["server"], ca, vc(ca)))
    cli = client(CLIENT, mat(None, ca, vc(ca)))
    pair = handshake(srv.ssl_context, cli.ssl_context)
    assert pair.server_error is not None
    srv.on_handshake_error(pair.server_error)
    assert srv.stats.fail_verify_no_cert == 1
    # Without require_client_certificate the connection goes on, with no peer certificate.
    optional = server(DownstreamTlsContext(), mat(certs["server"], ca, vc(ca)))
    pair = handshake(optional.ssl_context, cli.ssl_context)
    assert pair.ok
    verdict = optional.on_handshake(pair.server)
    assert verdict.ok and verdict.peer is None and optional.stats.no_certificate == 1


def test_certificate_pin_without_ca(ca: TestCA, certs: dict[str, Issued]) -> None:
    """verify_certificate_spki with no trusted CA: the server requests a certificate, does not
    check its chain, and accepts only the pinned key (needs the native verify callback)."""
    from sidecar.tls.identity import peer_identity

    c = certs["client"]
    pin = CertificateValidationContext(verify_certificate_spki=(peer_identity(c.der).spki_sha256,))
    srv = server(
        DownstreamTlsContext(),
        TlsMaterials(certs["server"].cert_pem, certs["server"].key_pem, validation=pin),
    )
    assert srv.ssl_context.verify_mode == ssl.CERT_REQUIRED
    for who, ok in ((c, True), (ca.workload("ns-b", "other"), False)):
        pair = handshake(srv.ssl_context, client(CLIENT, mat(who, None, None)).ssl_context)
        assert pair.ok
        assert srv.on_handshake(pair.server).ok is ok
    assert srv.stats.fail_verify_cert_hash == 1


def test_accept_untrusted(ca: TestCA, certs: dict[str, Issued], tmp_path: object) -> None:
    """ACCEPT_UNTRUSTED: chain and SAN failures are counted, the peer is accepted anyway."""
    import pathlib

    other = TestCA(pathlib.Path(str(tmp_path)), name="stranger")
    lax = vc(ca, "spiffe://nobody", trust_chain_verification=TrustChainVerification.ACCEPT_UNTRUSTED)
    srv = server(DownstreamTlsContext(), mat(certs["server"], ca, lax))
    assert srv.ssl_context.verify_mode == ssl.CERT_OPTIONAL  # requested, not required
    pair = handshake(srv.ssl_context, client(CLIENT, mat(other.workload("a", "b"), None, None)).ssl_context)
    assert pair.ok
    verdict = srv.on_handshake(pair.server)
    assert verdict.ok and verdict.peer is not None
    assert srv.stats.fail_verify_error == 1 and srv.stats.fail_verify_san == 1


def test_san_override_for_auto_sni_san_validation(ca: TestCA, certs: dict[str, Issued]) -> None:
    s = ca.issue("dns-server", dns=["*.example.com"])
    cli = client(CLIENT, mat(None, ca, vc(ca)))
    srv = server(DownstreamTlsContext(), mat(s, None, None))
    pair = handshake(srv.ssl_context, cli.ssl_context)
    assert cli.on_handshake(pair.client, san_override=("api.example.com",)).ok
    pair = handshake(srv.ssl_context, cli.ssl_context)
    verdict = cli.on_handshake(pair.client, san_override=("api.other.com",))
    assert (verdict.ok, verdict.reason) == (False, "verify cert failed: verify SAN list")


def test_handshake_error_classification() -> None:
    st = TlsStats()
    t = ServerTls(DownstreamTlsContext(), ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), TlsMaterials(), st, "")
    other = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    other.reason = "WRONG_VERSION_NUMBER"
    other.library = "SSL"
    assert t.on_handshake_error(other) == "TLS error: SSL:WRONG_VERSION_NUMBER"
    assert (
        t.on_handshake_error(ConnectionResetError())
        == "connection closed during TLS handshake: ConnectionResetError"
    )
    assert t.on_handshake_error(ssl.SSLEOFError()).startswith("connection closed")
    assert (st.connection_error, st.fail_verify_error, st.fail_verify_no_cert) == (1, 0, 0)


def test_session_resumption_switches(ca: TestCA, certs: dict[str, Issued]) -> None:
    m = mat(certs["server"], None, None)
    on = build_ssl_context(DownstreamTlsContext(), m, TlsStats())
    assert not on.options & ssl.OP_NO_TICKET and on.num_tickets > 0  # Envoy's default: tickets on
    off = build_ssl_context(DownstreamTlsContext(disable_stateless_session_resumption=True), m, TlsStats())
    assert off.options & ssl.OP_NO_TICKET and off.num_tickets == 0


def test_require_sni(ca: TestCA, certs: dict[str, Issued]) -> None:
    srv = server(DownstreamTlsContext(require_sni=True), mat(certs["server"], None, None))
    cli = client(CLIENT, mat(None, None, None))
    assert handshake(srv.ssl_context, cli.ssl_context, sni="svc.example").ok
    refused = handshake(srv.ssl_context, cli.ssl_context, sni=None)
    assert refused.server_error is not None and refused.client_error is not None

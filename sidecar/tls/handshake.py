"""After the handshake: `ServerTls` / `ClientTls`, what a connection uses from one TLS context
version, and the verdict on the peer (Envoy's DefaultCertValidator leaf checks, ContextImpl stats).

The data path holds one ServerTls (or ClientTls) per connection, read from `TlsProvider.current`
when the connection starts, and calls:
- `on_handshake(ssl_object)` once the handshake is done: it counts `ssl.handshake` and friends,
  checks SAN matchers and certificate pins, and returns a `Handshake` (close the connection when
  `ok` is false; the peer identity is in `peer`);
- `on_handshake_error(exc)` when start_tls/connect raised (or `on_ssl_error(exc)`, the same, when a
  later read or write raised an ssl.SSLError): it counts the failure the way
  SslSocket::drainErrorQueue does and returns the reason to log."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from sidecar.model.secret import TrustChainVerification
from sidecar.model.tls import DownstreamTlsContext, TlsContext, UpstreamTlsContext
from sidecar.tls import native
from sidecar.tls.contexts import TlsMaterials, verify_policy
from sidecar.tls.identity import (
    LeafVerdict,
    PeerIdentity,
    SanVerifier,
    Validation,
    dns_name_match,
    peer_identity,
    verify_leaf,
)
from sidecar.tls.stats import TlsStats


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a finished handshake gave: the verdict, the peer and the negotiated parameters."""

    ok: bool
    reason: str = ""  # Envoy's failure reason when not ok ("verify cert failed: SAN matcher" ...)
    peer: PeerIdentity | None = None
    validation: Validation = Validation.NOT_VALIDATED
    alpn: str | None = None
    version: str | None = None
    cipher: str | None = None


class _Tls:
    __slots__ = (
        "_checks",
        "_has_ca",
        "_sans",
        "_untrusted",
        "config",
        "ssl_context",
        "stats",
        "validation",
        "version",
    )

    def __init__(
        self, cfg: TlsContext, ctx: ssl.SSLContext, mat: TlsMaterials, stats: TlsStats, version: str
    ) -> None:
        self.config = cfg
        self.ssl_context = ctx
        self.stats = stats
        self.version = version  # which secret versions this was built from (admin, logs)
        self.validation = mat.validation
        vc = mat.validation
        self._sans = SanVerifier(vc.san_matchers if vc is not None else ())
        self._untrusted = (
            vc is not None and vc.trust_chain_verification is TrustChainVerification.ACCEPT_UNTRUSTED
        )
        self._has_ca = bool(mat.trusted_ca)
        # Leaf checks run when Envoy's verify_mode is not SSL_VERIFY_NONE.
        self._checks = verify_policy(vc, self._has_ca)[0]

    def on_handshake(
        self, obj: ssl.SSLObject | ssl.SSLSocket, san_override: tuple[str, ...] = ()
    ) -> Handshake:
        """Judge the peer's leaf certificate, then count the handshake (ContextImpl::logHandshake).
        Envoy checks SANs and pins inside the handshake, so a refused peer counts only its failure
        stat (fail_verify_san ...), never ssl.handshake.  On a failed verdict the caller closes."""
        try:
            der = obj.getpeercert(binary_form=True)
        except ValueError:
            # The peer's alert arrived right behind its last handshake message (TLS 1.3: a server
            # refusing our certificate) and OpenSSL already left the established state.  Nothing
            # is counted here: the read that surfaces the alert goes through on_ssl_error.
            return Handshake(False, "TLS error: connection aborted by the peer after the handshake")
        st = self.stats
        peer = None
        status = Validation.NOT_VALIDATED
        if der is not None:
            try:
                peer = peer_identity(der)
            except ValueError:
                st.connection_error += 1
                return Handshake(
                    False, "verify cert failed: unparsable peer certificate", None, Validation.FAILED
                )
            verdict = self._verdict(peer, san_override)
            status = verdict.status
            if verdict.stat:
                st.bump(verdict.stat)
            if status is Validation.FAILED and not self._untrusted:
                return Handshake(False, verdict.reason, peer, status)
        st.handshake += 1
        if der is None:
            st.no_certificate += 1
        if obj.session_reused:
            st.session_reused += 1
        version = obj.version()
        cipher = obj.cipher()
        if version:
            st.family("versions", version)
        if cipher:
            st.family("ciphers", cipher[0])
        curve, sigalg = native.handshake_details(obj)
        if curve:
            st.family("curves", curve)
        if sigalg:
            st.family("sigalgs", sigalg)
        return Handshake(
            True, "", peer, status, obj.selected_alpn_protocol(), version, cipher[0] if cipher else None
        )

    def _verdict(self, peer: PeerIdentity, san_override: tuple[str, ...]) -> LeafVerdict:
        vc = self.validation
        if vc is None or not self._checks:
            return LeafVerdict(Validation.NOT_VALIDATED)
        if san_override and not _san_list_matches(peer, san_override):
            return LeafVerdict(Validation.FAILED, "fail_verify_san", "verify cert failed: verify SAN list")
        verdict = verify_leaf(peer, vc, self._sans)
        if verdict.status is Validation.NOT_VALIDATED and self._has_ca:
            # The chain verified in OpenSSL: Envoy's detailed status is then Validated.
            return LeafVerdict(Validation.VALIDATED)
        return verdict

    def on_handshake_error(self, exc: BaseException) -> str:
        """Classify a failed handshake like SslSocket::drainErrorQueue, count it, return the reason.
        Also right for an SSL error on a later read or write (Envoy drains the same queue then)."""
        st = self.stats
        if isinstance(exc, ssl.SSLCertVerificationError):
            st.fail_verify_error += 1
            return f"verify cert failed: {exc.verify_message or exc.reason}"
        if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            reason = exc.reason or ""
            if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
                st.fail_verify_no_cert += 1
            elif reason == "CERTIFICATE_VERIFY_FAILED":
                st.fail_verify_error += 1
            else:
                st.connection_error += 1
            return f"TLS error: {exc.library or 'SSL'}:{reason or exc}"
        # EOF or a reset with nothing in OpenSSL's error queue: Envoy counts nothing.
        return f"connection closed during TLS handshake: {exc.__class__.__name__}"

    on_ssl_error = on_handshake_error


def _san_list_matches(peer: PeerIdentity, names: tuple[str, ...]) -> bool:
    """DefaultCertValidator::verifySubjectAltName (the per-connection SAN override): DNS SANs by DNS
    rules, every other SAN exactly."""
    for name in names:
        if any(dns_name_match(name, san) for san in peer.dns_sans):
            return True
        if name in peer.uri_sans or name in peer.ip_sans or name in peer.email_sans:
            return True
    return False


class ServerTls(_Tls):
    """A filter chain's TLS: hand `ssl_context` to start_tls(server_side=True), then `on_handshake`."""

    __slots__ = ()


class ClientTls(_Tls):
    """A cluster's TLS: connect with `ssl_context` and `server_hostname`, then `on_handshake`."""

    __slots__ = ("server_hostname",)

    def __init__(
        self, cfg: UpstreamTlsContext, ctx: ssl.SSLContext, mat: TlsMaterials, stats: TlsStats, version: str
    ) -> None:
        super().__init__(cfg, ctx, mat, stats, version)
        # asyncio: server_hostname="" sends no SNI and checks nothing, which is Envoy's empty `sni`.
        self.server_hostname = cfg.sni


def tls_for(
    cfg: TlsContext, ctx: ssl.SSLContext, mat: TlsMaterials, stats: TlsStats, version: str = ""
) -> ServerTls | ClientTls:
    if isinstance(cfg, DownstreamTlsContext):
        return ServerTls(cfg, ctx, mat, stats, version)
    return ClientTls(cfg, ctx, mat, stats, version)

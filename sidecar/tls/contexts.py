"""TLS contexts: a DownstreamTlsContext / UpstreamTlsContext plus the bytes of its secrets (already
resolved by the SecretStore, see `TlsMaterials`) -> ssl.SSLContext, server or client.

One ssl.SSLContext is built per distinct content (role, parameters, certificate, key, CA, CRL) and
shared through `ContextCache`: Istio gives hundreds of clusters the same `default` and `ROOTCA`
secrets, and building a context costs milliseconds.  PEM never touches the disk: OpenSSL reads it
from a memfd (`/proc/self/fd/N`).

Who checks what (Envoy's DefaultCertValidator, default_validator.cc):
- OpenSSL, during the handshake: the chain against trusted_ca, with X509_V_FLAG_PARTIAL_CHAIN,
  and CRLs (leaf only, or the whole chain).  Hostnames are never checked (check_hostname is off):
  Envoy has no hostname check, and SPIFFE certificates have empty subjects.
- us, right after the handshake (sidecar.tls.handshake): SAN matchers, certificate hash and SPKI
  pins, with Envoy's verdicts and stats; the connection is closed on failure.
- ACCEPT_UNTRUSTED: OpenSSL's chain check is run but never fails the handshake (native.py)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import ssl
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from sidecar.model.secret import CertificateValidationContext, TrustChainVerification
from sidecar.model.tls import (
    CLIENT_DEFAULT_VERSIONS,
    SERVER_DEFAULT_VERSIONS,
    DownstreamTlsContext,
    TlsContext,
    TlsParams,
    TlsVersion,
)
from sidecar.tls import native
from sidecar.tls.stats import TlsStats

# ServerContextConfigImpl / ClientContextConfigImpl DEFAULT_CIPHER_SUITES (non-FIPS), flattened.
DEFAULT_CIPHER_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
)
DEFAULT_CURVES = ("X25519", "P-256")
KNOWN_CURVES = frozenset({"X25519", "P-256", "P-384", "P-521"})
_VERSIONS = {
    TlsVersion.TLSv1_0: ssl.TLSVersion.TLSv1,
    TlsVersion.TLSv1_1: ssl.TLSVersion.TLSv1_1,
    TlsVersion.TLSv1_2: ssl.TLSVersion.TLSv1_2,
    TlsVersion.TLSv1_3: ssl.TLSVersion.TLSv1_3,
}
_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----")
_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----")


class TlsContextError(Exception):
    """A context cannot be built from this configuration and these secrets (Envoy's messages)."""


# --- checks shared with translate/tls.py ----------------------------------------------------------------


def flatten_cipher_suites(suites: Iterable[str]) -> tuple[str, ...]:
    """BoringSSL cipher lists may hold equal-preference groups "[A|B]"; OpenSSL has none, so keep
    the written order."""
    out: list[str] = []
    for entry in suites:
        for part in str(entry).split(":"):
            out.extend(p for p in part.strip("[]").split("|") if p)
    return tuple(out)


def rejected_cipher_suites(names: tuple[str, ...]) -> list[str]:
    """The names OpenSSL rejects when tried one by one: Envoy sets its list with BoringSSL's strict
    parser, which fails on any unknown name, while OpenSSL would silently skip it."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    bad = []
    for name in names:
        try:
            probe.set_ciphers(name.lstrip("!-+"))  # an operator's operand must be a known name too
        except ssl.SSLError:
            bad.append(name)
    if not bad and names:
        try:
            probe.set_ciphers(":".join(names))
        except ssl.SSLError:
            return list(names)  # every name is known but together they select nothing
    return bad


def validation_context_problem(vc: CertificateValidationContext) -> str | None:
    """CertificateValidationContextConfigImpl::initialize: what needs a trusted CA."""
    if vc.trusted_ca.empty:
        if not vc.crl.empty:
            return "Failed to load CRL without trusted CA"
        if vc.san_matchers:
            return (
                "SAN-based verification of peer certificates without trusted CA is insecure and not allowed"
            )
    if vc.trust_chain_verification is TrustChainVerification.ACCEPT_UNTRUSTED and not native.AVAILABLE:
        return "trust_chain_verification ACCEPT_UNTRUSTED is not supported by this Python's OpenSSL"
    return None


# --- materials ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsMaterials:
    """The bytes a context is built from, already read and merged by the SecretStore/provider."""

    cert_chain: bytes = b""
    private_key: bytes = b""
    password: bytes = b""
    pkcs12: bytes = b""
    trusted_ca: bytes = b""
    crl: bytes = b""
    # The effective validation context (combined_validation_context already merged), or None.
    validation: CertificateValidationContext | None = None

    def digest(self) -> bytes:
        h = hashlib.sha256()
        for part in (
            self.cert_chain,
            self.private_key,
            self.password,
            self.pkcs12,
            self.trusted_ca,
            self.crl,
        ):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.digest()


@contextlib.contextmanager
def _in_memory_file(data: bytes, name: str) -> Iterator[str]:
    """A path OpenSSL can open that holds `data` and lives only in memory (memfd_create)."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd(f"sidecar-{name}", getattr(os, "MFD_CLOEXEC", 1))
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="sidecar-", suffix=".pem") as tmp:  # pragma: no cover
        tmp.write(data)
        tmp.flush()
        yield tmp.name


def _pkcs12_to_pem(blob: bytes, password: bytes) -> tuple[bytes, bytes]:
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(blob, password or None)
    except ValueError as exc:
        raise TlsContextError(f"Failed to load pkcs12: {exc}") from None
    if key is None or cert is None:
        raise TlsContextError("Failed to load pkcs12: no certificate or private key")
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (cert, *extra))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain, key_pem


def _load_certificate(ctx: ssl.SSLContext, mat: TlsMaterials) -> None:
    chain, key, password = mat.cert_chain, mat.private_key, mat.password
    if mat.pkcs12:
        chain, key = _pkcs12_to_pem(mat.pkcs12, mat.password)
        password = b""
    if not _CERT_BLOCK.search(chain):
        raise TlsContextError("Failed to load certificate chain: no certificate found")
    with _in_memory_file(chain, "chain") as chain_path, _in_memory_file(key, "key") as key_path:
        try:
            ctx.load_cert_chain(chain_path, key_path, password or None)
        except (ssl.SSLError, OSError) as exc:
            raise TlsContextError(f"Failed to load certificate chain or private key: {exc}") from None


def _load_trust(ctx: ssl.SSLContext, mat: TlsMaterials, vc: CertificateValidationContext) -> None:
    """trusted_ca (which may itself carry CRLs) plus `crl`, loaded as one store (Envoy's
    initializeSslContexts); CRL checking is switched on only when a CRL was given."""
    if not _CERT_BLOCK.search(mat.trusted_ca):
        raise TlsContextError("Failed to load trusted CA certificates")
    if mat.crl and not _CRL_BLOCK.search(mat.crl):
        raise TlsContextError("Failed to load CRL")
    with _in_memory_file(mat.trusted_ca + b"\n" + mat.crl, "ca") as path:
        try:
            ctx.load_verify_locations(cafile=path)
        except (ssl.SSLError, OSError) as exc:
            raise TlsContextError(f"Failed to load trusted CA certificates: {exc}") from None
    flags = ctx.verify_flags | ssl.VERIFY_X509_PARTIAL_CHAIN
    if _CRL_BLOCK.search(mat.trusted_ca) or mat.crl:
        flags |= ssl.VERIFY_CRL_CHECK_LEAF if vc.only_verify_leaf_cert_crl else ssl.VERIFY_CRL_CHECK_CHAIN
    ctx.verify_flags = flags
    if vc.max_verify_depth is not None:
        # Envoy documents BoringSSL's old depth (leaf excluded, anchor included); OpenSSL counts
        # like new BoringSSL, so Envoy subtracts one (DefaultCertValidator::addClientValidationContext).
        if not native.set_verify_depth(ctx, max(vc.max_verify_depth - 1, 0)):
            raise TlsContextError("max_verify_depth is not supported by this Python's OpenSSL")


def _apply_params(ctx: ssl.SSLContext, params: TlsParams, defaults: tuple[TlsVersion, TlsVersion]) -> None:
    lo = defaults[0] if params.min_version is TlsVersion.AUTO else params.min_version
    hi = defaults[1] if params.max_version is TlsVersion.AUTO else params.max_version
    ctx.minimum_version = _VERSIONS[lo]
    ctx.maximum_version = _VERSIONS[hi]
    try:
        ctx.set_ciphers(":".join(params.cipher_suites or DEFAULT_CIPHER_SUITES))
    except ssl.SSLError as exc:
        raise TlsContextError(f"Failed to initialize cipher suites: {exc}") from None
    curves = params.ecdh_curves or DEFAULT_CURVES
    if not native.set_groups(ctx, curves) and params.ecdh_curves:
        raise TlsContextError(f"Failed to initialize ECDH curves {':'.join(curves)}")
    if params.signature_algorithms and not native.set_sigalgs(ctx, params.signature_algorithms):
        raise TlsContextError(
            f"Failed to initialize TLS signature algorithms {':'.join(params.signature_algorithms)}"
        )


def verify_policy(vc: CertificateValidationContext | None, has_ca: bool) -> tuple[bool, bool]:
    """(request a peer certificate, require one), before require_client_certificate: Envoy's
    initializeSslContexts verify_mode.  A CA alone requests; SAN/hash/SPKI checks require;
    ACCEPT_UNTRUSTED requests even with nothing to verify against.  "Request" is also whether the
    peer's certificate is verified at all (verify_mode != SSL_VERIFY_NONE), on either side."""
    if vc is None:
        return False, False
    untrusted = vc.trust_chain_verification is TrustChainVerification.ACCEPT_UNTRUSTED
    checks = bool(vc.san_matchers or vc.verify_certificate_hash or vc.verify_certificate_spki)
    request = has_ca or checks or untrusted
    require = checks and not untrusted
    return request, require


def build_ssl_context(cfg: TlsContext, mat: TlsMaterials, stats: TlsStats) -> ssl.SSLContext:
    """A fresh ssl.SSLContext for `cfg` (use ContextCache.get to share them)."""
    server = isinstance(cfg, DownstreamTlsContext)
    vc = mat.validation
    if vc is not None:
        problem = validation_context_problem(vc)
        if problem is not None:
            raise TlsContextError(problem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # never: SAN matchers (or nothing) decide, as in Envoy
    ctx.verify_mode = ssl.CERT_NONE
    _apply_params(ctx, cfg.common.tls_params, SERVER_DEFAULT_VERSIONS if server else CLIENT_DEFAULT_VERSIONS)
    # BoringSSL, and so Envoy, never renegotiates as a server; as a client only with allow_renegotiation.
    if server or not getattr(cfg, "allow_renegotiation", False):
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    if mat.cert_chain or mat.pkcs12:
        _load_certificate(ctx, mat)
    elif server:
        raise TlsContextError("Server TlsCertificates must have a certificate specified")
    has_ca = bool(mat.trusted_ca)
    if vc is not None and has_ca:
        _load_trust(ctx, mat, vc)
    request, require = verify_policy(vc, has_ca)
    if isinstance(cfg, DownstreamTlsContext):
        _server_options(ctx, cfg)
        # addClientValidationContext: require_client_certificate only counts with a trusted CA.
        if cfg.require_client_certificate and has_ca:
            require = True
        if require:
            request = True
        ctx.verify_mode = ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL if request else ssl.CERT_NONE
    else:
        # A client always gets the server's certificate; verification is what the mode switches on.
        ctx.verify_mode = ssl.CERT_REQUIRED if has_ca else ssl.CERT_NONE
    untrusted = vc is not None and vc.trust_chain_verification is TrustChainVerification.ACCEPT_UNTRUSTED
    if ctx.verify_mode != ssl.CERT_NONE and (untrusted or not has_ca):
        # Chain failures are counted, never fatal; with no CA there is no chain to check at all.
        if not native.accept_untrusted(
            ctx, lambda _code: stats.bump("fail_verify_error") if has_ca else None
        ):
            raise TlsContextError(
                "accepting untrusted peer certificates is not supported by this Python's OpenSSL"
            )
    if cfg.common.alpn_protocols:
        ctx.set_alpn_protocols(list(cfg.common.alpn_protocols))
    return ctx


def _server_options(ctx: ssl.SSLContext, cfg: DownstreamTlsContext) -> None:
    if not cfg.prefer_client_ciphers:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if cfg.disable_stateless_session_resumption:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    if cfg.disable_stateful_session_resumption and not native.disable_session_cache(ctx):
        raise TlsContextError("disable_stateful_session_resumption is not supported by this Python's OpenSSL")
    if cfg.session_timeout is not None and not native.set_session_timeout(ctx, int(cfg.session_timeout)):
        raise TlsContextError("session_timeout is not supported by this Python's OpenSSL")
    if cfg.require_sni:
        ctx.sni_callback = _require_sni


def _require_sni(_obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
    return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE if name is None else None


# --- the cache ---------------------------------------------------------------------------------------------------


class ContextCache:
    """ssl.SSLContexts by content hash, held weakly: a context lives while something still uses it
    (a ServerTls/ClientTls, so a listener, a cluster, or an open connection's SSL object)."""

    def __init__(self) -> None:
        self._contexts: weakref.WeakValueDictionary[bytes, ssl.SSLContext] = weakref.WeakValueDictionary()
        self.builds = 0  # contexts built (tests; the admin could show it)

    def key(self, cfg: TlsContext, mat: TlsMaterials, stats: TlsStats) -> bytes:
        vc = mat.validation
        policy = (
            verify_policy(vc, bool(mat.trusted_ca)),
            None
            if vc is None
            else (vc.trust_chain_verification, vc.only_verify_leaf_cert_crl, vc.max_verify_depth),
        )
        common = cfg.common
        shape: tuple[object, ...] = (type(cfg).__name__, common.tls_params, common.alpn_protocols, policy)
        if isinstance(cfg, DownstreamTlsContext):
            shape += (
                cfg.require_client_certificate,
                cfg.require_sni,
                cfg.disable_stateless_session_resumption,
                cfg.disable_stateful_session_resumption,
                cfg.session_timeout,
                cfg.prefer_client_ciphers,
            )
        else:
            shape += (cfg.allow_renegotiation,)
        if vc is not None and vc.trust_chain_verification is TrustChainVerification.ACCEPT_UNTRUSTED:
            shape += (id(stats),)  # the verify callback counts into this owner's stats
        return hashlib.sha256(repr(shape).encode() + mat.digest()).digest()

    def get(self, cfg: TlsContext, mat: TlsMaterials, stats: TlsStats) -> ssl.SSLContext:
        """The ssl.SSLContext for `cfg` with these materials: an equal one if it is alive, else new."""
        key = self.key(cfg, mat, stats)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = build_ssl_context(cfg, mat, stats)
            self._contexts[key] = ctx
            self.builds += 1
        return ctx


DEFAULT_CACHE = ContextCache()

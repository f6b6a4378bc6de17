"""TLS transport sockets: Envoy's DownstreamTlsContext (listeners, filter chains) and
UpstreamTlsContext (clusters, transport_socket_matches), with their CommonTlsContext.

Pure data built by `sidecar.translate.tls`.  Certificates and validation contexts are either inline
(their DataSources here) or references by name to secrets that `sidecar.tls.secrets.SecretStore`
resolves; `sidecar.tls.contexts` turns a context plus its resolved secrets into ssl.SSLContext."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sidecar.model.secret import CertificateValidationContext, SdsSecretConfig, TlsCertificate


class TlsVersion(Enum):
    """TlsParameters.TlsProtocol; AUTO means the side's default (below)."""

    AUTO = "TLS_AUTO"
    TLSv1_0 = "TLSv1_0"
    TLSv1_1 = "TLSv1_1"
    TLSv1_2 = "TLSv1_2"
    TLSv1_3 = "TLSv1_3"


# ServerContextConfigImpl / ClientContextConfigImpl DEFAULT_MIN_VERSION and DEFAULT_MAX_VERSION.
SERVER_DEFAULT_VERSIONS = (TlsVersion.TLSv1_2, TlsVersion.TLSv1_3)
CLIENT_DEFAULT_VERSIONS = (TlsVersion.TLSv1_2, TlsVersion.TLSv1_2)


@dataclass(frozen=True, slots=True)
class TlsParams:
    """TlsParameters.  Empty cipher_suites / ecdh_curves mean Envoy's defaults for the side."""

    min_version: TlsVersion = TlsVersion.AUTO
    max_version: TlsVersion = TlsVersion.AUTO
    # TLS <= 1.2 cipher suites in preference order (BoringSSL's "[A|B]" equal-preference groups are
    # flattened in their written order); TLS 1.3 suites are not configurable, as in Envoy.
    cipher_suites: tuple[str, ...] = ()
    ecdh_curves: tuple[str, ...] = ()
    signature_algorithms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CommonTlsContext:
    tls_params: TlsParams = TlsParams()
    # Inline certificates, or references by name (never both on a server, as in Envoy).
    tls_certificates: tuple[TlsCertificate, ...] = ()
    tls_certificate_sds: tuple[SdsSecretConfig, ...] = ()
    # The peer check: inline (`validation_context`), by name (`validation_context_sds`), or both
    # (combined_validation_context: the SDS context merged into the inline default).
    validation_context: CertificateValidationContext | None = None
    validation_context_sds: SdsSecretConfig | None = None
    alpn_protocols: tuple[str, ...] = ()

    @property
    def secret_names(self) -> tuple[str, ...]:
        """Every secret this context waits for (the listener or cluster warms until all arrive)."""
        names = tuple(s.name for s in self.tls_certificate_sds)
        if self.validation_context_sds is not None:
            names += (self.validation_context_sds.name,)
        return names


@dataclass(frozen=True, slots=True)
class DownstreamTlsContext:
    """envoy.transport_sockets.tls on a listener filter chain (a TLS server)."""

    common: CommonTlsContext = CommonTlsContext()
    # BoolValue; unset is Envoy's "deprecated insecure default" false (a warning is logged).
    require_client_certificate: bool = False
    require_sni: bool = False
    # Envoy leaves stateless resumption on (BoringSSL's per-context random ticket key) unless
    # disable_stateless_session_resumption; stateful resumption (the server session cache) likewise.
    disable_stateless_session_resumption: bool = False
    disable_stateful_session_resumption: bool = False
    session_timeout: float | None = None
    prefer_client_ciphers: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamTlsContext:
    """envoy.transport_sockets.tls on a cluster (a TLS client)."""

    common: CommonTlsContext = CommonTlsContext()
    # Empty: no SNI extension is sent.
    sni: str = ""
    # Envoy refuses renegotiation unless allow_renegotiation; OpenSSL clients never renegotiate
    # TLS 1.3 and we refuse it for 1.2 (ssl.OP_NO_RENEGOTIATION), so only false is accepted.
    allow_renegotiation: bool = False
    # max_session_keys (default 1): how many sessions the client keeps for resumption.
    max_session_keys: int = 1


TlsContext = DownstreamTlsContext | UpstreamTlsContext

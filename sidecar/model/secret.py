"""Secrets and peer validation: what a certificate, a key or a trust bundle is, where its bytes come
from, and how a peer certificate is judged (Envoy's extensions.transport_sockets.tls.v3 Secret,
TlsCertificate, CertificateValidationContext, SubjectAltNameMatcher, SdsSecretConfig).

Pure data.  Bytes behind a `filename` or an environment variable are not read here (translation
does no I/O): `sidecar.tls.secrets.SecretStore` reads them, watches files, and versions the result.
SAN matchers keep the StringMatcher as written; `sidecar.tls.identity` compiles and runs them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class DataSourceKind(Enum):
    INLINE = "inline"  # inline_bytes / inline_string
    FILE = "file"  # filename (watched for rotation)
    ENV = "env"  # environment_variable


@dataclass(frozen=True, slots=True)
class DataSource:
    """config.core.v3.DataSource.  `inline` holds the bytes; `name` the path or variable name."""

    kind: DataSourceKind = DataSourceKind.INLINE
    inline: bytes = b""
    name: str = ""

    @property
    def empty(self) -> bool:
        return self.kind is DataSourceKind.INLINE and not self.inline


@dataclass(frozen=True, slots=True)
class TlsCertificate:
    """A certificate chain (PEM, leaf first) and its private key; or a PKCS#12 bundle instead."""

    certificate_chain: DataSource = DataSource()
    private_key: DataSource = DataSource()
    password: DataSource = DataSource()
    pkcs12: DataSource = DataSource()


class MatchKind(Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    CONTAINS = "contains"
    SAFE_REGEX = "safe_regex"


@dataclass(frozen=True, slots=True)
class StringMatcher:
    """type.matcher.v3.StringMatcher.  safe_regex is RE2 full match (its program size limit kept)."""

    kind: MatchKind
    pattern: str
    ignore_case: bool = False
    max_program_size: int = 100


class SanType(Enum):
    """SubjectAltNameMatcher.SanType (OTHER_NAME is refused at translation)."""

    DNS = "DNS"
    URI = "URI"
    EMAIL = "EMAIL"
    IP_ADDRESS = "IP_ADDRESS"


@dataclass(frozen=True, slots=True)
class SanMatcher:
    san_type: SanType
    matcher: StringMatcher


class TrustChainVerification(Enum):
    VERIFY_TRUST_CHAIN = "VERIFY_TRUST_CHAIN"
    # Envoy still runs every check and counts failures (ssl.fail_verify_error, fail_verify_san), but
    # accepts the peer anyway (DefaultCertValidator::allow_untrusted_certificate_).
    ACCEPT_UNTRUSTED = "ACCEPT_UNTRUSTED"


@dataclass(frozen=True, slots=True)
class CertificateValidationContext:
    """How a peer certificate is checked.

    `san_matchers` is what Envoy calls subjectAltNameMatchers(): match_typed_subject_alt_names when
    given, otherwise each legacy match_subject_alt_names entry expanded to DNS, URI, EMAIL and
    IP_ADDRESS matchers (CertificateValidationContextConfigImpl::getSubjectAltNameMatchers).
    `verify_certificate_hash` holds raw SHA-256 digests of the DER certificate,
    `verify_certificate_spki` raw SHA-256 digests of the DER SubjectPublicKeyInfo."""

    trusted_ca: DataSource = DataSource()
    crl: DataSource = DataSource()
    san_matchers: tuple[SanMatcher, ...] = ()
    verify_certificate_hash: tuple[bytes, ...] = ()
    verify_certificate_spki: tuple[bytes, ...] = ()
    trust_chain_verification: TrustChainVerification = TrustChainVerification.VERIFY_TRUST_CHAIN
    only_verify_leaf_cert_crl: bool = False
    max_verify_depth: int | None = None

    def merged(self, dynamic: CertificateValidationContext) -> CertificateValidationContext:
        """combined_validation_context: the default context with the SDS one merged in, as protobuf
        MergeFrom does (ContextConfigImpl::getCombinedValidationContextConfig): set scalar fields of
        `dynamic` win, repeated fields are concatenated."""
        return CertificateValidationContext(
            trusted_ca=self.trusted_ca if dynamic.trusted_ca.empty else dynamic.trusted_ca,
            crl=self.crl if dynamic.crl.empty else dynamic.crl,
            san_matchers=self.san_matchers + dynamic.san_matchers,
            verify_certificate_hash=self.verify_certificate_hash + dynamic.verify_certificate_hash,
            verify_certificate_spki=self.verify_certificate_spki + dynamic.verify_certificate_spki,
            trust_chain_verification=(
                dynamic.trust_chain_verification
                if dynamic.trust_chain_verification is not TrustChainVerification.VERIFY_TRUST_CHAIN
                else self.trust_chain_verification
            ),
            only_verify_leaf_cert_crl=self.only_verify_leaf_cert_crl or dynamic.only_verify_leaf_cert_crl,
            max_verify_depth=(
                dynamic.max_verify_depth if dynamic.max_verify_depth is not None else self.max_verify_depth
            ),
        )


class SdsSourceKind(Enum):
    STATIC = "static"  # no sds_config: bootstrap static_resources.secrets, by name
    ADS = "ads"  # sds_config.ads
    GRPC = "grpc"  # sds_config.api_config_source GRPC/DELTA_GRPC (Istio: envoy_grpc cluster sds-grpc)
    PATH = "path"  # sds_config.path_config_source: a file holding a DiscoveryResponse


@dataclass(frozen=True, slots=True)
class SdsSource:
    kind: SdsSourceKind = SdsSourceKind.STATIC
    cluster: str = ""  # GRPC: the envoy_grpc cluster_name
    path: str = ""  # PATH: the file
    delta: bool = False  # GRPC: DELTA_GRPC
    initial_fetch_timeout: float = 15.0


@dataclass(frozen=True, slots=True)
class SdsSecretConfig:
    """A reference to a secret by name (Istio: `default` for the workload cert, `ROOTCA` for roots)."""

    name: str
    source: SdsSource = SdsSource()


@dataclass(frozen=True, slots=True)
class Secret:
    """A named secret (static_resources.secrets or an SDS resource): exactly one of the two is set."""

    name: str
    tls_certificate: TlsCertificate | None = None
    validation_context: CertificateValidationContext | None = None

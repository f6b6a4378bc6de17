"""envoy.transport_sockets.tls (extensions.transport_sockets.tls.v3) -> model.tls / model.secret.

Entry points for the listener, cluster and secret translators:
- `translate_transport_socket(pb, path, downstream=...)`: a TransportSocket; None for raw_buffer.
- `translate_downstream_tls_context` / `translate_upstream_tls_context`: the typed configs.
- `translate_secret`: a Secret (bootstrap static_resources.secrets, or an SDS resource).

Every set field is either implemented or refused with its field path (fields.check_fields).  No I/O:
`filename` and `environment_variable` sources are kept as references and read by
sidecar.tls.secrets; `sds_secret_configs` are kept by name for the SecretStore to resolve.  Checks
that Envoy makes when it builds a context (CertificateValidationContextConfigImpl::initialize,
ServerContextConfigImpl) are made here when everything is inline, and again by sidecar.tls.contexts
once SDS secrets are merged in."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from sidecar.model.cluster import Cluster
from sidecar.model.listener import Listener
from sidecar.model.secret import (
    CertificateValidationContext,
    DataSource,
    DataSourceKind,
    MatchKind,
    SanMatcher,
    SanType,
    SdsSecretConfig,
    SdsSource,
    SdsSourceKind,
    Secret,
    StringMatcher,
    TlsCertificate,
    TrustChainVerification,
)
from sidecar.model.tls import (
    CommonTlsContext,
    DownstreamTlsContext,
    TlsContext,
    TlsParams,
    TlsVersion,
    UpstreamTlsContext,
)
from sidecar.routing import matchers as m
from sidecar.tls import contexts
from sidecar.translate.common import enum_name, type_name, unpack
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields, opt_duration

TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER = "envoy.transport_sockets.raw_buffer"
_DOWNSTREAM = tls_pb2.DownstreamTlsContext.DESCRIPTOR.full_name
_UPSTREAM = tls_pb2.UpstreamTlsContext.DESCRIPTOR.full_name
_RAW = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
_LEGACY_SAN_TYPES = (SanType.DNS, SanType.URI, SanType.EMAIL, SanType.IP_ADDRESS)


def translate_transport_socket(
    pb: base_pb2.TransportSocket, path: str, *, downstream: bool
) -> TlsContext | None:
    """A listener filter chain's (downstream) or a cluster's transport_socket.  Like Envoy we find
    the extension by its typed_config type; a socket with only a name is looked up by name."""
    check_fields(pb, path, handled=("name", "typed_config"))
    url = type_name(pb.typed_config.type_url) if pb.HasField("typed_config") else ""
    if url == _RAW or (not url and pb.name == RAW_BUFFER):
        return None
    want = _DOWNSTREAM if downstream else _UPSTREAM
    if url == want:
        tp = f"{path}.typed_config"
        if downstream:
            return translate_downstream_tls_context(
                unpack(pb.typed_config, tls_pb2.DownstreamTlsContext, tp), tp
            )
        return translate_upstream_tls_context(unpack(pb.typed_config, tls_pb2.UpstreamTlsContext, tp), tp)
    if not url and pb.name == TLS_SOCKET:
        return DownstreamTlsContext() if downstream else UpstreamTlsContext()
    what = url or pb.name or "(empty)"
    raise ConfigError(path, f"transport socket '{what}' is not supported by sidecar yet")


def translate_downstream_tls_context(pb: tls_pb2.DownstreamTlsContext, path: str) -> DownstreamTlsContext:
    check_fields(
        pb,
        path,
        handled=(
            "common_tls_context",
            "require_client_certificate",
            "require_sni",
            "disable_stateless_session_resumption",
            "disable_stateful_session_resumption",
            "session_timeout",
            "prefer_client_ciphers",
        ),
    )
    common = _common(pb.common_tls_context, f"{path}.common_tls_context")
    cp = f"{path}.common_tls_context"
    # ServerContextConfigImpl: a server needs a certificate, and SDS and inline ones do not mix.
    if not common.tls_certificates and not common.tls_certificate_sds:
        raise ConfigError(cp, "No TLS certificates found for server context")
    if common.tls_certificates and common.tls_certificate_sds:
        raise ConfigError(cp, "SDS and non-SDS TLS certificates may not be mixed in server contexts")
    if len(common.tls_certificates) + len(common.tls_certificate_sds) > 1:
        raise ConfigError(
            f"{cp}.tls_certificates", "multiple server certificates are not supported by sidecar yet"
        )
    timeout = None
    if pb.HasField("session_timeout"):
        timeout = opt_duration(pb, "session_timeout", 0.0)
        if timeout < 0 or timeout > 4294967295:
            raise ConfigError(f"{path}.session_timeout", "value must be inside range [0s, 4294967296s)")
    return DownstreamTlsContext(
        common=common,
        require_client_certificate=pb.HasField("require_client_certificate")
        and pb.require_client_certificate.value,
        require_sni=pb.HasField("require_sni") and pb.require_sni.value,
        disable_stateless_session_resumption=pb.disable_stateless_session_resumption,
        disable_stateful_session_resumption=pb.disable_stateful_session_resumption,
        session_timeout=timeout,
        prefer_client_ciphers=pb.prefer_client_ciphers,
    )


def translate_upstream_tls_context(pb: tls_pb2.UpstreamTlsContext, path: str) -> UpstreamTlsContext:
    check_fields(
        pb,
        path,
        handled=(
            "common_tls_context",
            "sni",
            "allow_renegotiation",
            "max_session_keys",
            "enforce_rsa_key_usage",
        ),
    )
    if pb.HasField("enforce_rsa_key_usage") and pb.enforce_rsa_key_usage.value:
        raise ConfigError(f"{path}.enforce_rsa_key_usage", "field is not supported by sidecar yet")
    if "\0" in pb.sni:
        raise ConfigError(f"{path}.sni", "SNI names containing NULL-byte are not allowed")
    if len(pb.sni.encode()) > 255:
        raise ConfigError(f"{path}.sni", "value length must be at most 255 bytes")
    common = _common(pb.common_tls_context, f"{path}.common_tls_context")
    if len(common.tls_certificates) + len(common.tls_certificate_sds) > 1:
        raise ConfigError(
            f"{path}.common_tls_context", "Multiple TLS certificates are not supported for client contexts"
        )
    return UpstreamTlsContext(
        common=common,
        sni=pb.sni,
        allow_renegotiation=pb.allow_renegotiation,
        max_session_keys=pb.max_session_keys.value if pb.HasField("max_session_keys") else 1,
    )


def translate_secret(pb: secret_pb2.Secret, path: str) -> Secret:
    """A named secret.  Session ticket keys and generic secrets are not implemented."""
    check_fields(pb, path, handled=("name", "tls_certificate", "validation_context"))
    if not pb.name:
        raise ConfigError(f"{path}.name", "value length must be at least 1 characters")
    which = pb.WhichOneof("type")
    if which == "tls_certificate":
        cert = _tls_certificate(pb.tls_certificate, f"{path}.tls_certificate")
        if cert is None:
            raise ConfigError(f"{path}.tls_certificate", "certificate_chain or pkcs12 is required")
        return Secret(pb.name, tls_certificate=cert)
    if which == "validation_context":
        vc = translate_validation_context(
            pb.validation_context, f"{path}.validation_context", standalone=False
        )
        return Secret(pb.name, validation_context=vc)
    raise ConfigError(path, "secret type is required")


# --- CommonTlsContext --------------------------------------------------------------------------------


def _common(pb: tls_pb2.CommonTlsContext, path: str) -> CommonTlsContext:
    check_fields(
        pb,
        path,
        handled=(
            "tls_params",
            "tls_certificates",
            "tls_certificate_sds_secret_configs",
            "validation_context",
            "validation_context_sds_secret_config",
            "combined_validation_context",
            "alpn_protocols",
        ),
    )
    certs = []
    for i, c in enumerate(pb.tls_certificates):
        cert = _tls_certificate(c, f"{path}.tls_certificates[{i}]")
        if cert is not None:  # Envoy skips entries with no chain, key or pkcs12
            certs.append(cert)
    sds = tuple(
        translate_sds_secret_config(s, f"{path}.tls_certificate_sds_secret_configs[{i}]")
        for i, s in enumerate(pb.tls_certificate_sds_secret_configs)
    )
    vc: CertificateValidationContext | None = None
    vc_sds: SdsSecretConfig | None = None
    which = pb.WhichOneof("validation_context_type")
    if which == "validation_context":
        vc = translate_validation_context(
            pb.validation_context, f"{path}.validation_context", standalone=True
        )
    elif which == "validation_context_sds_secret_config":
        vc_sds = translate_sds_secret_config(
            pb.validation_context_sds_secret_config, f"{path}.validation_context_sds_secret_config"
        )
    elif which == "combined_validation_context":
        cp = f"{path}.combined_validation_context"
        cvc = pb.combined_validation_context
        check_fields(cvc, cp, handled=("default_validation_context", "validation_context_sds_secret_config"))
        if not cvc.HasField("default_validation_context"):
            raise ConfigError(f"{cp}.default_validation_context", "value is required")
        if not cvc.HasField("validation_context_sds_secret_config"):
            raise ConfigError(f"{cp}.validation_context_sds_secret_config", "value is required")
        vc = translate_validation_context(
            cvc.default_validation_context, f"{cp}.default_validation_context", standalone=False
        )
        vc_sds = translate_sds_secret_config(
            cvc.validation_context_sds_secret_config, f"{cp}.validation_context_sds_secret_config"
        )
    alpn = tuple(pb.alpn_protocols)
    for i, proto in enumerate(alpn):
        if not proto or len(proto.encode()) > 255:
            raise ConfigError(f"{path}.alpn_protocols[{i}]", f"Invalid ALPN protocol string '{proto}'")
    params = _tls_params(pb.tls_params, f"{path}.tls_params") if pb.HasField("tls_params") else TlsParams()
    return CommonTlsContext(
        tls_params=params,
        tls_certificates=tuple(certs),
        tls_certificate_sds=sds,
        validation_context=vc,
        validation_context_sds=vc_sds,
        alpn_protocols=alpn,
    )


def _tls_params(pb: common_pb2.TlsParameters, path: str) -> TlsParams:
    check_fields(
        pb,
        path,
        handled=(
            "tls_minimum_protocol_version",
            "tls_maximum_protocol_version",
            "cipher_suites",
            "ecdh_curves",
            "signature_algorithms",
        ),
    )
    lo = TlsVersion(enum_name(pb, "tls_minimum_protocol_version", path))
    hi = TlsVersion(enum_name(pb, "tls_maximum_protocol_version", path))
    ciphers = contexts.flatten_cipher_suites(pb.cipher_suites)
    rejected = contexts.rejected_cipher_suites(ciphers)
    if rejected:
        raise ConfigError(
            f"{path}.cipher_suites",
            f"Failed to initialize cipher suites {':'.join(pb.cipher_suites)}. The following ciphers were "
            f"rejected when tried individually: {', '.join(rejected)}",
        )
    curves = tuple(pb.ecdh_curves)
    for i, curve in enumerate(curves):
        if curve not in contexts.KNOWN_CURVES:
            raise ConfigError(
                f"{path}.ecdh_curves[{i}]", f"Failed to initialize ECDH curves {':'.join(curves)}"
            )
    return TlsParams(lo, hi, ciphers, curves, tuple(pb.signature_algorithms))


# --- certificates and data sources ---------------------------------------------------------------------


def translate_data_source(pb: base_pb2.DataSource, path: str) -> DataSource:
    check_fields(pb, path, handled=("filename", "inline_bytes", "inline_string", "environment_variable"))
    which = pb.WhichOneof("specifier")
    if which == "filename":
        if not pb.filename:
            raise ConfigError(f"{path}.filename", "value length must be at least 1 characters")
        return DataSource(DataSourceKind.FILE, name=pb.filename)
    if which == "environment_variable":
        if not pb.environment_variable:
            raise ConfigError(f"{path}.environment_variable", "value length must be at least 1 characters")
        return DataSource(DataSourceKind.ENV, name=pb.environment_variable)
    if which == "inline_string":
        return DataSource(inline=pb.inline_string.encode())
    return DataSource(inline=bytes(pb.inline_bytes))


def _tls_certificate(pb: common_pb2.TlsCertificate, path: str) -> TlsCertificate | None:
    check_fields(pb, path, handled=("certificate_chain", "private_key", "password", "pkcs12"))
    if not (pb.HasField("certificate_chain") or pb.HasField("private_key") or pb.HasField("pkcs12")):
        return None
    if pb.HasField("pkcs12"):
        if pb.HasField("certificate_chain") or pb.HasField("private_key"):
            raise ConfigError(
                f"{path}.pkcs12", "Certificate configuration can't have both pkcs12 and certificate_chain"
            )
    elif not pb.HasField("certificate_chain"):
        raise ConfigError(
            f"{path}.certificate_chain", "Failed to load incomplete certificate: certificate chain is missing"
        )
    elif not pb.HasField("private_key"):
        raise ConfigError(
            f"{path}.private_key", "Failed to load incomplete certificate: private key is missing"
        )
    ds = {
        name: translate_data_source(getattr(pb, name), f"{path}.{name}")
        for name in ("certificate_chain", "private_key", "password", "pkcs12")
        if pb.HasField(name)
    }
    return TlsCertificate(**ds)


# --- CertificateValidationContext --------------------------------------------------------------------------


def translate_validation_context(
    pb: common_pb2.CertificateValidationContext, path: str, *, standalone: bool
) -> CertificateValidationContext:
    """`standalone`: the context is used as it is (not merged with an SDS one), so Envoy's
    "no trusted CA" checks apply now."""
    check_fields(
        pb,
        path,
        handled=(
            "trusted_ca",
            "crl",
            "match_typed_subject_alt_names",
            "match_subject_alt_names",
            "verify_certificate_hash",
            "verify_certificate_spki",
            "trust_chain_verification",
            "only_verify_leaf_cert_crl",
            "max_verify_depth",
            "require_signed_certificate_timestamp",
        ),
    )
    if pb.HasField("require_signed_certificate_timestamp") and pb.require_signed_certificate_timestamp.value:
        raise ConfigError(
            f"{path}.require_signed_certificate_timestamp", "field is not supported by sidecar yet"
        )
    sans: list[SanMatcher] = []
    if pb.match_typed_subject_alt_names:
        # Typed matchers win; the legacy list is then ignored (Envoy logs a warning).
        for i, t in enumerate(pb.match_typed_subject_alt_names):
            sans.append(_typed_san_matcher(t, f"{path}.match_typed_subject_alt_names[{i}]"))
    else:
        for i, sm in enumerate(pb.match_subject_alt_names):
            matcher = translate_string_matcher(sm, f"{path}.match_subject_alt_names[{i}]")
            sans.extend(SanMatcher(t, matcher) for t in _LEGACY_SAN_TYPES)
    hashes = tuple(
        _cert_hash(h, f"{path}.verify_certificate_hash[{i}]")
        for i, h in enumerate(pb.verify_certificate_hash)
    )
    spkis = tuple(
        _spki(h, f"{path}.verify_certificate_spki[{i}]") for i, h in enumerate(pb.verify_certificate_spki)
    )
    vc = CertificateValidationContext(
        trusted_ca=translate_data_source(pb.trusted_ca, f"{path}.trusted_ca")
        if pb.HasField("trusted_ca")
        else DataSource(),
        crl=translate_data_source(pb.crl, f"{path}.crl") if pb.HasField("crl") else DataSource(),
        san_matchers=tuple(sans),
        verify_certificate_hash=hashes,
        verify_certificate_spki=spkis,
        trust_chain_verification=TrustChainVerification(enum_name(pb, "trust_chain_verification", path)),
        only_verify_leaf_cert_crl=pb.only_verify_leaf_cert_crl,
        max_verify_depth=pb.max_verify_depth.value if pb.HasField("max_verify_depth") else None,
    )
    if standalone:
        problem = contexts.validation_context_problem(vc)
        if problem is not None:
            raise ConfigError(path, problem)
    return vc


def _typed_san_matcher(pb: common_pb2.SubjectAltNameMatcher, path: str) -> SanMatcher:
    check_fields(pb, path, handled=("san_type", "matcher", "oid"))
    kind = enum_name(pb, "san_type", path)
    if kind == "SAN_TYPE_UNSPECIFIED":
        raise ConfigError(f"{path}.san_type", "value must not be in list [SAN_TYPE_UNSPECIFIED]")
    if kind == "OTHER_NAME":
        raise ConfigError(f"{path}.san_type", "OTHER_NAME SAN matchers are not supported by sidecar yet")
    if not pb.HasField("matcher"):
        raise ConfigError(f"{path}.matcher", "value is required")
    return SanMatcher(SanType(kind), translate_string_matcher(pb.matcher, f"{path}.matcher"))


def translate_string_matcher(pb: string_pb2.StringMatcher, path: str) -> StringMatcher:
    """type.matcher.v3.StringMatcher as data; a safe_regex is compiled once here to refuse bad ones."""
    check_fields(pb, path, handled=("exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"))
    which = pb.WhichOneof("match_pattern")
    if which is None:
        raise ConfigError(path, 'field: "match_pattern", reason: is required')
    if which == "safe_regex":
        rp = f"{path}.safe_regex"
        if pb.ignore_case:
            raise ConfigError(f"{path}.ignore_case", "ignore_case has no effect for safe_regex.")
        check_fields(pb.safe_regex, rp, handled=("regex", "google_re2"))
        limit = m.DEFAULT_MAX_PROGRAM_SIZE
        if pb.safe_regex.HasField("google_re2"):
            check_fields(pb.safe_regex.google_re2, f"{rp}.google_re2", handled=("max_program_size",))
            if pb.safe_regex.google_re2.HasField("max_program_size"):
                limit = pb.safe_regex.google_re2.max_program_size.value
        if not pb.safe_regex.regex:
            raise ConfigError(f"{rp}.regex", "value length must be at least 1 characters")
        try:
            m.compile_regex(pb.safe_regex.regex, limit)
        except ValueError as exc:
            raise ConfigError(f"{rp}.regex", str(exc)) from None
        return StringMatcher(MatchKind.SAFE_REGEX, pb.safe_regex.regex, False, limit)
    value = getattr(pb, which)
    if which != "exact" and not value:
        raise ConfigError(f"{path}.{which}", "value length must be at least 1 characters")
    return StringMatcher(MatchKind(which), value, pb.ignore_case)


def _cert_hash(text: str, path: str) -> bytes:
    """A hex SHA-256 of the DER certificate, maybe colon-separated (95 characters) as openssl prints."""
    hexed = text.replace(":", "") if len(text) == 95 else text
    try:
        raw = bytes.fromhex(hexed)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(path, f"Invalid hex-encoded SHA-256 {text}")
    return raw


def _spki(text: str, path: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(path, f"Invalid base64-encoded SHA-256 {text}")
    return raw


# --- SDS references ------------------------------------------------------------------------------------------


def translate_sds_secret_config(pb: secret_pb2.SdsSecretConfig, path: str) -> SdsSecretConfig:
    check_fields(pb, path, handled=("name", "sds_config"))
    if not pb.name:
        raise ConfigError(f"{path}.name", "value length must be at least 1 characters")
    if not pb.HasField("sds_config"):
        return SdsSecretConfig(pb.name)
    return SdsSecretConfig(pb.name, _sds_source(pb.sds_config, f"{path}.sds_config"))


def _sds_source(pb: config_source_pb2.ConfigSource, path: str) -> SdsSource:
    check_fields(
        pb,
        path,
        handled=("ads", "api_config_source", "path", "path_config_source", "initial_fetch_timeout"),
        ignored=("resource_api_version",),
    )
    timeout = opt_duration(pb, "initial_fetch_timeout", 15.0)
    which = pb.WhichOneof("config_source_specifier")
    if which == "ads":
        check_fields(pb.ads, f"{path}.ads", handled=())
        return SdsSource(SdsSourceKind.ADS, initial_fetch_timeout=timeout)
    if which == "path":
        return SdsSource(SdsSourceKind.PATH, path=pb.path, initial_fetch_timeout=timeout)
    if which == "path_config_source":
        # A file holding a DiscoveryResponse, watched (xds/files.py; watched_directory is not).
        check_fields(pb.path_config_source, f"{path}.path_config_source", handled=("path",))
        if not pb.path_config_source.path:
            raise ConfigError(f"{path}.path_config_source.path", "value length must be at least 1 characters")
        return SdsSource(SdsSourceKind.PATH, path=pb.path_config_source.path, initial_fetch_timeout=timeout)
    if which != "api_config_source":
        raise ConfigError(
            f"{path}.{which}" if which else path, "config source is not supported by sidecar yet"
        )
    ap = f"{path}.api_config_source"
    api = pb.api_config_source
    check_fields(
        api,
        ap,
        handled=("api_type", "grpc_services"),
        ignored=(
            "transport_api_version",
            "set_node_on_first_message_only",
            "request_timeout",
            "rate_limit_settings",
        ),
    )
    kind = enum_name(api, "api_type", ap)
    if kind not in ("GRPC", "DELTA_GRPC"):
        raise ConfigError(f"{ap}.api_type", f"{kind} is not supported for SDS by sidecar yet")
    if len(api.grpc_services) != 1:
        raise ConfigError(f"{ap}.grpc_services", "exactly one gRPC service is supported by sidecar")
    gp = f"{ap}.grpc_services[0]"
    grpc = api.grpc_services[0]
    check_fields(grpc, gp, handled=("envoy_grpc",), ignored=("timeout", "initial_metadata", "retry_policy"))
    if not grpc.HasField("envoy_grpc"):
        raise ConfigError(f"{gp}.google_grpc", "google_grpc is not supported by sidecar yet")
    check_fields(grpc.envoy_grpc, f"{gp}.envoy_grpc", handled=("cluster_name",), ignored=("authority",))
    if not grpc.envoy_grpc.cluster_name:
        raise ConfigError(f"{gp}.envoy_grpc.cluster_name", "value length must be at least 1 characters")
    return SdsSource(
        SdsSourceKind.GRPC,
        cluster=grpc.envoy_grpc.cluster_name,
        delta=kind == "DELTA_GRPC",
        initial_fetch_timeout=timeout,
    )


def translate_static_secrets(pbs: Iterable[secret_pb2.Secret], path: str) -> dict[str, Secret]:
    """bootstrap static_resources.secrets by name (Envoy: "Duplicate static TlsCertificate secret
    name" and the like for a repeated name)."""
    out: dict[str, Secret] = {}
    for i, pb in enumerate(pbs):
        secret = translate_secret(pb, f"{path}[{i}]")
        if secret.name in out:
            kind = "TlsCertificate" if secret.tls_certificate is not None else "CertificateValidationContext"
            raise ConfigError(f"{path}[{i}].name", f"Duplicate static {kind} secret name {secret.name}")
        out[secret.name] = secret
    return out


def check_static_secret_refs(
    clusters: Iterable[Cluster], listeners: Iterable[Listener], secrets: Mapping[str, Secret]
) -> None:
    """Every secret the static clusters and listeners name without sds_config must be a static
    secret of the right kind (Envoy: "Unknown static secret" / "Unknown static certificate
    validation context"; clusters are checked first, as Envoy builds them first)."""
    found: list[tuple[str, TlsContext | None]] = []
    for i, c in enumerate(clusters):
        cp = f"static_resources.clusters[{i}]"
        found.append((f"{cp}.transport_socket.typed_config", c.transport_socket))
        for j, tsm in enumerate(c.transport_socket_matches):
            found.append(
                (f"{cp}.transport_socket_matches[{j}].transport_socket.typed_config", tsm.transport_socket)
            )
    for i, lst in enumerate(listeners):
        lp = f"static_resources.listeners[{i}]"
        for j, chain in enumerate(lst.filter_chains):
            found.append((f"{lp}.filter_chains[{j}].transport_socket.typed_config", chain.transport_socket))
        if lst.default_filter_chain is not None:
            found.append(
                (
                    f"{lp}.default_filter_chain.transport_socket.typed_config",
                    lst.default_filter_chain.transport_socket,
                )
            )
    for path, ctx in found:
        if ctx is None:
            continue
        common = ctx.common
        for ref in common.tls_certificate_sds:
            secret = secrets.get(ref.name)
            if ref.source.kind is SdsSourceKind.STATIC and (secret is None or secret.tls_certificate is None):
                raise ConfigError(path, f"Unknown static secret: {ref.name}")
        ref_vc = common.validation_context_sds
        if ref_vc is not None and ref_vc.source.kind is SdsSourceKind.STATIC:
            secret = secrets.get(ref_vc.name)
            if secret is None or secret.validation_context is None:
                raise ConfigError(path, f"Unknown static certificate validation context: {ref_vc.name}")

"""translate/tls.py: the transport sockets Istio sends (inbound mTLS, outbound ISTIO_MUTUAL with SDS),
secrets, and every refusal with its field path."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from google.protobuf import json_format

from sidecar.model.secret import (
    DataSource,
    DataSourceKind,
    MatchKind,
    SanMatcher,
    SanType,
    SdsSecretConfig,
    SdsSource,
    SdsSourceKind,
    StringMatcher,
    TrustChainVerification,
)
from sidecar.model.tls import DownstreamTlsContext, TlsVersion, UpstreamTlsContext
from sidecar.translate.common import preload_types
from sidecar.translate.errors import ConfigError
from sidecar.translate.tls import (
    translate_downstream_tls_context,
    translate_secret,
    translate_transport_socket,
    translate_upstream_tls_context,
)

P = "filter_chains[0].transport_socket"
DTC = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UTC = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"

SDS = """
api_config_source:
  api_type: GRPC
  grpc_services: [{envoy_grpc: {cluster_name: sds-grpc}}]
  set_node_on_first_message_only: true
  transport_api_version: V3
initial_fetch_timeout: 0s
resource_api_version: V3
"""
SDS_SOURCE = SdsSource(SdsSourceKind.GRPC, cluster="sds-grpc", initial_fetch_timeout=0.0)


def _sds_block() -> dict[str, Any]:
    block: dict[str, Any] = yaml.safe_load(SDS)
    return block


def _socket(data: dict[str, Any]) -> base_pb2.TransportSocket:
    preload_types(data)
    return json_format.ParseDict(data, base_pb2.TransportSocket())


def inbound() -> dict[str, Any]:
    """What istiod sends on an inbound (virtualInbound) mTLS filter chain."""
    tc = {
        "@type": DTC,
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_params": {
                "tls_minimum_protocol_version": "TLSv1_2",
                "tls_maximum_protocol_version": "TLSv1_3",
            },
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": _sds_block()}],
            "combined_validation_context": {
                "default_validation_context": {
                    "match_subject_alt_names": [{"prefix": "spiffe://cluster.local/"}]
                },
                "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": _sds_block()},
            },
        },
    }
    return {"name": "envoy.transport_sockets.tls", "typed_config": tc}


def outbound() -> dict[str, Any]:
    """An outbound ISTIO_MUTUAL cluster's transport socket."""
    tc = {
        "@type": UTC,
        "sni": "outbound_.9080_.v1_.reviews.default.svc.cluster.local",
        "common_tls_context": {
            "alpn_protocols": ["istio-peer-exchange", "istio"],
            "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": _sds_block()}],
            "combined_validation_context": {
                "default_validation_context": {
                    "match_subject_alt_names": [
                        {"exact": "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"}
                    ]
                },
                "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": _sds_block()},
            },
        },
    }
    return {"name": "envoy.transport_sockets.tls", "typed_config": tc}


def refused(data: dict[str, Any], downstream: bool = True) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        translate_transport_socket(_socket(data), P, downstream=downstream)
    return e.value


def dig(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    d = data
    for k in keys:
        d = d.setdefault(k, {})
    return d


# --- good configurations --------------------------------------------------------------------------------------


def test_istio_inbound_mtls() -> None:
    ctx = translate_transport_socket(_socket(inbound()), P, downstream=True)
    assert isinstance(ctx, DownstreamTlsContext)
    assert ctx.require_client_certificate
    c = ctx.common
    assert c.alpn_protocols == ("h2", "http/1.1")
    assert (c.tls_params.min_version, c.tls_params.max_version) == (TlsVersion.TLSv1_2, TlsVersion.TLSv1_3)
    assert c.tls_certificate_sds == (SdsSecretConfig("default", SDS_SOURCE),)
    assert c.validation_context_sds == SdsSecretConfig("ROOTCA", SDS_SOURCE)
    assert c.secret_names == ("default", "ROOTCA")
    # The legacy untyped matcher becomes one typed matcher per SAN type (DNS, URI, EMAIL, IP_ADDRESS).
    prefix = StringMatcher(MatchKind.PREFIX, "spiffe://cluster.local/")
    assert c.validation_context is not None
    assert c.validation_context.san_matchers == tuple(
        SanMatcher(t, prefix) for t in (SanType.DNS, SanType.URI, SanType.EMAIL, SanType.IP_ADDRESS)
    )
    # Envoy's defaults: stateless and stateful resumption on.
    assert not ctx.disable_stateless_session_resumption and not ctx.disable_stateful_session_resumption


def test_istio_outbound_mtls() -> None:
    ctx = translate_transport_socket(_socket(outbound()), "clusters[0].transport_socket", downstream=False)
    assert isinstance(ctx, UpstreamTlsContext)
    assert ctx.sni == "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
    assert ctx.common.alpn_protocols == ("istio-peer-exchange", "istio")
    assert not ctx.allow_renegotiation and ctx.max_session_keys == 1
    assert ctx.common.tls_params.min_version is TlsVersion.AUTO


def test_typed_matchers_win_over_legacy() -> None:
    data = inbound()
    dvc = dig(
        data,
        "typed_config",
        "common_tls_context",
        "combined_validation_context",
        "default_validation_context",
    )
    dvc["match_typed_subject_alt_names"] = [
        {"san_type": "URI", "matcher": {"safe_regex": {"regex": "spiffe://cluster\\.local/ns/[^/]+/sa/.*"}}},
        {"san_type": "DNS", "matcher": {"suffix": ".svc", "ignore_case": True}},
    ]
    ctx = translate_transport_socket(_socket(data), P, downstream=True)
    assert ctx is not None and ctx.common.validation_context is not None
    assert ctx.common.validation_context.san_matchers == (
        SanMatcher(
            SanType.URI, StringMatcher(MatchKind.SAFE_REGEX, "spiffe://cluster\\.local/ns/[^/]+/sa/.*")
        ),
        SanMatcher(SanType.DNS, StringMatcher(MatchKind.SUFFIX, ".svc", True)),
    )


def test_inline_and_file_sources() -> None:
    data = {
        "name": "tls",
        "typed_config": {
            "@type": DTC,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": "/etc/certs/cert-chain.pem"},
                        "private_key": {"inline_string": "KEY"},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"inline_bytes": base64.b64encode(b"CA").decode()},
                    "crl": {"environment_variable": "CRL_PEM"},
                    "trust_chain_verification": "ACCEPT_UNTRUSTED",
                    "only_verify_leaf_cert_crl": True,
                    "max_verify_depth": 3,
                    "verify_certificate_hash": ["AA" * 32, ":".join(["BB"] * 32)],
                    "verify_certificate_spki": [base64.b64encode(b"\x01" * 32).decode()],
                },
            },
        },
    }
    ctx = translate_transport_socket(_socket(data), P, downstream=True)
    assert isinstance(ctx, DownstreamTlsContext)
    (cert,) = ctx.common.tls_certificates
    assert cert.certificate_chain == DataSource(DataSourceKind.FILE, name="/etc/certs/cert-chain.pem")
    assert cert.private_key == DataSource(inline=b"KEY")
    vc = ctx.common.validation_context
    assert vc is not None
    assert vc.trusted_ca == DataSource(inline=b"CA")
    assert vc.crl == DataSource(DataSourceKind.ENV, name="CRL_PEM")
    assert vc.trust_chain_verification is TrustChainVerification.ACCEPT_UNTRUSTED
    assert vc.only_verify_leaf_cert_crl and vc.max_verify_depth == 3
    assert vc.verify_certificate_hash == (b"\xaa" * 32, b"\xbb" * 32)
    assert vc.verify_certificate_spki == (b"\x01" * 32,)


def test_raw_buffer_is_plaintext() -> None:
    raw = {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}  # fmt: skip
    assert translate_transport_socket(_socket(raw), P, downstream=True) is None
    assert (
        translate_transport_socket(
            _socket({"name": "envoy.transport_sockets.raw_buffer"}), P, downstream=False
        )
        is None
    )


def test_sds_sources() -> None:
    pb = tls_pb2.UpstreamTlsContext()
    json_format.ParseDict(
        {
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "a", "sds_config": {"ads": {}}}],
                "validation_context_sds_secret_config": {"name": "static-roots"},
            }
        },
        pb,
    )
    ctx = translate_upstream_tls_context(pb, "c")
    assert ctx.common.tls_certificate_sds == (SdsSecretConfig("a", SdsSource(SdsSourceKind.ADS)),)
    assert ctx.common.validation_context_sds == SdsSecretConfig("static-roots")


def test_cipher_suite_groups_are_flattened() -> None:
    pb = tls_pb2.UpstreamTlsContext()
    json_format.ParseDict(
        {
            "common_tls_context": {
                "tls_params": {
                    "cipher_suites": [
                        "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]",
                        "ECDHE-RSA-AES256-GCM-SHA384",
                    ],
                    "ecdh_curves": ["X25519", "P-256"],
                }
            }
        },
        pb,
    )
    params = translate_upstream_tls_context(pb, "c").common.tls_params
    assert params.cipher_suites == (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES256-GCM-SHA384",
    )
    assert params.ecdh_curves == ("X25519", "P-256")


def test_secrets() -> None:
    s = secret_pb2.Secret()
    json_format.ParseDict(
        {
            "name": "default",
            "tls_certificate": {
                "certificate_chain": {"inline_string": "C"},
                "private_key": {"inline_string": "K"},
            },
        },
        s,
    )
    sec = translate_secret(s, "resources[0]")
    assert sec.name == "default" and sec.tls_certificate is not None and sec.validation_context is None
    r = secret_pb2.Secret()
    json_format.ParseDict({"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": "R"}}}, r)
    root = translate_secret(r, "resources[1]")
    assert root.validation_context is not None and root.validation_context.trusted_ca.inline == b"R"
    # A validation secret may carry SAN matchers without a CA: it is merged later (combined).
    r2 = secret_pb2.Secret()
    json_format.ParseDict(
        {"name": "sans", "validation_context": {"match_subject_alt_names": [{"exact": "x"}]}}, r2
    )
    assert translate_secret(r2, "r").validation_context is not None


# --- refusals, with their field paths --------------------------------------------------------------------------------

TC = f"{P}.typed_config"
CTC = f"{TC}.common_tls_context"


def _with(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    *head, last = path
    dig(base, *head)[last] = value
    return base


@pytest.mark.parametrize(
    ("path", "value", "where", "why"),
    [
        (("session_ticket_keys",), {"keys": [{"inline_bytes": "AA=="}]}, f"{TC}.session_ticket_keys", "not supported"),
        (("ocsp_staple_policy",), "MUST_STAPLE", f"{TC}.ocsp_staple_policy", "not supported"),
        (("common_tls_context", "key_log"), {"path": "/tmp/k"}, f"{CTC}.key_log", "not supported"),
        (("common_tls_context", "custom_handshaker"), {"name": "x"}, f"{CTC}.custom_handshaker", "not supported"),
        (("common_tls_context", "tls_params", "compliance_policies"), ["FIPS_202205"],
         f"{CTC}.tls_params.compliance_policies", "not supported"),
        (("common_tls_context", "tls_params", "cipher_suites"), ["NOT-A-CIPHER"],
         f"{CTC}.tls_params.cipher_suites", "rejected when tried individually: NOT-A-CIPHER"),
        (("common_tls_context", "tls_params", "ecdh_curves"), ["X448"],
         f"{CTC}.tls_params.ecdh_curves[0]", "Failed to initialize ECDH curves X448"),
        (("common_tls_context", "alpn_protocols"), [""], f"{CTC}.alpn_protocols[0]", "Invalid ALPN"),
        (("common_tls_context", "tls_certificate_sds_secret_configs"), [{"name": ""}],
         f"{CTC}.tls_certificate_sds_secret_configs[0].name", "at least 1"),
    ],
)  # fmt: skip
def test_refused_fields(path: tuple[str, ...], value: Any, where: str, why: str) -> None:
    data = inbound()
    _with(data["typed_config"], path, value)
    e = refused(data)
    assert e.path == where
    assert why in e.reason


CVC = f"{CTC}.combined_validation_context.default_validation_context"


@pytest.mark.parametrize(
    ("field", "value", "where", "why"),
    [
        ("match_typed_subject_alt_names", [{"san_type": "OTHER_NAME", "oid": "1.2.3", "matcher": {"exact": "x"}}],
         f"{CVC}.match_typed_subject_alt_names[0].san_type", "OTHER_NAME"),
        ("match_typed_subject_alt_names", [{"matcher": {"exact": "x"}}],
         f"{CVC}.match_typed_subject_alt_names[0].san_type", "SAN_TYPE_UNSPECIFIED"),
        ("match_typed_subject_alt_names", [{"san_type": "URI"}],
         f"{CVC}.match_typed_subject_alt_names[0].matcher", "required"),
        ("match_subject_alt_names", [{"safe_regex": {"regex": "("}}],
         f"{CVC}.match_subject_alt_names[0].safe_regex.regex", "missing )"),
        ("match_subject_alt_names", [{"safe_regex": {"regex": "x"}, "ignore_case": True}],
         f"{CVC}.match_subject_alt_names[0].ignore_case", "no effect"),
        ("match_subject_alt_names", [{"prefix": ""}], f"{CVC}.match_subject_alt_names[0].prefix", "at least 1"),
        ("verify_certificate_hash", ["abcd"], f"{CVC}.verify_certificate_hash[0]", "Invalid hex-encoded SHA-256 abcd"),
        ("verify_certificate_spki", ["!!"], f"{CVC}.verify_certificate_spki[0]", "Invalid base64-encoded SHA-256"),
        ("allow_expired_certificate", True, f"{CVC}.allow_expired_certificate", "not supported"),
        ("system_root_certs", {}, f"{CVC}.system_root_certs", "not supported"),
        ("custom_validator_config", {"name": "x"}, f"{CVC}.custom_validator_config", "not supported"),
        ("require_signed_certificate_timestamp", True, f"{CVC}.require_signed_certificate_timestamp", "not supported"),
        ("trusted_ca", {"watched_directory": {"path": "/x"}}, f"{CVC}.trusted_ca.watched_directory", "not supported"),
        ("trusted_ca", {"filename": ""}, f"{CVC}.trusted_ca.filename", "at least 1"),
    ],
)  # fmt: skip
def test_refused_validation_fields(field: str, value: Any, where: str, why: str) -> None:
    data = inbound()
    dig(
        data,
        "typed_config",
        "common_tls_context",
        "combined_validation_context",
        "default_validation_context",
    )[field] = value
    e = refused(data)
    assert (e.path, why in e.reason) == (where, True), e


def test_server_needs_a_certificate() -> None:
    data = inbound()
    del data["typed_config"]["common_tls_context"]["tls_certificate_sds_secret_configs"]
    e = refused(data)
    assert (e.path, e.reason) == (CTC, "No TLS certificates found for server context")


def test_server_cannot_mix_sds_and_inline() -> None:
    data = inbound()
    data["typed_config"]["common_tls_context"]["tls_certificates"] = [
        {"certificate_chain": {"inline_string": "c"}, "private_key": {"inline_string": "k"}}
    ]
    assert "may not be mixed" in refused(data).reason


def test_incomplete_certificates() -> None:
    data: dict[str, Any] = {"name": "tls", "typed_config": {"@type": DTC, "common_tls_context": {
        "tls_certificates": [{"certificate_chain": {"inline_string": "c"}}]}}}  # fmt: skip
    assert refused(data).path == f"{CTC}.tls_certificates[0].private_key"
    data["typed_config"]["common_tls_context"]["tls_certificates"][0]["pkcs12"] = {"inline_bytes": "AA=="}
    assert refused(data).path == f"{CTC}.tls_certificates[0].pkcs12"


def test_inline_validation_needs_a_ca_for_sans_and_crls() -> None:
    data: dict[str, Any] = {"name": "tls", "typed_config": {"@type": UTC, "common_tls_context": {
        "validation_context": {"match_subject_alt_names": [{"exact": "spiffe://a/b"}]}}}}  # fmt: skip
    e = refused(data, downstream=False)
    assert e.path == f"{CTC}.validation_context"
    assert "SAN-based verification of peer certificates without trusted CA is insecure" in e.reason
    data["typed_config"]["common_tls_context"]["validation_context"] = {"crl": {"inline_string": "x"}}
    assert "CRL without trusted CA" in refused(data, downstream=False).reason


def test_upstream_refusals() -> None:
    data = outbound()
    data["typed_config"]["enforce_rsa_key_usage"] = True
    assert refused(data, downstream=False).path == f"{TC}.enforce_rsa_key_usage"
    data = outbound()
    data["typed_config"]["auto_host_sni"] = True
    assert refused(data, downstream=False).path == f"{TC}.auto_host_sni"
    data = outbound()
    data["typed_config"]["sni"] = "a\0b"
    assert "NULL-byte" in refused(data, downstream=False).reason
    data = outbound()
    certs = data["typed_config"]["common_tls_context"]["tls_certificate_sds_secret_configs"]
    certs.append(dict(certs[0], name="second"))
    assert "Multiple TLS certificates" in refused(data, downstream=False).reason


def test_wrong_context_type_for_the_side() -> None:
    e = refused(outbound(), downstream=True)
    assert e.path == P and "not supported" in e.reason
    other = {
        "name": "x",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts"},
    }
    assert refused(other).path == P


def test_sds_config_refusals() -> None:
    data = outbound()
    sds = data["typed_config"]["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["sds_config"]
    sds["api_config_source"]["api_type"] = "REST"
    e = refused(data, downstream=False)
    assert e.path == f"{CTC}.tls_certificate_sds_secret_configs[0].sds_config.api_config_source.api_type"
    sds["api_config_source"]["api_type"] = "GRPC"
    sds["api_config_source"]["grpc_services"] = [{"google_grpc": {"target_uri": "x", "stat_prefix": "s"}}]
    e = refused(data, downstream=False)
    assert e.path.endswith("grpc_services[0].google_grpc")


def test_certificate_hash_forms() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    pb = tls_pb2.UpstreamTlsContext()
    json_format.ParseDict({"common_tls_context": {"validation_context": {"verify_certificate_hash": [
        digest, ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()]}}}, pb)  # fmt: skip
    vc = translate_upstream_tls_context(pb, "c").common.validation_context
    assert vc is not None and vc.verify_certificate_hash == (bytes.fromhex(digest),) * 2


def test_downstream_extras() -> None:
    pb = tls_pb2.DownstreamTlsContext()
    json_format.ParseDict(
        {
            "common_tls_context": {
                "tls_certificates": [
                    {"certificate_chain": {"inline_string": "c"}, "private_key": {"inline_string": "k"}}
                ]
            },
            "require_sni": True,
            "disable_stateless_session_resumption": True,
            "session_timeout": "300s",
            "prefer_client_ciphers": True,
        },
        pb,
    )
    ctx = translate_downstream_tls_context(pb, "t")
    assert ctx.require_sni and ctx.disable_stateless_session_resumption and ctx.prefer_client_ciphers
    assert ctx.session_timeout == 300.0
    assert not ctx.require_client_certificate  # Envoy's (deprecated, insecure) default

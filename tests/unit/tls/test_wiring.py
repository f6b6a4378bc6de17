"""TLS wiring without sockets: the translators carry transport sockets and endpoint metadata into
the model, and sidecar.tls.wiring picks a host's TLS the way Envoy's TransportSocketMatcherImpl
does (endpoint metadata first, then locality metadata, then the cluster's transport_socket)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format

from sidecar.model.cluster import Cluster, TransportSocketMatch
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.model.listener import FilterChain, Listener
from sidecar.model.tls import DownstreamTlsContext, UpstreamTlsContext
from sidecar.tls.wiring import TlsNotReady, TlsWiring, labels_match
from sidecar.translate.bootstrap import translate_bootstrap
from sidecar.translate.cds import translate_cluster
from sidecar.translate.common import preload_types
from sidecar.translate.errors import ConfigError
from sidecar.translate.lds import translate_listener
from tests.support.ca import TestCA
from tests.support.mtls_bootstraps import client_side, server_side

ISTIO = (("tlsMode", '"istio"'),)


def _bootstrap(text: str) -> bootstrap_pb2.Bootstrap:
    text = text.replace("{admin_port}", "0").replace("{app_port}", "1")
    for key in ("inbound_port", "inbound_tcp_port", "outbound_port", "outbound_tcp_port"):
        text = text.replace("{" + key + "}", "0")
    data = yaml.safe_load(text)
    preload_types(data)
    pb = bootstrap_pb2.Bootstrap()
    json_format.ParseDict(data, pb)
    return pb


class _Opts:
    service_cluster = service_node = service_zone = ""


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(Path(tmp_path_factory.mktemp("wiring-ca")))


def test_istio_style_bootstraps_translate(ca: TestCA) -> None:
    cert = ca.workload("default", "server")
    snap = translate_bootstrap(
        _bootstrap(server_side(cert.cert_path, cert.key_path, ca.root_path, permissive=True)), _Opts()
    )  # type: ignore[arg-type]
    assert set(snap.secrets) == {"ROOTCA", "default"}
    inbound = snap.listeners[0]
    tls_chains = [c for c in inbound.filter_chains if c.transport_socket is not None]
    assert [c.match.transport_protocol for c in tls_chains] == ["tls", "tls"]
    first = tls_chains[0].transport_socket
    assert isinstance(first, DownstreamTlsContext) and first.require_client_certificate
    assert [
        c.transport_socket for c in inbound.filter_chains if c.match.transport_protocol == "raw_buffer"
    ] == [None]
    # A single TLS chain matching everything is not the accept fast path (the handshake runs there).
    assert not snap.listeners[1].single_chain

    snap = translate_bootstrap(_bootstrap(client_side(cert.cert_path, cert.key_path, ca.root_path)), _Opts())  # type: ignore[arg-type]
    server = snap.clusters["server"]
    assert server.transport_socket is None
    assert [(m.name, m.match) for m in server.transport_socket_matches] == [
        ("tlsMode-istio", ISTIO),
        ("tlsMode-disabled", ()),
    ]
    istio = server.transport_socket_matches[0].transport_socket
    assert isinstance(istio, UpstreamTlsContext)
    assert istio.sni == "outbound_.80_._.server.default.svc.cluster.local"
    assert istio.common.alpn_protocols == ("istio-peer-exchange", "istio")
    assert server.transport_socket_matches[1].transport_socket is None
    assert server.endpoints[0].socket_match == ISTIO


def _cluster_pb(data: dict[str, Any]) -> cluster_pb2.Cluster:
    preload_types(data)
    pb = cluster_pb2.Cluster()
    json_format.ParseDict(data, pb)
    return pb


def test_locality_metadata_and_values_are_canonical() -> None:
    c = translate_cluster(
        _cluster_pb(
            {
                "name": "c",
                "load_assignment": {
                    "cluster_name": "c",
                    "endpoints": [
                        {
                            "metadata": {
                                "filter_metadata": {"envoy.transport_socket_match": {"zone": "a", "n": 1}}
                            },
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {"address": "127.0.0.1", "port_value": 1}
                                        }
                                    }
                                },
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {"address": "127.0.0.2", "port_value": 1}
                                        }
                                    },
                                    "metadata": {"filter_metadata": {"istio": {"x": "y"}}},
                                },
                            ],
                        }
                    ],
                },
                "transport_socket_matches": [{"name": "m", "match": {"n": 1.0}}],
            }
        ),
        "c",
    )
    assert [e.socket_match for e in c.endpoints] == [None, None]
    assert c.endpoints[0].locality_socket_match == (("n", "1.0"), ("zone", '"a"'))
    assert c.transport_socket_matches[0].match == (("n", "1.0"),)


def test_transport_socket_match_name_required() -> None:
    with pytest.raises(ConfigError) as e:
        translate_cluster(_cluster_pb({"name": "c", "transport_socket_matches": [{"match": {}}]}), "p")
    assert e.value.path == "p.transport_socket_matches[0].name"


def test_listener_transport_socket_connect_timeout() -> None:
    data: dict[str, Any] = {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "default_filter_chain": {
            "transport_socket_connect_timeout": "2s",
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": {"tls_certificate_sds_secret_configs": [{"name": "default"}]},
                },
            },
        },
    }
    preload_types(data)
    pb = listener_pb2.Listener()
    json_format.ParseDict(data, pb)
    lst = translate_listener(pb, "l")
    assert lst.default_filter_chain is not None
    assert lst.default_filter_chain.transport_socket is not None
    assert lst.default_filter_chain.transport_socket_connect_timeout == 2.0
    assert not lst.single_chain


@pytest.mark.parametrize(
    ("want", "have", "ok"),
    [
        ((), None, True),  # an empty match takes anything, even no metadata
        ((), ISTIO, True),
        (ISTIO, None, False),
        (ISTIO, ISTIO, True),
        (ISTIO, (("tlsMode", '"disabled"'),), False),
        (ISTIO, (("other", "1"), ("tlsMode", '"istio"')), True),
        ((("a", "1"), ("b", "2")), (("a", "1"),), False),
    ],
)
def test_labels_match(want: tuple[tuple[str, str], ...], have: Any, ok: bool) -> None:
    assert labels_match(want, have) is ok


def _endpoint(match: Any = None, locality: Any = None) -> Endpoint:
    return Endpoint(SocketAddress("127.0.0.1", 1), socket_match=match, locality_socket_match=locality)


def test_client_tls_follows_endpoint_then_locality_then_default(ca: TestCA) -> None:
    from sidecar.model.secret import DataSource, DataSourceKind, TlsCertificate
    from sidecar.model.tls import CommonTlsContext

    cert = ca.workload("default", "client")
    tc = TlsCertificate(
        certificate_chain=DataSource(DataSourceKind.FILE, name=str(cert.cert_path)),
        private_key=DataSource(DataSourceKind.FILE, name=str(cert.key_path)),
    )
    mtls = UpstreamTlsContext(common=CommonTlsContext(tls_certificates=(tc,)), sni="istio")
    default = UpstreamTlsContext(sni="default")
    cluster = Cluster(
        "c",
        transport_socket=default,
        transport_socket_matches=(
            TransportSocketMatch("istio", ISTIO, mtls),
            TransportSocketMatch("plain", (("tlsMode", '"disabled"'),), None),
        ),
    )
    loop = asyncio.new_event_loop()
    try:
        w = TlsWiring(loop, poll_interval=0)
        tls = w.client_tls(cluster, _endpoint(ISTIO))
        assert tls is not None and tls.server_hostname == "istio"
        assert w.client_tls(cluster, _endpoint((("tlsMode", '"disabled"'),))) is None
        # The endpoint's own metadata wins over its locality's.
        assert w.client_tls(cluster, _endpoint((("tlsMode", '"disabled"'),), ISTIO)) is None
        by_locality = w.client_tls(cluster, _endpoint(None, ISTIO))
        assert by_locality is not None and by_locality.server_hostname == "istio"
        fallback = w.client_tls(cluster, _endpoint())
        assert fallback is not None and fallback.server_hostname == "default"
        assert w.client_tls(Cluster("plain"), _endpoint(ISTIO)) is None
        # A secret that never arrives: the connect fails rather than going out in plaintext.
        from sidecar.model.secret import SdsSecretConfig

        waiting = Cluster(
            "w",
            transport_socket=UpstreamTlsContext(
                common=CommonTlsContext(tls_certificate_sds=(SdsSecretConfig("x"),))
            ),
        )
        with pytest.raises(TlsNotReady):
            w.client_tls(waiting, _endpoint())
        assert w.stats("cluster.c.").value("handshake") == 0
    finally:
        loop.close()


def test_server_provider_is_made_once_per_chain(ca: TestCA) -> None:
    from sidecar.model.secret import DataSource, DataSourceKind, TlsCertificate
    from sidecar.model.tls import CommonTlsContext

    cert = ca.workload("default", "server")
    tc = TlsCertificate(
        certificate_chain=DataSource(DataSourceKind.FILE, name=str(cert.cert_path)),
        private_key=DataSource(DataSourceKind.FILE, name=str(cert.key_path)),
    )
    cfg = DownstreamTlsContext(
        common=CommonTlsContext(tls_certificates=(tc,), alpn_protocols=("h2", "http/1.1"))
    )
    chain = FilterChain("c", (), transport_socket=cfg)
    listener = Listener("l", SocketAddress("127.0.0.1", 15006), filter_chains=(chain,))
    loop = asyncio.new_event_loop()
    try:
        w = TlsWiring(loop, poll_interval=0)
        p = w.server_provider(chain, listener)
        assert p is not None and p is w.server_provider(chain, listener)
        assert p.server is not None
        assert p.stats.prefix == "listener.127.0.0.1_15006."
        assert w.server_provider(FilterChain("plain", ()), listener) is None
    finally:
        loop.close()


def test_unknown_static_secrets_refused_like_envoy(ca: TestCA) -> None:
    cert = ca.workload("default", "server")
    text = server_side(cert.cert_path, cert.key_path, ca.root_path, permissive=False)
    with pytest.raises(ConfigError) as e:
        translate_bootstrap(
            _bootstrap(
                text.replace("- name: default\n    tls_certificate:", "- name: other\n    tls_certificate:")
            ),
            _Opts(),
        )  # type: ignore[arg-type]
    assert e.value.reason == "Unknown static secret: default"
    assert e.value.path == "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config"
    with pytest.raises(ConfigError) as e:
        translate_bootstrap(
            _bootstrap(
                text.replace(
                    "- name: ROOTCA\n    validation_context:", "- name: other\n    validation_context:"
                )
            ),
            _Opts(),
        )  # type: ignore[arg-type]
    assert e.value.reason == "Unknown static certificate validation context: ROOTCA"


def test_sds_over_xds_is_translated() -> None:
    from sidecar.model.secret import SdsSourceKind

    tls: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": {"ads": {}}}]
        },
    }
    data: dict[str, Any] = {
        "name": "c",
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
    }
    cfg = translate_cluster(_cluster_pb(data), "c")
    assert cfg.transport_socket is not None
    (ref,) = cfg.transport_socket.common.tls_certificate_sds
    assert ref.name == "default" and ref.source.kind is SdsSourceKind.ADS
    ref_json = tls["common_tls_context"]["tls_certificate_sds_secret_configs"][0]
    ref_json["sds_config"] = {"path_config_source": {"path": "/tmp/sds.yaml"}}
    cfg = translate_cluster(_cluster_pb(data), "c")
    assert cfg.transport_socket is not None
    (ref,) = cfg.transport_socket.common.tls_certificate_sds
    assert (ref.source.kind, ref.source.path) == (SdsSourceKind.PATH, "/tmp/sds.yaml")
    ref_json["sds_config"] = {"path_config_source": {"path": "/tmp/sds.yaml", "watched_directory": {"path": "/tmp"}}}
    with pytest.raises(ConfigError) as e:
        translate_cluster(_cluster_pb(data), "c")
    assert e.value.path == (
        "c.transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0]"
        ".sds_config.path_config_source.watched_directory"
    )

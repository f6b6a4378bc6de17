"""Active health checks over TLS, as Envoy runs them for a cluster with a transport_socket: the probe
connection uses the cluster's UpstreamTlsContext (client certificate, trust, SAN matchers), or the
transport_socket_matches entry the check's transport_socket_match_criteria select.  A loopback TLS
server that requires a client certificate answers the probes; a host is healthy when it answers 200
over TLS and out when the handshake fails (wrong trust bundle, wrong server identity)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from sidecar.model.cluster import Cluster, TransportSocketMatch
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.model.health_check import HealthCheck, HttpCheck, TcpCheck
from sidecar.model.secret import (
    CertificateValidationContext,
    DataSource,
    MatchKind,
    SanMatcher,
    SanType,
    StringMatcher,
    TlsCertificate,
)
from sidecar.model.tls import CommonTlsContext, UpstreamTlsContext
from tests.integration.test_health_check import FAST, served, start, stop, until
from tests.support.ca import TestCA

SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"
ISTIO = (("tlsMode", '"istio"'),)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(Path(tmp_path_factory.mktemp("hc-tls-ca")))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(Path(tmp_path_factory.mktemp("hc-tls-other")), name="other")


class TlsHealthServer:
    """HTTP/1.1 over TLS requiring a client certificate from `ca`: 200 to everything (keep-alive).
    Counts the requests it answered and the peers' certificates it saw."""

    def __init__(self, ca: TestCA) -> None:
        cert = ca.workload("default", "server", name="hc-server")
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert.cert_path), str(cert.key_path))
        self.ctx.load_verify_locations(cafile=str(ca.root_path))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.requests = 0
        self.peers: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> TlsHealthServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        self.peers.append(ssl_object.getpeercert(binary_form=True) if ssl_object else b"")
        try:
            for _ in range(10_000):  # one request per round, bounded
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                self.requests += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


def _tls(ca: TestCA, san: str = SERVER_ID) -> UpstreamTlsContext:
    client = ca.workload("default", "client", name="hc-client")
    return UpstreamTlsContext(
        common=CommonTlsContext(
            tls_certificates=(
                TlsCertificate(DataSource(inline=client.cert_pem), DataSource(inline=client.key_pem)),
            ),
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(inline=ca.root_pem),
                san_matchers=(SanMatcher(SanType.URI, StringMatcher(MatchKind.EXACT, san)),),
            ),
        )
    )


def _cluster(name: str, port: int, hc: HealthCheck, **tls: object) -> Cluster:
    return Cluster(
        name=name,
        endpoints=(Endpoint(SocketAddress("127.0.0.1", port)),),
        health_checks=(hc,),
        update_merge_window=0.0,
        **tls,  # type: ignore[arg-type]
    )


HTTP = HealthCheck(http=HttpCheck(path="/healthz"), **FAST)  # type: ignore[arg-type]
TCP = HealthCheck(tcp=TcpCheck(), **FAST)  # type: ignore[arg-type]


@pytest.mark.parametrize("hc", [HTTP, TCP], ids=["http", "tcp"])
async def test_healthy_over_tls(ca: TestCA, hc: HealthCheck) -> None:
    async with TlsHealthServer(ca) as srv:
        cm, cs, stats = await start(_cluster("tls", srv.port, hc, transport_socket=_tls(ca)))
        try:
            assert await until(
                lambda: served(cs) == {srv.port} and stats.value("cluster.tls.health_check.success") > 0
            )
            if hc.http is not None:
                assert srv.requests >= 1  # the probe's HTTP request arrived inside TLS
            assert srv.peers and srv.peers[0]  # with our client certificate
            assert stats.value("cluster.tls.ssl.handshake") >= 1
            assert stats.value("cluster.tls.upstream_cx_total") == 0  # probes are not traffic
        finally:
            await stop(cm)


@pytest.mark.parametrize("hc", [HTTP, TCP], ids=["http", "tcp"])
async def test_wrong_trust_bundle_marks_the_host_unhealthy(
    ca: TestCA, other_ca: TestCA, hc: HealthCheck
) -> None:
    async with TlsHealthServer(ca) as srv:
        # Our client trusts another root: the server's certificate does not verify.
        cm, cs, stats = await start(_cluster("bad", srv.port, hc, transport_socket=_tls(other_ca)))
        try:
            assert await until(lambda: stats.value("cluster.bad.ssl.fail_verify_error") >= 1)
            assert await until(lambda: cs.hosts[0].health_flags() == ("failed_active_hc",))
            assert stats.value("cluster.bad.health_check.network_failure") >= 1
            assert stats.value("cluster.bad.health_check.success") == 0
            assert srv.requests == 0
        finally:
            await stop(cm)


async def test_wrong_server_identity_marks_the_host_unhealthy(ca: TestCA) -> None:
    async with TlsHealthServer(ca) as srv:
        tls = _tls(ca, san="spiffe://cluster.local/ns/default/sa/someone-else")
        cm, cs, stats = await start(_cluster("san", srv.port, HTTP, transport_socket=tls))
        try:
            assert await until(lambda: stats.value("cluster.san.ssl.fail_verify_san") >= 1)
            assert await until(lambda: cs.hosts[0].health_flags() == ("failed_active_hc",))
            assert srv.requests == 0
        finally:
            await stop(cm)


async def test_plaintext_probe_of_a_tls_server_fails(ca: TestCA) -> None:
    async with TlsHealthServer(ca) as srv:
        cm, cs, stats = await start(_cluster("plain", srv.port, HTTP))
        try:
            assert await until(lambda: stats.value("cluster.plain.health_check.network_failure") >= 1)
            assert cs.hosts[0].health_flags() == ("failed_active_hc",)
        finally:
            await stop(cm)


@pytest.mark.parametrize("criteria", [None, ISTIO], ids=["host-metadata", "criteria"])
async def test_transport_socket_match_criteria(
    ca: TestCA, criteria: tuple[tuple[str, str], ...] | None
) -> None:
    """Istio's shape: TLS for tlsMode=istio hosts, plaintext for the rest.  The host carries no
    metadata, so its own match is plaintext (probe fails against the TLS server); the check's
    criteria {tlsMode: istio} select TLS (probe passes)."""
    hc = HealthCheck(http=HttpCheck(path="/healthz"), transport_socket_match_criteria=criteria, **FAST)  # type: ignore[arg-type]
    matches = (
        TransportSocketMatch("tlsMode-istio", ISTIO, _tls(ca)),
        TransportSocketMatch("tlsMode-disabled", (), None),
    )
    async with TlsHealthServer(ca) as srv:
        cm, cs, stats = await start(_cluster("m", srv.port, hc, transport_socket_matches=matches))
        try:
            if criteria is None:
                assert await until(lambda: stats.value("cluster.m.health_check.network_failure") >= 1)
                assert cs.hosts[0].health_flags() == ("failed_active_hc",)
                assert srv.requests == 0
            else:
                assert await until(lambda: served(cs) == {srv.port} and srv.requests >= 1)
                assert stats.value("cluster.m.health_check.success") >= 1
        finally:
            await stop(cm)


def test_criteria_translate() -> None:
    from envoy.config.core.v3 import health_check_pb2

    from sidecar.translate.health_check import translate_health_check

    pb = health_check_pb2.HealthCheck()
    pb.timeout.seconds = pb.interval.seconds = 1
    pb.unhealthy_threshold.value = pb.healthy_threshold.value = 1
    pb.tcp_health_check.SetInParent()
    assert translate_health_check(pb, "hc").transport_socket_match_criteria is None
    pb.transport_socket_match_criteria.update({"tlsMode": "istio"})
    assert translate_health_check(pb, "hc").transport_socket_match_criteria == ISTIO

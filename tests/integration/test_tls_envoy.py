"""Differential sanity check of the TLS layer against the real envoy, with the same Istio-style
certificates and the same validation settings on both sides:

- our client TLS -> envoy terminating TLS (require_client_certificate + match_typed_subject_alt_names,
  tcp_proxy to an echo server): envoy accepts exactly the client certificates our own server
  context accepts, and counts the refusals under the same ssl.* stats;
- envoy's upstream TLS -> a server built from our server context: our server accepts exactly the
  envoy client certificate its SAN matcher allows; and envoy, checking our server's certificate
  with a right or a wrong SAN matcher, reaches the verdict our client context reaches;
- ALPN with Istio's values, and a handshake with no ALPN overlap, agree too."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

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
from tests.support.proxy import ProxyProcess, start_proxy
from tests.support.tcp_upstream import TcpUpstream
from tests.support.tls_loop import ClientConnection, Outcome, TlsEchoServer, connect, exchange

pytestmark = [pytest.mark.differential, pytest.mark.timeout(90)]
T = TypeVar("T")

ALPN = ("istio-peer-exchange", "istio")
NOT_OURS = "spiffe://cluster.local/ns/ours/sa/not-ours"
NOT_ENVOY = "spiffe://cluster.local/ns/envoy/sa/not-envoy"

_UPSTREAM_CLUSTER = """
  - name: {name}
    connect_timeout: 2s
    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.8080_._.ours.svc.cluster.local
        common_tls_context:
          alpn_protocols: [istio-peer-exchange, istio]
          tls_certificates: [{{certificate_chain: {{filename: "{cli_cert}"}}, private_key: {{filename: "{cli_key}"}}}}]
          validation_context:
            trusted_ca: {{filename: "{root}"}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{expect}"}}}}]
"""

_PLAIN_LISTENER = """
  - name: to_{name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {{{name}_port}}}}}}
    filter_chains:
    - filters:
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: to_{name}
          cluster: {name}
"""

_BOOTSTRAP = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: {admin_port}}}}
static_resources:
  listeners:
  - name: tls_in
    address: {socket_address: {address: 127.0.0.1, port_value: {tls_port}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [istio-peer-exchange, istio]
            tls_certificates: [{certificate_chain: {filename: "{srv_cert}"}, private_key: {filename: "{srv_key}"}}]
            validation_context:
              trusted_ca: {filename: "{root}"}
              match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: "{client_uri}"}}]
      filters:
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tls_in
          cluster: echo
LISTENERS
  clusters:
  - name: echo
    connect_timeout: 2s
    load_assignment: {cluster_name: echo, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {echo_port}}}}}]}]}
CLUSTERS
"""


def uri_matchers(*uris: str) -> tuple[SanMatcher, ...]:
    return tuple(SanMatcher(SanType.URI, StringMatcher(MatchKind.EXACT, u)) for u in uris)


def validation(ca: TestCA, *uris: str) -> CertificateValidationContext:
    return CertificateValidationContext(
        trusted_ca=DataSource(inline=ca.root_pem), san_matchers=uri_matchers(*uris)
    )


def inline(cert: Issued) -> tuple[TlsCertificate, ...]:
    return (TlsCertificate(DataSource(inline=cert.cert_pem), DataSource(inline=cert.key_pem)),)


def our_server(cert: Issued, vc: CertificateValidationContext, alpn: tuple[str, ...] = ALPN) -> ServerTls:
    cfg = DownstreamTlsContext(
        common=CommonTlsContext(tls_certificates=inline(cert), validation_context=vc, alpn_protocols=alpn),
        require_client_certificate=True,
    )
    p = TlsProvider(cfg, SecretStore(), TlsStats("listener.ours."))
    assert isinstance(p.current, ServerTls), p.error
    return p.current


def our_client(cert: Issued, vc: CertificateValidationContext, alpn: tuple[str, ...] = ALPN) -> ClientTls:
    # TLS 1.3 allowed, so that both versions' refusal paths are seen (Envoy's client stays on 1.2).
    cfg = UpstreamTlsContext(
        common=CommonTlsContext(
            tls_params=TlsParams(max_version=TlsVersion.TLSv1_3),
            tls_certificates=inline(cert),
            validation_context=vc,
            alpn_protocols=alpn,
        ),
        sni="outbound_.8080_._.envoy.svc.cluster.local",
    )
    p = TlsProvider(cfg, SecretStore(), TlsStats("cluster.ours."))
    assert isinstance(p.current, ClientTls), p.error
    return p.current


@dataclass
class World:
    ca: TestCA
    certs: dict[str, Issued]
    envoy: ProxyProcess
    ports: dict[str, int]
    servers: dict[str, TlsEchoServer]
    loop: asyncio.AbstractEventLoop

    def stats(self, contains: str) -> dict[str, int]:
        url = f"http://127.0.0.1:{self.ports['admin_port']}/stats?filter={contains}"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.isdigit():
                out[name] = int(value)
        return out

    def ssl_stat(self, scope: str, name: str) -> int:
        return sum(v for k, v in self.stats(f"{scope}.*ssl.{name}$").items() if k.endswith(f"ssl.{name}"))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    ca = TestCA(Path(tmp_path_factory.mktemp("envoy-ca")))
    other = TestCA(Path(tmp_path_factory.mktemp("other-ca")), name="stranger")
    certs = {
        "envoy_srv": ca.workload("envoy", "server"),
        "envoy_cli": ca.workload("envoy", "client"),
        "ours_srv": ca.workload("ours", "server"),
        "ours_cli": ca.workload("ours", "client"),
        "wrong_sa": ca.workload("ours", "intruder"),
        "wrong_td": ca.wrong_trust_domain("ours", "client"),
        "expired": ca.workload("ours", "client", expired=True),
        "stranger": other.workload("ours", "client"),
    }
    loop = asyncio.new_event_loop()
    echo = TcpUpstream("echo")
    echo.start()
    # Our servers, as envoy's upstreams: one allows envoy's client certificate, one does not.
    accepts_envoy = our_server(certs["ours_srv"], validation(ca, certs["envoy_cli"].uri))
    refuses_envoy = our_server(certs["ours_srv"], validation(ca, NOT_ENVOY))
    servers = {"s_ok": TlsEchoServer(lambda: accepts_envoy), "s_bad": TlsEchoServer(lambda: refuses_envoy)}
    ports = {name: loop.run_until_complete(srv.start()) for name, srv in servers.items()}
    clusters = {  # envoy cluster -> (our server, the SAN envoy expects of it)
        "up_ok": ("s_ok", certs["ours_srv"].uri),
        "up_bad_san": ("s_ok", NOT_OURS),
        "up_refused": ("s_bad", certs["ours_srv"].uri),
    }
    cli = certs["envoy_cli"]
    template = _BOOTSTRAP.replace(
        "LISTENERS", "".join(_PLAIN_LISTENER.format(name=n) for n in clusters)
    ).replace(
        "CLUSTERS",
        "".join(
            _UPSTREAM_CLUSTER.format(
                name=n,
                port=ports[s],
                cli_cert=cli.cert_path,
                cli_key=cli.key_path,
                root=ca.root_path,
                expect=e,
            )
            for n, (s, e) in clusters.items()
        ),
    )
    values = {
        "srv_cert": certs["envoy_srv"].cert_path,
        "srv_key": certs["envoy_srv"].key_path,
        "root": ca.root_path,
        "client_uri": certs["ours_cli"].uri,
        "echo_port": echo.port,
    }
    envoy, used = start_proxy("envoy", template, values)
    try:
        yield World(
            ca, certs, envoy, {k: int(str(v)) for k, v in used.items() if k.endswith("_port")}, servers, loop
        )
    finally:
        envoy.close()
        for srv in servers.values():
            loop.run_until_complete(srv.close())
        loop.close()
        echo.close()


# --- our client -> envoy's TLS listener ---------------------------------------------------------------------------

# Which client certificates a server requiring SAN == ours_cli accepts, and the stat a refusal bumps.
CLIENT_CASES = [
    ("ours_cli", True, None),
    ("wrong_sa", False, "fail_verify_san"),
    ("wrong_td", False, "fail_verify_san"),
    ("expired", False, "fail_verify_error"),
    ("stranger", False, "fail_verify_error"),
]


@pytest.mark.parametrize(("who", "accepted", "stat"), CLIENT_CASES)
def test_envoy_and_our_server_agree_on_client_certificates(
    world: World, who: str, accepted: bool, stat: str | None
) -> None:
    ca, certs = world.ca, world.certs
    client = our_client(certs[who], validation(ca, certs["envoy_srv"].uri))
    # Envoy's verdict.
    before = world.ssl_stat("listener", stat) if stat else 0
    handshakes = world.ssl_stat("listener", "handshake")
    via_envoy = world.run(exchange(client, world.ports["tls_port"]))
    assert via_envoy.ok is accepted, via_envoy
    if stat:
        assert world.ssl_stat("listener", stat) == before + 1
    envoy_handshakes = world.ssl_stat("listener", "handshake") - handshakes
    # Our verdict, same certificates and settings.
    ours = our_server(certs["envoy_srv"], validation(ca, certs["ours_cli"].uri))
    server = TlsEchoServer(lambda: ours)

    async def ask_ours() -> Outcome:
        port = await server.start()
        try:
            return await exchange(client, port)
        finally:
            await server.close()

    ours_outcome = world.run(ask_ours())
    assert ours_outcome.ok is accepted
    if stat:
        assert ours.stats.value(stat) == 1
    # ssl.handshake counts completed, accepted handshakes only, on both.
    assert ours.stats.handshake == envoy_handshakes == (1 if accepted else 0)
    if accepted:
        assert via_envoy.handshake is not None and ours_outcome.handshake is not None
        assert via_envoy.handshake.alpn == ours_outcome.handshake.alpn == "istio-peer-exchange"


@pytest.mark.parametrize("expect_right_san", [True, False])
def test_our_client_checks_envoys_certificate(world: World, expect_right_san: bool) -> None:
    certs = world.certs
    expect = certs["envoy_srv"].uri if expect_right_san else "spiffe://cluster.local/ns/envoy/sa/other"
    client = our_client(certs["ours_cli"], validation(world.ca, expect))
    outcome = world.run(exchange(client, world.ports["tls_port"]))
    assert outcome.ok is expect_right_san
    if not expect_right_san:
        assert outcome.error == "verify cert failed: SAN matcher" and client.stats.fail_verify_san == 1


@pytest.mark.parametrize(("client_alpn", "selected"), [(("istio", "istio-h2"), "istio"), (("h2",), None)])
def test_alpn_agrees(world: World, client_alpn: tuple[str, ...], selected: str | None) -> None:
    certs = world.certs
    client = our_client(certs["ours_cli"], validation(world.ca, certs["envoy_srv"].uri), alpn=client_alpn)
    outcome = world.run(exchange(client, world.ports["tls_port"]))
    assert outcome.ok and outcome.handshake is not None and outcome.handshake.alpn == selected
    ours = our_server(certs["envoy_srv"], validation(world.ca, certs["ours_cli"].uri))
    server = TlsEchoServer(lambda: ours)

    async def ask_ours() -> Outcome:
        port = await server.start()
        try:
            return await exchange(client, port)
        finally:
            await server.close()

    mine = world.run(ask_ours())
    assert mine.ok and mine.handshake is not None and mine.handshake.alpn == selected


# --- envoy's upstream TLS -> our server ------------------------------------------------------------------------------


async def _through_envoy(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"through envoy\n")
        await writer.drain()
        got = b""
        for _ in range(20):
            chunk = await asyncio.wait_for(reader.read(100), 5)
            if not chunk:
                break
            got += chunk
            if got.endswith(b"\n"):
                break
        return got
    except ConnectionError:
        return b""
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("cluster", "server", "accepted", "envoy_stat", "our_reason"),
    [
        ("up_ok", "s_ok", True, None, ""),
        ("up_bad_san", "s_ok", False, "fail_verify_san", ""),  # envoy refuses our server's SAN
        ("up_refused", "s_bad", False, None, "verify cert failed: SAN matcher"),  # we refuse envoy's
    ],
)
def test_envoy_upstream_tls_to_our_server(
    world: World, cluster: str, server: str, accepted: bool, envoy_stat: str | None, our_reason: str
) -> None:
    srv = world.servers[server]
    events_before = len(srv.events)
    stat_before = world.ssl_stat(f"cluster.{cluster}", envoy_stat) if envoy_stat else 0
    got = world.run(_through_envoy(world.ports[f"{cluster}_port"]))
    assert (got == b"through envoy\n") is accepted
    new = srv.events[events_before:]
    assert new, "envoy never reached our server"
    if envoy_stat:
        assert world.ssl_stat(f"cluster.{cluster}", envoy_stat) > stat_before
    if our_reason:
        assert all(e.handshake is not None and e.handshake.reason == our_reason for e in new)
    # Our own verdict on envoy's client certificate, for the same SAN matcher, is the same.
    ours = world.servers[server].tls()
    assert ours is not None
    from sidecar.tls.identity import SanVerifier, peer_identity

    assert ours.validation is not None
    envoy_cert_ok = SanVerifier(ours.validation.san_matchers).matches(
        peer_identity(world.certs["envoy_cli"].der)
    )
    assert envoy_cert_ok is (server == "s_ok")
    if server == "s_ok" and accepted:
        assert all(e.handshake is not None and e.handshake.ok for e in new)
        assert (
            new[0].handshake is not None and new[0].handshake.version == "TLSv1.2"
        )  # Envoy's client default


@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
def test_session_tickets_by_default_like_envoy(world: World, tls13: bool) -> None:
    """Envoy leaves stateless resumption on unless disable_stateless_session_resumption: a fresh
    client gets a session ticket from envoy and from our server alike."""
    certs = world.certs
    params = TlsParams(max_version=TlsVersion.TLSv1_3 if tls13 else TlsVersion.TLSv1_2)
    cfg = UpstreamTlsContext(
        common=CommonTlsContext(
            tls_params=params,
            tls_certificates=inline(certs["ours_cli"]),
            validation_context=validation(world.ca, certs["envoy_srv"].uri),
        )
    )
    provider = TlsProvider(cfg, SecretStore(), TlsStats("cluster.t."))
    client = provider.client
    assert client is not None

    async def ticket(port: int) -> bool:
        conn = await connect(client, port)
        assert isinstance(conn, ClientConnection), conn
        try:
            assert await conn.echo(b"t\n") == b"t\n"  # TLS 1.3 tickets come after the handshake
            session = conn.writer.get_extra_info("ssl_object").session
            return bool(session is not None and session.has_ticket)
        finally:
            conn.close()

    ours = our_server(certs["envoy_srv"], validation(world.ca, certs["ours_cli"].uri))
    server = TlsEchoServer(lambda: ours)

    async def both() -> tuple[bool, bool]:
        port = await server.start()
        try:
            return await ticket(world.ports["tls_port"]), await ticket(port)
        finally:
            await server.close()

    assert world.run(both()) == (True, True)


def test_handshake_stats_match_envoys(world: World) -> None:
    """One TLS 1.2 mTLS handshake: the ssl.ciphers/versions/curves/sigalgs counters envoy bumps on its
    listener are the ones our server bumps, name for name."""
    certs = world.certs
    families = ("ciphers", "versions", "curves", "sigalgs")

    def envoy_families() -> dict[str, int]:
        return {
            k.split(".ssl.", 1)[1]: v
            for k, v in world.stats("^listener\\..*\\.ssl\\.").items()
            if k.split(".ssl.", 1)[1].split(".", 1)[0] in families
        }

    # Envoy's own client default (TLS 1.2 at most), so that the cipher and signature are 1.2's.
    client_tls12 = TlsProvider(
        UpstreamTlsContext(
            common=CommonTlsContext(
                tls_certificates=inline(certs["ours_cli"]),
                validation_context=validation(world.ca, certs["envoy_srv"].uri),
                alpn_protocols=ALPN,
            )
        ),
        SecretStore(),
        TlsStats("cluster.t12."),
    ).client
    assert client_tls12 is not None
    before = envoy_families()
    assert world.run(exchange(client_tls12, world.ports["tls_port"])).ok
    after = envoy_families()
    envoy_delta = {k for k, v in after.items() if v != before.get(k, 0)}
    ours = our_server(certs["envoy_srv"], validation(world.ca, certs["ours_cli"].uri))
    server = TlsEchoServer(lambda: ours)

    async def ask_ours() -> Outcome:
        port = await server.start()
        try:
            return await exchange(client_tls12, port)
        finally:
            await server.close()

    assert world.run(ask_ours()).ok
    our_delta = {name.split(".ssl.", 1)[1] for name, v in ours.stats.items() if v}
    our_delta = {k for k in our_delta if k.split(".", 1)[0] in families}
    assert envoy_delta == our_delta
    assert "curves.X25519" in our_delta and "versions.TLSv1.2" in our_delta

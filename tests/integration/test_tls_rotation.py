"""Certificate rotation without restart: the server's certificate files are replaced while a client
keeps reconnecting.  New handshakes present the new certificate as soon as the store's poll sees
it; no connection fails on the way; a connection opened before the rotation keeps working."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.model.secret import (
    CertificateValidationContext,
    DataSource,
    DataSourceKind,
    MatchKind,
    SanMatcher,
    SanType,
    SdsSecretConfig,
    Secret,
    StringMatcher,
    TlsCertificate,
)
from sidecar.model.tls import CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext
from sidecar.tls.contexts import ContextCache
from sidecar.tls.handshake import ClientTls
from sidecar.tls.provider import TlsProvider
from sidecar.tls.secrets import SecretStore, start_polling
from sidecar.tls.stats import TlsStats
from tests.support.ca import Issued, TestCA, write_atomically
from tests.support.tls_loop import ClientConnection, TlsEchoServer, connect

pytestmark = pytest.mark.timeout(60)


def file_source(path: Path) -> DataSource:
    return DataSource(DataSourceKind.FILE, name=str(path))


def client_for(ca: TestCA, server_uri: str) -> ClientTls:
    cli = ca.workload("b", "client")
    cfg = UpstreamTlsContext(
        common=CommonTlsContext(
            tls_certificates=(
                TlsCertificate(DataSource(inline=cli.cert_pem), DataSource(inline=cli.key_pem)),
            ),
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(inline=ca.root_pem),
                san_matchers=(SanMatcher(SanType.URI, StringMatcher(MatchKind.EXACT, server_uri)),),
            ),
        )
    )
    p = TlsProvider(cfg, SecretStore(), TlsStats("cluster.c."))
    assert isinstance(p.current, ClientTls)
    return p.current


async def test_file_rotation_under_reconnecting_client(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    first = ca.workload("a", "server", name="first")
    second = ca.workload("a", "server", name="second")
    live = tmp_path / "live"
    live.mkdir()
    chain, key = live / "cert-chain.pem", live / "key.pem"
    write_atomically(chain, first.cert_pem)
    write_atomically(key, first.key_pem)

    errors: list[str] = []
    store = SecretStore(on_error=lambda name, why: errors.append(why))
    cfg = DownstreamTlsContext(
        common=CommonTlsContext(
            tls_certificates=(TlsCertificate(file_source(chain), file_source(key)),),
            validation_context=CertificateValidationContext(trusted_ca=file_source(ca.root_path)),
        ),
        require_client_certificate=True,
    )
    cache = ContextCache()
    provider = TlsProvider(cfg, store, TlsStats("listener.x."), cache=cache, on_error=errors.append)
    before = provider.current
    assert before is not None
    server = TlsEchoServer(lambda: provider.server)
    port = await server.start()
    loop = asyncio.get_running_loop()
    stop_polling = start_polling(store, loop.call_later, interval=0.01)
    client = client_for(ca, first.uri)
    try:
        # A long-lived connection, opened before the rotation.
        old = await connect(client, port)
        assert isinstance(old, ClientConnection)
        assert await old.echo(b"before\n") == b"before\n"

        serials: list[int] = []
        failures: list[str] = []
        rotated = asyncio.Event()

        async def reconnecting_client() -> None:
            for i in range(400):  # bounded: stops once the new certificate was seen a few times
                conn = await connect(client, port)
                if isinstance(conn, str):
                    failures.append(conn)
                    continue
                try:
                    if await conn.echo(b"%d\n" % i) != b"%d\n" % i:
                        failures.append(f"bad echo on connection {i}")
                finally:
                    conn.close()
                assert conn.handshake.peer is not None
                serials.append(int(conn.handshake.peer.serial, 16))
                if i == 5:
                    rotated.set()
                if serials.count(second.serial) >= 5:
                    return
                await asyncio.sleep(0.002)

        async def rotate() -> None:
            await rotated.wait()
            # Key first, then chain, each replaced by rename: between the two a poll may see the new
            # key with the old chain; that build fails and the old contexts stay (no failed handshake).
            write_atomically(key, second.key_pem)
            await asyncio.sleep(0.03)
            write_atomically(chain, second.cert_pem)

        await asyncio.wait_for(asyncio.gather(reconnecting_client(), rotate()), 30)

        assert failures == []
        assert serials[0] == first.serial and serials[-1] == second.serial
        switch = serials.index(second.serial)
        assert set(serials[:switch]) == {first.serial} and set(serials[switch:]) == {second.serial}
        now = provider.server
        assert now is not None and now is not before and now.ssl_context is not before.ssl_context
        # The pre-rotation connection still works, on the old context.
        assert await old.echo(b"after\n") == b"after\n"
        old.close()
        assert all("private key" in e for e in errors)  # only the half-rotated build, if a poll saw it
    finally:
        stop_polling()
        await server.close()


async def test_sds_push_rotates_at_once(tmp_path: Path) -> None:
    """A new version of the `default` secret (as SDS delivers it) applies to the next handshake."""
    ca = TestCA(tmp_path)
    first, second = ca.workload("a", "server", name="v1"), ca.workload("a", "server", name="v2")
    store = SecretStore()
    roots = Secret(
        "ROOTCA", validation_context=CertificateValidationContext(trusted_ca=DataSource(inline=ca.root_pem))
    )
    store.set_secret(roots, "r1")

    def workload(cert: Issued) -> Secret:
        return Secret(
            "default",
            tls_certificate=TlsCertificate(DataSource(inline=cert.cert_pem), DataSource(inline=cert.key_pem)),
        )

    store.set_secret(workload(first), "1")
    cfg = DownstreamTlsContext(
        common=CommonTlsContext(
            tls_certificate_sds=(SdsSecretConfig("default"),),
            validation_context_sds=SdsSecretConfig("ROOTCA"),
        ),
        require_client_certificate=True,
    )
    provider = TlsProvider(cfg, store, TlsStats("listener.x."))
    server = TlsEchoServer(lambda: provider.server)
    port = await server.start()
    client = client_for(ca, first.uri)
    try:
        held = await connect(client, port)
        assert isinstance(held, ClientConnection)
        store.set_secret(workload(second), "2")
        fresh = await connect(client, port)
        assert isinstance(fresh, ClientConnection)
        assert fresh.handshake.peer is not None and int(fresh.handshake.peer.serial, 16) == second.serial
        assert await held.echo(b"still here\n") == b"still here\n"
        held.close()
        fresh.close()
    finally:
        await server.close()

"""envoy.filters.network.rbac (l4/rbac.py) on real loopback connections: `guard()` puts the filter in
front of a listener's protocol as the listener manager will: a decision when the first bytes (or
the end of stream) arrive, an abort (or a delayed one) when denied.  The terminal here is a tiny
echo protocol standing in for tcp_proxy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sidecar.l4.rbac import NetworkRbacRuntime, RbacGuard, guard, guard_chain
from sidecar.model.endpoint import SocketAddress
from sidecar.observe.stats import Stats
from tests.unit.rbac.support import network_rbac

pytestmark = pytest.mark.timeout(30)

ONLY_5_TO_PORT = {
    "action": "ALLOW",
    "policies": {
        "from-5": {
            "permissions": [{"destination_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}}],
            "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.5", "prefix_len": 32}}],
        }
    },
}


class Echo(asyncio.Protocol):
    """Stands in for the terminal filter (tcp_proxy): echoes, and notes an end of stream."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        return False


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, Any]], Any]]:
    servers: list[asyncio.AbstractServer] = []

    async def start(cfg: dict[str, Any]) -> tuple[int, Stats]:
        stats = Stats(max_slots=64)
        loop = asyncio.get_running_loop()
        rt = NetworkRbacRuntime(network_rbac(cfg), stats)
        server = await loop.create_server(guard(Echo, [rt], loop), "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1], stats

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


async def talk(port: int, source: str, payloads: tuple[bytes, ...] = (b"ping",)) -> bytes | None:
    """What comes back for each payload, or None when the connection was closed on us."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    got = b""
    try:
        for p in payloads:
            writer.write(p)
            data = await asyncio.wait_for(reader.read(100), 10)
            if not data:
                return None
            got += data
        return got
    except ConnectionResetError:
        return None
    finally:
        writer.close()


def counters(stats: Stats) -> dict[str, int]:
    return {n: v for n, _, v in stats.items()}


async def test_allow_by_source_ip(serve: Any) -> None:
    port, stats = await serve({"stat_prefix": "tcp.", "rules": ONLY_5_TO_PORT})
    assert await talk(port, "127.0.0.5", (b"a", b"b")) == b"ab"
    assert await talk(port, "127.0.0.6") is None
    assert counters(stats)["tcp.rbac.allowed"] == 1  # ONE_TIME: the second read is not re-checked
    assert counters(stats)["tcp.rbac.denied"] == 1


async def test_continuous_counts_every_read(serve: Any) -> None:
    port, stats = await serve(
        {"stat_prefix": "tcp", "enforcement_type": "CONTINUOUS", "rules": ONLY_5_TO_PORT}
    )
    assert await talk(port, "127.0.0.5", (b"a", b"b", b"c")) == b"abc"
    assert counters(stats)["tcp.rbac.allowed"] == 3


async def test_shadow_rules_never_close(serve: Any) -> None:
    port, stats = await serve(
        {"stat_prefix": "tcp.", "shadow_rules": ONLY_5_TO_PORT, "shadow_rules_stat_prefix": "dry_"}
    )
    assert await talk(port, "127.0.0.6") == b"ping"
    assert await talk(port, "127.0.0.5") == b"ping"
    got = counters(stats)
    assert (got["tcp.rbac.dry_.shadow_denied"], got["tcp.rbac.dry_.shadow_allowed"]) == (1, 1)
    assert got["tcp.rbac.allowed"] == got["tcp.rbac.denied"] == 0


async def test_delay_deny_closes_without_answering(serve: Any) -> None:
    port, stats = await serve({"stat_prefix": "tcp.", "delay_deny": "0.1s", "rules": ONLY_5_TO_PORT})
    assert await talk(port, "127.0.0.7") is None
    assert counters(stats)["tcp.rbac.denied"] == 1


async def test_end_of_stream_is_checked_too(serve: Any) -> None:
    """A client that sends nothing and closes is checked on its FIN (Envoy's onData(end_stream))."""
    port, stats = await serve({"stat_prefix": "tcp.", "rules": ONLY_5_TO_PORT})
    _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.6", 0))
    writer.write_eof()
    for _ in range(200):  # bounded wait for the server side to see the FIN
        if counters(stats)["tcp.rbac.denied"]:
            break
        await asyncio.sleep(0.01)
    writer.close()
    assert counters(stats)["tcp.rbac.denied"] == 1


async def test_guard_passes_everything_through() -> None:
    """With the filter allowing, the inner protocol sees the same calls as without the guard."""
    loop = asyncio.get_running_loop()
    rt = NetworkRbacRuntime(network_rbac({"stat_prefix": "t", "rules": {"action": "DENY"}}), None)
    inner = Echo()
    g = RbacGuard(inner, [rt], loop)

    class T:
        written = b""

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

        def write(self, data: bytes) -> None:
            self.written += data

    t = T()
    g.connection_made(t)  # type: ignore[arg-type]
    g.data_received(b"a")
    g.data_received(b"b")
    assert g.eof_received() is False and inner.eof
    assert t.written == b"ab" and rt.stats.value("allowed") == 1
    g.draining = True
    assert g.draining and getattr(inner, "draining", False)
    assert guard(Echo, [], loop) is Echo


async def test_guard_chain_sees_the_original_destination(serve: Any) -> None:
    """A redirected connection's destination_ip/port are its original destination."""
    loop = asyncio.get_running_loop()
    cfg = {
        "stat_prefix": "t",
        "rules": {
            "policies": {
                "to-app": {
                    "permissions": [
                        {
                            "and_rules": {
                                "rules": [
                                    {"destination_ip": {"address_prefix": "10.0.0.7", "prefix_len": 32}},
                                    {"destination_port": 9080},
                                ]
                            }
                        }
                    ],
                    "principals": [{"any": True}],
                }
            }
        },
    }
    rt = NetworkRbacRuntime(network_rbac(cfg), None)
    chain = guard_chain(lambda dst: Echo(), [rt], loop)
    assert guard_chain(Echo, [], loop) is Echo
    for dst, allowed in (
        (SocketAddress("10.0.0.7", 9080), True),
        (SocketAddress("10.0.0.7", 80), False),
        (None, False),
    ):
        server = await loop.create_server(lambda dst=dst: chain(dst), "127.0.0.1", 0)
        try:
            got = await talk(server.sockets[0].getsockname()[1], "127.0.0.1")
        finally:
            server.close()
            await server.wait_closed()
        assert (got == b"ping") is allowed, dst

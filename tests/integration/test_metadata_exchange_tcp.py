"""The TCP proxy with Istio's metadata exchange (l4/tcp_proxy.py wiring of l4/metadata_exchange.py):
a real loopback upstream app, the downstream connection driven through a recording transport whose
TLS reports the negotiated ALPN (the decision sidecar makes from ssl_object.selected_alpn_protocol)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.l4 import metadata_exchange as mxc
from sidecar.l4 import tcp_proxy
from sidecar.l4.tcp_proxy import TcpProxyConnection, TcpProxyRuntime
from sidecar.model.cluster import Cluster
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.model.istio import MetadataExchange
from sidecar.model.listener import TcpProxy
from sidecar.model.snapshot import Node
from sidecar.observe.stats import Stats
from sidecar.upstream.cluster_manager import ClusterManager

MX = MetadataExchange(enable_discovery=True)
NODE = Node(
    id="sidecar~10.0.0.1~productpage-v1-1.default~default.svc.cluster.local",
    metadata={"NAME": "productpage-v1-1", "NAMESPACE": "default", "LABELS": {"app": "productpage"}},
)
ANSWER = b"pong, no preamble"
PEER = {"NAME": "reviews-v1-1", "NAMESPACE": "default", "LABELS": {"app": "reviews"}}


class _Ssl:
    def __init__(self, alpn: str | None) -> None:
        self.alpn = alpn

    def selected_alpn_protocol(self) -> str | None:
        return self.alpn


class RecordingTransport(asyncio.Transport):
    """The downstream side: what the proxy writes, and the ALPN its TLS negotiated."""

    def __init__(self, alpn: str | None) -> None:
        super().__init__()
        self.ssl = _Ssl(alpn) if alpn is not None else None
        self.written = bytearray()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.ssl if name == "ssl_object" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


class App(asyncio.Protocol):
    """The upstream application: records what it gets, answers ANSWER to the first bytes."""

    got = bytearray()
    answer = ANSWER
    transports: list[asyncio.BaseTransport] = []
    lost = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        App.transports.append(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        App.lost += 1

    def data_received(self, data: bytes) -> None:
        first = not App.got
        App.got += data
        if first:
            self.transport.write(App.answer)  # type: ignore[attr-defined]


async def until(cond: Any, what: str) -> None:
    for _ in range(200):  # at most 2 s
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def done(conn: TcpProxyConnection) -> None:
    conn.close()
    conn.connection_lost(None)  # the recording transport does not call it: closes the upstream


@pytest.fixture
async def proxy_runtime() -> Any:
    loop = asyncio.get_running_loop()
    App.got = bytearray()
    App.answer = ANSWER
    App.transports = []
    App.lost = 0
    server = await loop.create_server(App, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stats = Stats()
    cm = ClusterManager(stats, loop)
    cm.update({"app": Cluster(name="app", endpoints=(Endpoint(SocketAddress("127.0.0.1", port)),))})
    await cm.initialize()

    def make(mx: MetadataExchange | None) -> TcpProxyRuntime:
        return TcpProxyRuntime(TcpProxy(stat_prefix="t", cluster="app"), cm, stats, loop, 1 << 20, mx, NODE)

    yield make
    server.close()
    for t in App.transports:
        t.close()
    await until(lambda: App.lost == len(App.transports), "the app connections closed")
    await server.wait_closed()


async def test_downstream_preamble_written_and_peer_read(proxy_runtime: Any) -> None:
    down = RecordingTransport("istio-peer-exchange")
    conn = TcpProxyConnection(proxy_runtime(MX))
    conn.connection_made(down)
    # Ours first, before any payload: it decodes to our node's workload metadata and id.
    ours = mxc.Decoder().feed(bytes(down.written))
    assert isinstance(ours, mxc.Exchanged)
    assert ours.peer == mxc.workload_metadata(NODE.metadata) and ours.peer_id == NODE.id
    assert ours.leftover == b""
    # The peer's preamble, split, then the payload: only the payload reaches the app.
    peer = mxc.encode(PEER, "sidecar~10.0.0.2~reviews")
    conn.data_received(peer[:3])
    conn.data_received(peer[3:] + b"hello")
    await until(lambda: bytes(App.got) == b"hello", "the payload upstream")
    assert conn.peer_metadata[0] == PEER
    await until(lambda: bytes(down.written).endswith(ANSWER), "the answer downstream")
    done(conn)


@pytest.mark.parametrize("alpn", [None, "istio", "h2"])
async def test_no_exchange_without_the_alpn(proxy_runtime: Any, alpn: str | None) -> None:
    down = RecordingTransport(alpn)
    conn = TcpProxyConnection(proxy_runtime(MX))
    conn.connection_made(down)
    assert down.written == b""
    preamble_like = mxc.encode(PEER, "x")  # not read as one: the bytes are the payload
    conn.data_received(preamble_like)
    await until(lambda: bytes(App.got) == preamble_like, "the bytes unchanged upstream")
    assert conn.peer_metadata == [None, None]
    done(conn)


async def test_peer_without_the_filter_passes_through(proxy_runtime: Any) -> None:
    down = RecordingTransport("istio-peer-exchange")
    conn = TcpProxyConnection(proxy_runtime(MX))
    conn.connection_made(down)
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await until(lambda: bytes(App.got) == b"GET / HTTP/1.1\r\n\r\n", "the bytes unchanged upstream")
    done(conn)


async def test_upstream_side_from_the_cluster(proxy_runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cluster.metadata_exchange: our preamble goes upstream before the payload and the upstream
    peer's is taken off what comes back.  (The upstream here is plaintext, so the ALPN the TLS
    handshake would report is stubbed for the upstream transport only.)"""
    rt = proxy_runtime(None)
    state = rt.cluster_manager.get("app")
    state.config = Cluster(name="app", endpoints=state.config.endpoints, metadata_exchange=MX)
    real_alpn = tcp_proxy._alpn
    monkeypatch.setattr(
        tcp_proxy,
        "_alpn",
        lambda t: "istio-peer-exchange" if not isinstance(t, RecordingTransport) else real_alpn(t),
    )
    down = RecordingTransport(None)
    conn = TcpProxyConnection(rt)
    conn.connection_made(down)
    conn.data_received(b"ping")
    await until(lambda: len(App.got) > 4, "the preamble and the payload upstream")
    got = mxc.Decoder().feed(bytes(App.got))
    assert isinstance(got, mxc.Exchanged) and got.peer_id == NODE.id and got.leftover == b"ping"
    # The app answered with no preamble (8 bytes or more: Envoy decides nothing before 8): a peer without the filter; it passes through.
    await until(lambda: bytes(down.written) == ANSWER, "the answer downstream")
    done(conn)


async def test_upstream_peer_preamble_is_taken_off(
    proxy_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = proxy_runtime(None)
    state = rt.cluster_manager.get("app")
    state.config = Cluster(name="app", endpoints=state.config.endpoints, metadata_exchange=MX)
    monkeypatch.setattr(
        tcp_proxy, "_alpn", lambda t: None if isinstance(t, RecordingTransport) else MX.protocol
    )
    App.answer = mxc.encode(PEER, "sidecar~10.0.0.2~reviews") + b"data"
    down = RecordingTransport(None)
    conn = TcpProxyConnection(rt)
    conn.connection_made(down)
    conn.data_received(b"ping")
    await until(lambda: bytes(down.written) == b"data", "only the payload downstream")
    assert conn.peer_metadata == [None, PEER]
    done(conn)

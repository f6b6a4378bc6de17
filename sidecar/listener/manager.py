"""Listeners of one worker: bind (SO_REUSEPORT, one socket per worker), accept, drain.

Each listener's connections are built by a protocol factory chosen from its filter chain's
terminal network filter (http_connection_manager -> http/protocol.py, tcp_proxy -> l4/tcp_proxy.py).
The runtimes behind those factories are made here, once per listener config, so a connection keeps
the config it was accepted with."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from typing import Any

from sidecar.http.conn_manager import HcmRuntime
from sidecar.http.filters.registry import filter_factories
from sidecar.http.protocol import Http1ServerConnection
from sidecar.http.timeouts import Timeouts
from sidecar.l4.tcp_proxy import TcpProxyConnection, TcpProxyRuntime
from sidecar.model.listener import HttpConnectionManager, Listener, TcpProxy
from sidecar.observe.stats import Counter, Stats
from sidecar.upstream.cluster_manager import ClusterManager


def stat_address(listener: Listener) -> str:
    """Envoy's listener stat prefix: `listener.<ip>_<port>.`"""
    a = listener.address
    if a.pipe:
        return a.pipe
    return f"{a.host}_{a.port}"


def make_socket(listener: Listener, port: int | None = None) -> socket.socket:
    """A bound, listening socket for `listener` (SO_REUSEPORT so every worker binds its own)."""
    a = listener.address
    if a.pipe:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(a.pipe)
    else:
        family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # Envoy's ipv4_compat defaults to false: an [::] listener is IPv6 only.
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((a.host, a.port if port is None else port))
    s.listen(listener.backlog)
    s.setblocking(False)
    return s


class _Connections(set[Any]):
    """The open connections of one listener (for drain)."""


class ActiveListener:
    __slots__ = ("config", "conns", "cx_total", "factory", "server", "sock")

    def __init__(self, config: Listener, sock: socket.socket, factory: Callable[[], asyncio.Protocol], stats: Stats) -> None:
        self.config = config
        self.sock = sock
        self.factory = factory
        self.server: asyncio.AbstractServer | None = None
        self.conns = _Connections()
        p = f"listener.{stat_address(config)}."
        self.cx_total = stats.counter(p + "downstream_cx_total")


class ListenerManager:
    def __init__(self, loop: asyncio.AbstractEventLoop, cm: ClusterManager, stats: Stats) -> None:
        self.loop = loop
        self.cm = cm
        self.stats = stats
        self.active: list[ActiveListener] = []
        self.draining = False
        self.timeouts = Timeouts(loop)  # route timeouts of every HTTP listener of this worker

    def _factory(
        self, listener: Listener, conns: _Connections
    ) -> Callable[[], Http1ServerConnection | TcpProxyConnection]:
        chain = listener.chain()
        assert chain is not None and chain.filters
        terminal = chain.filters[-1]
        limit = listener.per_connection_buffer_limit_bytes
        if isinstance(terminal, HttpConnectionManager):
            factories = filter_factories(terminal, self.stats)  # http_filters, router last
            rt = HcmRuntime(terminal, self.cm, self.stats, self.loop, factories, limit, self.timeouts)
            return lambda: Http1ServerConnection(rt, conns)
        assert isinstance(terminal, TcpProxy)
        trt = TcpProxyRuntime(terminal, self.cm, self.stats, self.loop, limit)
        return lambda: TcpProxyConnection(trt, conns)

    async def start(self, listeners: Iterable[tuple[Listener, socket.socket]]) -> None:
        for cfg, sock in listeners:
            conns = _Connections()
            base = self._factory(cfg, conns)
            al = ActiveListener(cfg, sock, base, self.stats)
            al.conns = conns
            cx_total = al.cx_total

            def factory(
                base: Callable[[], Http1ServerConnection | TcpProxyConnection] = base, t: Counter = cx_total
            ) -> asyncio.Protocol:
                t.inc()
                conn = base()
                if self.draining:
                    conn.draining = True
                return conn

            al.server = await self.loop.create_server(factory, sock=sock)
            self.active.append(al)

    def addresses(self) -> list[tuple[str, str]]:
        out = []
        for al in self.active:
            name = al.sock.getsockname()
            if isinstance(name, tuple):
                host = name[0]
                out.append((al.config.name, f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"))
            else:
                out.append((al.config.name, str(name)))
        return out

    def stop_accepting(self) -> None:
        for al in self.active:
            if al.server is not None:
                al.server.close()

    def drain_connections(self) -> None:
        """Ask every open connection to finish what is in flight and close."""
        self.draining = True
        for al in self.active:
            for c in list(al.conns):
                c.drain()

    def open_connections(self) -> int:
        return sum(len(al.conns) for al in self.active)

    async def wait_drained(self, deadline: float) -> bool:
        while self.open_connections() and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.open_connections() == 0

    def close_all(self) -> None:
        for al in self.active:
            for c in list(al.conns):
                t = getattr(c, "transport", None)
                if t is not None:
                    t.abort()

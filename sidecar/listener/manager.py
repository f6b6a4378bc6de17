"""Listeners of one worker: bind (SO_REUSEPORT, one socket per worker), accept, run the listener
filters, pick the filter chain, hand connections off between listeners, drain.

Two accept paths:
- the fast path, for a listener with no listener filters, no use_original_dst and one chain that
  matches every connection: the event loop's own server (`create_server`) and one protocol factory;
- the inspecting path (listener/accept.py) for every other listener: sockets are accepted here, the
  listener filters peek at them (never consuming a byte), `use_original_dst` hands them to the
  listener bound to their original destination, and chain_match picks the chain whose terminal
  filter then gets the socket (`connect_accepted_socket`).

Listeners with `bind_to_port: false` have no socket: they are only registered for hand-off, by
`ip:port` and, for wildcard addresses, by `0.0.0.0:port` / `[::]:port` (Envoy's
getBalancedHandlerByAddress).  A chain's runtime (HcmRuntime / TcpProxyRuntime) is made here once
per listener config, so a connection keeps the config it was accepted with.

Under xDS (xds/apply.py): `serve` adds a listener, `retire` stops one and drains its connections
for the drain time, and `set_route_configs` swaps an RDS route configuration into the connection
managers that name it (HcmRuntime.use_route_config: streams starting afterwards use it)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any

from sidecar.http.conn_manager import HcmRuntime
from sidecar.http.filters.registry import filter_factories
from sidecar.http.protocol import Http1ServerConnection
from sidecar.http.timeouts import Timeouts
from sidecar.l4.rbac import NetworkRbacRuntime, guard_chain
from sidecar.l4.tcp_proxy import TcpProxyConnection, TcpProxyRuntime
from sidecar.listener.accept import Acceptor, address_key
from sidecar.listener.original_dst import set_capture_options
from sidecar.model.endpoint import SocketAddress
from sidecar.model.listener import FilterChain, HttpConnectionManager, Listener, TcpProxy
from sidecar.model.rbac import NetworkRbac
from sidecar.model.route import RouteConfiguration
from sidecar.model.snapshot import Node
from sidecar.observe.stats import Counter, Stats
from sidecar.upstream.cluster_manager import ClusterManager


def stat_address(listener: Listener) -> str:
    """Envoy's listener stats scope: `listener.<stat_prefix>.`, else the address with ':' made '_'
    (`127.0.0.1_15001`, `[__]_15001`)."""
    if listener.stat_prefix:
        return listener.stat_prefix
    a = listener.address
    if a.pipe:
        return a.pipe
    return str(a).replace(":", "_")


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
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if a.ipv4_compat else 1)
        # Listener.transparent / freebind: before bind, as Envoy's socket options do.
        set_capture_options(s, listener.transparent, listener.freebind)
        s.bind((a.host, a.port if port is None else port))
    s.listen(listener.backlog)
    s.setblocking(False)
    return s


class _Connections(set[Any]):
    """The open connections of one listener (for drain)."""


class _CapturedHttp1(Http1ServerConnection):
    """An HTTP connection whose original destination was restored: its local address is that
    destination (Envoy's restoreLocalAddress), and `original_dst` is what an ORIGINAL_DST cluster
    connects to (the router reads it; see upstream/original_dst.py)."""

    __slots__ = ("original_dst",)

    def __init__(self, rt: HcmRuntime, owner: object, original_dst: SocketAddress | None) -> None:
        super().__init__(rt, owner)
        self.original_dst = original_dst

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        dst = self.original_dst
        if dst is not None:
            self.local_ip = dst.host.encode()
            self.local_addr = str(dst).encode()


# A chain's protocol factory: called with the restored original destination (or None).
ChainFactory = Callable[[SocketAddress | None], asyncio.Protocol]


class ActiveListener:
    """One listener of this worker: its config, socket (None with bind_to_port false), chain
    factories and stats."""

    __slots__ = (
        "chains",
        "config",
        "conns",
        "cx_total",
        "factory",
        "filter_error",
        "fixed",
        "hcms",
        "inspect",
        "no_chain",
        "owners",
        "pre_cx_active",
        "pre_cx_timeout",
        "remote_close",
        "server",
        "sock",
        "stopped",
    )

    def __init__(
        self,
        config: Listener,
        sock: socket.socket | None,
        factory: Callable[[], asyncio.Protocol] | None,
        stats: Stats,
    ) -> None:
        self.config = config
        self.sock = sock
        self.factory = factory
        self.server: asyncio.AbstractServer | None = None
        self.conns = _Connections()
        # id(FilterChain) -> its protocol factory (None: a chain without filters closes).
        self.chains: dict[int, ChainFactory | None] = {}
        self.inspect = False  # accepted through accept.py (else the loop's server, or not bound)
        self.fixed = config.single_chain  # every connection gets config.chain()
        self.stopped = False
        # The HcmRuntimes of chains whose routes come from RDS (set_route_configs swaps their routes).
        self.hcms: list[HcmRuntime] = []
        # Stat blocks its chains registered (connection manager, fault filter, tcp_proxy): forgotten
        # when the listener is gone, so updates do not pile up blocks that every flush walks.
        self.owners: list[object] = []
        p = f"listener.{stat_address(config)}."
        self.cx_total = stats.counter(p + "downstream_cx_total")
        self.no_chain = stats.counter(p + "no_filter_chain_match")
        self.pre_cx_timeout = stats.counter(p + "downstream_pre_cx_timeout")
        self.pre_cx_active = stats.gauge(p + "downstream_pre_cx_active")
        self.remote_close = stats.counter(p + "downstream_listener_filter_remote_close")
        self.filter_error = stats.counter(p + "downstream_listener_filter_error")


class ListenerManager:
    def __init__(self, loop: asyncio.AbstractEventLoop, cm: ClusterManager, stats: Stats) -> None:
        self.loop = loop
        self.cm = cm
        self.stats = stats
        # The bootstrap's node (runtime.py sets it): what Istio's metadata exchange tells peers.
        self.local_node: Node | None = None
        # Bootstrap tracing.http (model.tracing.Zipkin): the default provider of traced connection
        # managers (kept here, not written into the listener configs, whose chains chain_match
        # compiled by identity).
        self.default_zipkin: Any = None
        self.active: list[ActiveListener] = []
        self.draining = False
        self.timeouts = Timeouts(loop)  # route timeouts of every HTTP listener of this worker
        # Hand-off targets by "ip:port" (Envoy's tcp_listener_map_by_address_).
        self.by_address: dict[str, ActiveListener] = {}
        # (host, port) of the bound listeners that restore original destinations (accept.py's loop check).
        self.captures: list[tuple[str, int]] = []
        self.acceptor = Acceptor(self, loop, stats)
        # RDS: the RouteConfigurations by name, and listeners replaced or removed by LDS that are
        # draining their connections (xds/apply.py drives both).
        self.route_configs: dict[str, RouteConfiguration] = {}
        self.retired: list[ActiveListener] = []

    # -- chain runtimes ------------------------------------------------------------------------------
    def _chain_factory(
        self,
        listener: Listener,
        chain: FilterChain,
        conns: _Connections,
        hcms: list[HcmRuntime] | None = None,
        owners: list[object] | None = None,
    ) -> ChainFactory | None:
        if not chain.filters:
            return None  # Envoy: "closing connection: no filters"
        terminal = chain.filters[-1]
        limit = listener.per_connection_buffer_limit_bytes
        # envoy.filters.network.rbac before the terminal filter: checked when bytes arrive.
        rbacs = [NetworkRbacRuntime(f, self.stats) for f in chain.filters[:-1] if isinstance(f, NetworkRbac)]
        if isinstance(terminal, HttpConnectionManager):
            if terminal.rds_name:
                rc = self.route_configs.get(terminal.rds_name)
                terminal = terminal if rc is None else dataclasses.replace(terminal, route_config=rc)
            factories = filter_factories(terminal, self.stats)  # http_filters, router last
            rt = HcmRuntime(terminal, self.cm, self.stats, self.loop, factories, limit, self.timeouts)
            rt.default_zipkin = self.default_zipkin
            if terminal.rds_name and hcms is not None:
                hcms.append(rt)
            if owners is not None:
                owners.append(rt.stats)
                owners.extend(_factory_stats(factories))

            def http(dst: SocketAddress | None) -> asyncio.Protocol:
                if dst is None:
                    return Http1ServerConnection(rt, conns)
                return _CapturedHttp1(rt, conns, dst)

            return guard_chain(http, rbacs, self.loop)
        assert isinstance(terminal, TcpProxy)
        trt = TcpProxyRuntime(
            terminal, self.cm, self.stats, self.loop, limit, chain.metadata_exchange, self.local_node
        )
        if owners is not None:
            owners.append(trt.stats)

        def tcp(dst: SocketAddress | None) -> asyncio.Protocol:
            conn = TcpProxyConnection(trt, conns)
            conn.original_dst = dst
            return conn

        return guard_chain(tcp, rbacs, self.loop)

    def _activate(self, cfg: Listener, sock: socket.socket | None) -> ActiveListener:
        conns = _Connections()
        al = ActiveListener(cfg, sock, None, self.stats)
        al.conns = conns
        for chain in (*cfg.filter_chains, cfg.default_filter_chain):
            if chain is not None and id(chain) not in al.chains:
                al.chains[id(chain)] = self._chain_factory(cfg, chain, conns, al.hcms, al.owners)
        al.inspect = bool(cfg.listener_filters) or cfg.use_original_dst or not cfg.single_chain
        if not cfg.address.pipe:
            own, compat = _keys(cfg.address)
            if own:
                self.by_address[own] = al
            if compat:
                # An [::] ipv4_compat listener answers for 0.0.0.0:port only while no explicit
                # 0.0.0.0 listener does (Envoy's addListener).
                self.by_address.setdefault(compat, al)
        return al

    async def start(
        self, listeners: Iterable[tuple[Listener, socket.socket]], unbound: Iterable[Listener] = ()
    ) -> None:
        """Serve the bound listeners; register the `bind_to_port: false` ones for hand-off."""
        for cfg in unbound:
            self.active.append(self._activate(cfg, None))
        for cfg, sock in listeners:
            await self.serve(cfg, sock)

    async def serve(self, cfg: Listener, sock: socket.socket | None) -> ActiveListener:
        """Start serving one listener (at start-up, or added by LDS; sock None: bind_to_port false)."""
        al = self._activate(cfg, sock)
        self.active.append(al)
        if sock is None:
            return al
        if cfg.restores_destination and not cfg.address.pipe:
            name = sock.getsockname()
            self.captures.append((str(name[0]), int(name[1])))
        if al.inspect:
            self.acceptor.listen(al)
            return al
        chain = cfg.chain()
        base = al.chains.get(id(chain)) if chain is not None else None
        cx_total = al.cx_total

        def factory(base: ChainFactory | None = base, t: Counter = cx_total) -> asyncio.Protocol:
            t.inc()
            if base is None:
                return _Closer()
            conn = base(None)
            if self.draining:
                conn.draining = True  # type: ignore[attr-defined]
            return conn

        al.factory = factory
        al.server = await self.loop.create_server(factory, sock=sock)
        return al

    # -- LDS / RDS (xds/apply.py) ----------------------------------------------------------------------
    def find(self, name: str) -> ActiveListener | None:
        for al in self.active:
            if al.config.name == name:
                return al
        return None

    def retire(self, al: ActiveListener, drain_time: float) -> None:
        """An updated or removed listener: stop accepting on it, ask its connections to finish
        (Envoy's drain for drain_time), close what is left at the deadline; new connections go to
        its replacement.  (A listening socket its replacement shares, dup()ed by xds/apply.py,
        stays open with its backlog.)"""
        self.active.remove(al)
        for key in [k for k, v in self.by_address.items() if v is al]:
            del self.by_address[key]
        al.stopped = True
        if al.server is not None:
            al.server.close()
        elif al.inspect and al.sock is not None:
            self.acceptor.unlisten(al)
        if al.sock is not None and al.server is None:
            al.sock.close()
        for c in list(al.conns):
            if hasattr(c, "draining"):
                # HTTP: the next response says `connection: close`.  An idle connection is not cut
                # here: its request may already be on the way (it was accepted by this listener).
                c.draining = True
            else:
                c.drain()
        if not al.conns:
            self._forget(al)
            return  # nothing to drain
        self.retired.append(al)

        def close() -> None:
            for c in list(al.conns):
                t = getattr(c, "transport", None)
                if t is not None:
                    t.abort()
            if al in self.retired:
                self.retired.remove(al)
            self._forget(al)

        self.loop.call_later(drain_time, close)

    def _forget(self, al: ActiveListener) -> None:
        """The listener is gone: stop flushing its stat blocks (their last values stay; a
        replacement with the same stat prefix took them over when it registered)."""
        for obj in al.owners:
            self.stats.release(obj)
        al.owners.clear()

    def set_route_configs(self, configs: dict[str, RouteConfiguration], changed: Iterable[str]) -> None:
        """RDS: `configs` is every known RouteConfiguration; the connection managers using a name in
        `changed` serve the new one to every stream that starts from now (one swap per runtime)."""
        self.route_configs = configs
        names = set(changed)
        for al in (*self.active, *self.retired):
            for rt in al.hcms:
                name = rt.cfg.rds_name
                if name in names:
                    rc = configs.get(name)
                    if rc is not None:
                        rt.use_route_config(dataclasses.replace(rt.cfg, route_config=rc), rt.all_factories)

    def find_by_address(self, ip: str, port: int) -> ActiveListener | None:
        """The hand-off target for an original destination: the exact `ip:port` listener, else the
        wildcard one of the same family on that port; never a stopped listener."""
        exact, wildcard = address_key(ip, port)
        al = self.by_address.get(exact)
        if al is None or al.stopped:
            al = self.by_address.get(wildcard)
        if al is None or al.stopped:
            return None
        return al

    def addresses(self) -> list[tuple[str, str]]:
        out = []
        for al in self.active:
            if al.sock is None:
                out.append((al.config.name, str(al.config.address)))
                continue
            name = al.sock.getsockname()
            if isinstance(name, tuple):
                host = name[0]
                out.append((al.config.name, f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"))
            else:
                out.append((al.config.name, str(name)))
        return out

    def stop_accepting(self) -> None:
        for al in self.active:
            al.stopped = True
            if al.server is not None:
                al.server.close()
            elif al.inspect and al.sock is not None:
                self.acceptor.unlisten(al)

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
        self.acceptor.close_pending()
        for al in self.active:
            for c in list(al.conns):
                t = getattr(c, "transport", None)
                if t is not None:
                    t.abort()


class _Closer(asyncio.Protocol):
    """The fast path's protocol for a chain with no network filters: close at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _keys(address: SocketAddress) -> tuple[str, str]:
    """The hand-off keys a listener answers to: its own `ip:port`, and for an `[::]` listener with
    ipv4_compat the IPv4 wildcard ("" when none)."""
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return "", ""
    key = address_key(str(ip), address.port)[0]
    if ip.version == 6 and address.ipv4_compat and ip.is_unspecified:
        return key, f"0.0.0.0:{address.port}"
    return key, ""


def _factory_stats(factories: Iterable[object]) -> list[object]:
    """The stat blocks of http filter factories (the fault filter's FaultStats)."""
    out = []
    for f in factories:
        rt = getattr(f, "rt", None)
        st = getattr(rt, "stats", None) if rt is not None else None
        if st is not None:
            out.append(st)
    return out

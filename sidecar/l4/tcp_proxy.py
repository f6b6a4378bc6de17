"""envoy.filters.network.tcp_proxy: relay bytes between a downstream and an upstream connection.

Backpressure both ways (a side whose write buffer is over the limit pauses reading on the other),
half-close passed through (FIN one way does not end the other direction, as Envoy), idle timeout
(default 1 h) measured lazily from the last byte either way.

An ORIGINAL_DST cluster connects to the connection's `original_dst`, which the listener manager sets
before connection_made when the original_dst listener filter restored it (else None: no host, the
connection is closed as Envoy does).  upstream_bind_config binds the upstream socket's source.

Istio's metadata exchange (l4/metadata_exchange.py holds the codec): when the chain has it
(FilterChain.metadata_exchange) and the downstream TLS ALPN is its protocol, our preamble goes
downstream first and the peer's is read off the downstream bytes; likewise upstream when the
cluster has it (Cluster.metadata_exchange) and the upstream TLS ALPN matches."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from typing import TYPE_CHECKING, Any, cast

from sidecar.l4 import metadata_exchange as mxc
from sidecar.model.istio import MetadataExchange
from sidecar.model.listener import TcpProxy
from sidecar.model.route import ClusterWeight
from sidecar.observe import access_log_emit
from sidecar.observe.stats import Stats, shared_block
from sidecar.routing import weighted
from sidecar.tls.wiring import log as tls_log
from sidecar.tls.wiring import upstream_tls
from sidecar.upstream.original_dst import source_address

if TYPE_CHECKING:
    from sidecar.model.endpoint import SocketAddress
    from sidecar.model.snapshot import Node
    from sidecar.upstream.cluster_manager import ClusterManager, Host


class TcpProxyStats:
    __slots__ = (
        "downstream_cx_no_route",
        "downstream_cx_rx_bytes_total",
        "downstream_cx_total",
        "downstream_cx_tx_bytes_total",
        "idle_timeout",
        "upstream_flush_active",
    )

    # The slots above (set to 0 by the loop in __init__), declared for the type checker only: with
    # __slots__ a bare annotation makes no class attribute.
    downstream_cx_no_route: int
    downstream_cx_rx_bytes_total: int
    downstream_cx_total: int
    downstream_cx_tx_bytes_total: int
    idle_timeout: int
    upstream_flush_active: int

    def __init__(self, stats: Stats, prefix: str) -> None:
        for attr in self.__slots__:
            setattr(self, attr, 0)
        counters = [a for a in self.__slots__ if not a.endswith("_active")]
        gauges = [a for a in self.__slots__ if a.endswith("_active")]
        stats.block(self, f"tcp.{prefix}.", counters, gauges)


class TcpProxyRuntime:
    """Per listener config per worker."""

    __slots__ = (
        "access_logs",
        "buffer_limit",
        "cfg",
        "cluster_manager",
        "loop",
        "mx",
        "node",
        "preambles",
        "stats",
        "weights",
    )

    def __init__(
        self,
        cfg: TcpProxy,
        cm: ClusterManager,
        stats: Stats,
        loop: asyncio.AbstractEventLoop,
        buffer_limit: int,
        mx: MetadataExchange | None = None,
        node: Node | None = None,
    ) -> None:
        self.cfg = cfg
        self.cluster_manager = cm
        self.stats = shared_block(stats, f"tcp.{cfg.stat_prefix}.", lambda: TcpProxyStats(stats, cfg.stat_prefix))
        self.loop = loop
        self.buffer_limit = buffer_limit
        self.weights = tuple(ClusterWeight(w.name, w.weight) for w in cfg.weighted_clusters)
        # TcpProxy.access_log (None when there are none: connections then keep no log state).
        self.access_logs = access_log_emit.build(getattr(cfg, "access_log", ()))
        # The chain's metadata exchange, the local node it describes, and our preamble per label set.
        self.mx = mx
        self.node = node
        self.preambles: dict[tuple[str, ...], bytes] = {}

    def preamble(self, mx: MetadataExchange) -> bytes:
        found = self.preambles.get(mx.additional_labels)
        if found is None:
            node_id, md = (self.node.id, self.node.metadata) if self.node is not None else ("", {})
            found = mxc.encode(mxc.workload_metadata(md, mx.additional_labels), node_id)
            self.preambles[mx.additional_labels] = found
        return found


def _alpn(transport: asyncio.BaseTransport) -> str | None:
    """The ALPN protocol the TLS handshake of `transport` selected (None: plaintext or none)."""
    obj = transport.get_extra_info("ssl_object")
    return obj.selected_alpn_protocol() if obj is not None else None


class _Upstream(asyncio.Protocol):
    __slots__ = ("down", "transport")

    def __init__(self, down: TcpProxyConnection) -> None:
        self.down = down
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses (so no isinstance check) but
        # have its whole API; cast only tells the type checker so.
        t = self.transport = cast(asyncio.Transport, transport)
        lim = self.down.rt.buffer_limit
        t.set_write_buffer_limits(high=lim, low=lim // 2)
        host = self.down.host
        cmx = host.cluster.config.metadata_exchange if host is not None else None
        if cmx is not None and _alpn(t) == cmx.protocol:
            # Read the peer's preamble from the first byte on; ours is written once the peer passed
            # the TLS checks (_connect).
            self.down.mx_up = mxc.Decoder()

    def data_received(self, data: bytes) -> None:
        self.down.from_upstream(data)

    def eof_received(self) -> bool:
        self.down.upstream_eof()
        # Keep the write side open (half-close) on plain TCP.  A TLS transport cannot half-close:
        # asyncio closes it anyway and warns when asked to keep it.
        t = self.transport
        return t is None or t.get_extra_info("ssl_object") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.upstream_lost()

    def pause_writing(self) -> None:
        self.down.pause_reading()

    def resume_writing(self) -> None:
        self.down.resume_reading()


class TcpProxyConnection(asyncio.Protocol):
    __slots__ = (
        "alog",
        "buffer",
        "closed",
        "down_eof",
        "draining",
        "host",
        "idle_timer",
        "last",
        "mx_down",
        "mx_up",
        "original_dst",
        "owner",
        "peer_identity",
        "peer_metadata",
        "requested_server_name",
        "rt",
        "transport",
        "up",
        "up_eof",
        "up_paused",
    )

    def __init__(self, rt: TcpProxyRuntime, owner: set[Any] | None = None) -> None:
        self.rt = rt
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.up: _Upstream | None = None
        self.buffer: list[bytes] | None = []
        self.down_eof = False
        self.up_eof = False
        self.closed = False
        self.host: Host | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.last = 0.0
        self.up_paused = False
        self.draining = False
        # The restored original destination (listener/manager.py), for ORIGINAL_DST clusters.
        self.original_dst: SocketAddress | None = None
        # Set by the TLS accept path (listener/accept.py): the peer's identity and the SNI.
        self.peer_identity: object = None
        self.requested_server_name: str | None = None
        self.alog: access_log_emit.TcpLogState | None = None  # with access logs only
        # Istio metadata exchange: the peer preambles still being read, and what they said
        # (downstream peer first, upstream peer second; None until read or when absent).
        self.mx_down: mxc.Decoder | None = None
        self.mx_up: mxc.Decoder | None = None
        self.peer_metadata: list[dict[str, Any] | None] = [None, None]

    # -- downstream ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast: see _Upstream.connection_made (uvloop's transports are not asyncio.Transport subclasses).
        self.transport = cast(asyncio.Transport, transport)
        rt = self.rt
        self.transport.set_write_buffer_limits(high=rt.buffer_limit, low=rt.buffer_limit // 2)
        rt.stats.downstream_cx_total += 1
        if self.owner is not None:
            self.owner.add(self)
        if rt.mx is not None and _alpn(transport) == rt.mx.protocol:
            self.mx_down = mxc.Decoder()
            self.transport.write(rt.preamble(rt.mx))
        cfg = rt.cfg
        name = weighted.pick(rt.weights, 0, random.getrandbits(32)).name if rt.weights else cfg.cluster
        cluster = rt.cluster_manager.get(name)
        if rt.access_logs:
            alog = self.alog = access_log_emit.TcpLogState(rt.loop.time())
            # Envoy's tcp_proxy flags: NC without the cluster, UH without a host, UF on connect failure.
            alog.cluster = name if cluster is not None else None
            if cluster is None:
                alog.flags = ["NC"]
        host = None
        if cluster is not None:
            od = cluster.original_dst
            host = cluster.pick() if od is None else od.pick(self.original_dst)
        if cluster is None or host is None:
            rt.stats.downstream_cx_no_route += 1
            if cluster is not None:
                cluster.stats.upstream_cx_none_healthy += 1
                if self.alog is not None:
                    self.alog.flags = ["UH"]
            transport.close()
            return
        self.host = host
        # Read nothing more than one buffer's worth until the upstream is connected.
        rt.loop.create_task(self._connect(host))
        if cfg.idle_timeout > 0:
            self.last = rt.loop.time()
            self.idle_timer = rt.loop.call_later(cfg.idle_timeout, self._check_idle)

    async def _connect(self, host: Host) -> None:
        rt = self.rt
        cluster = host.cluster
        cluster.stats.upstream_cx_total += 1
        addr = host.address
        up = _Upstream(self)
        timeout = cluster.config.connect_timeout or None
        tls = None
        try:
            # The cluster's transport_socket (or the transport_socket_matches entry for this host).
            tls = upstream_tls(host, rt.loop)
            ctx = tls.ssl_context if tls is not None else None
            sni = tls.server_hostname if tls is not None else None
            if addr.pipe:
                coro = rt.loop.create_unix_connection(lambda: up, addr.pipe, ssl=ctx, server_hostname=sni)
            else:
                local = source_address(cluster.config, addr)
                coro = rt.loop.create_connection(
                    lambda: up, addr.host, addr.port, local_addr=local, ssl=ctx, server_hostname=sni
                )
            await asyncio.wait_for(coro, timeout)
            if tls is not None:
                verdict = tls.on_handshake(up.transport.get_extra_info("ssl_object"))  # type: ignore[union-attr]
                if not verdict.ok:
                    if tls_log.isEnabledFor(logging.DEBUG):
                        tls_log.debug("upstream %s: TLS peer refused: %s", addr, verdict.reason)
                    assert up.transport is not None
                    up.transport.abort()
                    raise ConnectionRefusedError(verdict.reason)
        except (TimeoutError, OSError) as exc:
            if tls is not None and isinstance(exc, ssl.SSLError):
                reason = tls.on_handshake_error(exc)
                if tls_log.isEnabledFor(logging.DEBUG):
                    tls_log.debug("upstream %s: TLS handshake failed: %s", addr, reason)
            cluster.stats.upstream_cx_connect_fail += 1
            host.cx_connect_fail += 1
            if self.alog is not None:
                self.alog.flags = ["UF", "URX"]  # Envoy: the connect attempts ran out too
            self.close()
            return
        cmx = cluster.config.metadata_exchange
        if self.mx_up is not None and cmx is not None and up.transport is not None:
            up.transport.write(rt.preamble(cmx))  # before any payload byte
        if self.closed:
            assert up.transport is not None
            up.transport.close()
            return
        cluster.stats.upstream_cx_active += 1
        host.cx_active += 1
        self.up = up
        if self.alog is not None and up.transport is not None:
            self.alog.upstream_local = access_log_emit.addr_text(up.transport.get_extra_info("sockname"))
        buf = self.buffer
        self.buffer = None
        assert up.transport is not None
        if buf:
            up.transport.write(b"".join(buf))
        if self.down_eof and up.transport.can_write_eof():
            up.transport.write_eof()
        self.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.rt.stats.downstream_cx_rx_bytes_total += len(data)
        if self.alog is not None:
            self.alog.rx += len(data)
        self.last = self.rt.loop.time()
        if self.mx_down is not None:
            data = self._mx_read(0, data, False)
            if not data:
                return
        self._to_upstream(data)

    def _mx_read(self, side: int, data: bytes, end: bool) -> bytes:
        """Feed the peer preamble decoder of `side` (0 downstream, 1 upstream); the payload bytes."""
        dec = self.mx_down if side == 0 else self.mx_up
        assert dec is not None
        r = dec.feed(data, end)
        if isinstance(r, mxc.NeedMore):
            return b""
        if side == 0:
            self.mx_down = None
        else:
            self.mx_up = None
        if isinstance(r, mxc.Exchanged):
            self.peer_metadata[side] = r.peer
            return r.leftover
        return r.data

    def _to_upstream(self, data: bytes) -> None:
        up = self.up
        if up is not None and up.transport is not None:
            up.transport.write(data)
            return
        buf = self.buffer
        if buf is not None:
            buf.append(data)
            if sum(len(b) for b in buf) > self.rt.buffer_limit:
                self.pause_reading()

    def eof_received(self) -> bool:
        if self.mx_down is not None:
            rest = self._mx_read(0, b"", True)
            if rest:
                self._to_upstream(rest)
        self.down_eof = True
        up = self.up
        if up is not None and up.transport is not None and up.transport.can_write_eof():
            up.transport.write_eof()
        if self.up_eof:
            self.close()
            return False
        t = self.transport
        return t is None or t.get_extra_info("ssl_object") is None  # TLS cannot half-close (see above)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.alog is not None:
            access_log_emit.log_tcp(self, self.rt.loop.time())
        if self.owner is not None:
            self.owner.discard(self)
        up = self.up
        if up is not None and up.transport is not None and not up.transport.is_closing():
            # Envoy flushes what it already read from the downstream before closing upstream.
            up.transport.close()

    def pause_writing(self) -> None:
        up = self.up
        if up is not None and up.transport is not None and not self.up_paused:
            self.up_paused = True
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        up = self.up
        if up is not None and up.transport is not None and self.up_paused:
            self.up_paused = False
            up.transport.resume_reading()

    # -- from the upstream ------------------------------------------------------------------------
    def from_upstream(self, data: bytes) -> None:
        self.rt.stats.downstream_cx_tx_bytes_total += len(data)
        if self.alog is not None:
            self.alog.tx += len(data)
        self.last = self.rt.loop.time()
        if self.mx_up is not None:
            data = self._mx_read(1, data, False)
            if not data:
                return
        t = self.transport
        if t is not None and not self.closed:
            t.write(data)

    def upstream_eof(self) -> None:
        if self.mx_up is not None:
            rest = self._mx_read(1, b"", True)
            if rest and self.transport is not None and not self.closed:
                self.transport.write(rest)
        self.up_eof = True
        t = self.transport
        if t is not None and not self.closed and t.can_write_eof():
            t.write_eof()
        if self.down_eof:
            self.close()

    def upstream_lost(self) -> None:
        host = self.host
        if host is not None and self.up is not None:
            host.cluster.stats.upstream_cx_active -= 1
            host.cx_active -= 1
            host.cluster.stats.upstream_cx_destroy += 1
        self.up = None
        self.close()

    # -- helpers ---------------------------------------------------------------------------------------
    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def drain(self) -> None:
        # Envoy's tcp_proxy does not cut established connections on drain; they end on their own or
        # when the process exits after --drain-time-s.
        return

    def _check_idle(self) -> None:
        self.idle_timer = None
        if self.closed:
            return
        rt = self.rt
        timeout = rt.cfg.idle_timeout
        left = self.last + timeout - rt.loop.time()
        if left > 0:
            self.idle_timer = rt.loop.call_later(left, self._check_idle)
            return
        rt.stats.idle_timeout += 1
        self.close()
        up = self.up
        if up is not None and up.transport is not None:
            up.transport.close()

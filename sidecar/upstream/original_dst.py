"""The two cluster features traffic capture needs: ORIGINAL_DST clusters and upstream_bind_config.

ORIGINAL_DST (Istio's PassthroughCluster and InboundPassthroughCluster): the host is the
downstream connection's original destination, made on first use and dropped when idle.

Envoy's OriginalDstCluster::LoadBalancer::chooseHost, in its order: the request header named by
original_dst_lb_config (x-envoy-original-dst-host, only with use_http_header; an unparsable value
counts original_dst_host_invalid and falls through), else the downstream connection's local address
when the original_dst listener filter restored it, else no host (tcp_proxy closes, the router answers
503 no healthy upstream).  upstream_port_override replaces the port.  Every cleanup_interval, hosts
not picked since the previous sweep and with no connection or request in flight are removed.

What a caller passes as `dest` is the downstream's restored original destination: the listener
manager sets `original_dst` (a SocketAddress, None when nothing was restored, and None as well when
that destination is the capturing listener itself, so a connection to the capture port is refused
rather than looped back into it).

upstream_bind_config.source_address: `source_address(cluster, dest)` is the `local_addr` to give
create_connection (Istio binds inbound passthrough connections to 127.0.0.6 so that its iptables
rules let them through to the app); an address of the other family than the destination is not
used (the bind could only fail)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from sidecar.model.cluster import Cluster, OriginalDstConfig
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.observe.stats import Stats

if TYPE_CHECKING:
    import asyncio

    from sidecar.upstream.cluster_manager import ClusterState, Host


def source_address(cluster: Cluster, dest: SocketAddress) -> tuple[str, int] | None:
    """The local address to bind before connecting to `dest`, or None (the kernel chooses)."""
    bind = cluster.upstream_bind_address
    if bind is None or dest.pipe or (":" in bind.host) != (":" in dest.host):
        return None
    return bind.host, bind.port


def parse_host_port(value: bytes) -> SocketAddress | None:
    """`1.2.3.4:80` or `[::1]:80` (Envoy's parseInternetAddressAndPortNoThrow, v6only=false), with
    the address normalised; None otherwise."""
    try:
        text = value.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            return None
        try:
            ip = str(ipaddress.IPv6Address(host))
        except ValueError:
            return None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            return None
        try:
            ip = str(ipaddress.IPv4Address(host))
        except ValueError:
            return None
    if not port.isdigit() or len(port) > 5 or int(port) > 65535:
        return None
    return SocketAddress(ip, int(port))


class OriginalDstHosts:
    """The hosts of one ORIGINAL_DST cluster in this worker, by destination."""

    __slots__ = ("cfg", "cluster", "hosts", "invalid", "loop", "timer", "used")

    def __init__(self, cluster: ClusterState, cfg: OriginalDstConfig, stats: Stats, loop: asyncio.AbstractEventLoop) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.loop = loop
        self.hosts: dict[SocketAddress, Host] = {}
        self.used: set[SocketAddress] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.invalid = stats.counter(f"cluster.{cluster.name}.original_dst_host_invalid")

    @property
    def header(self) -> bytes | None:
        """The request header the router must pass to `pick` (None: headers are not consulted)."""
        return self.cfg.http_header_name if self.cfg.use_http_header else None

    def pick(self, dest: SocketAddress | None, header_value: bytes | None = None) -> Host | None:
        addr = None
        if header_value is not None and self.cfg.use_http_header:
            addr = parse_host_port(header_value)
            if addr is None:
                self.invalid.inc()
        if addr is None:
            addr = dest
        if addr is None or addr.pipe:
            return None
        if self.cfg.upstream_port_override:
            addr = SocketAddress(addr.host, self.cfg.upstream_port_override)
        self.used.add(addr)
        host = self.hosts.get(addr)
        if host is None:
            host = self._add(addr)
        return host

    def _add(self, addr: SocketAddress) -> Host:
        from sidecar.upstream.cluster_manager import Host  # cluster_manager imports this module

        cluster = self.cluster
        host = Host(cluster, Endpoint(addr), self.loop)
        self.hosts[addr] = host
        self._publish()
        if self.timer is None:
            self.timer = self.loop.call_later(self.cfg.cleanup_interval, self._sweep)
        return host

    def _publish(self) -> None:
        """The host list /clusters shows, and the membership gauges (every such host is healthy)."""
        cluster = self.cluster
        cluster.hosts = tuple(self.hosts.values())
        cluster.stats.membership_total = cluster.stats.membership_healthy = len(self.hosts)

    def _sweep(self) -> None:
        self.timer = None
        used = self.used
        self.used = set()
        gone = [
            a for a, h in self.hosts.items() if a not in used and not h.cx_active and not h.rq_active
        ]
        for a in gone:
            self.hosts.pop(a).pool.close()
        if gone:
            self._publish()
        if self.hosts:
            self.timer = self.loop.call_later(self.cfg.cleanup_interval, self._sweep)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

"""The original destination of a captured connection, and the socket options capture needs.

REDIRECT (iptables nat): the kernel rewrote the destination, conntrack remembers it, and
getsockopt(SOL_IP, SO_ORIGINAL_DST) (IPv4) or getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) (IPv6; both
option numbers are 80) returns it as a sockaddr_in / sockaddr_in6.  TPROXY (mangle, `transparent: true`
listeners): the destination was never rewritten, so the accepted socket's own local address is the
original destination.  Envoy's Utility::getOriginalDst asks SO_ORIGINAL_DST first and falls back to
the local address only when that fails on a transparent socket; so do we.

The sockaddr parsing is pure (`parse_sockaddr`) and unit-tested; the rest are thin getsockopt /
setsockopt calls."""

from __future__ import annotations

import ipaddress
import socket

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
SOL_IP = 0
SOL_IPV6 = 41
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
IP_FREEBIND = 15
IPV6_FREEBIND = 78
_SOCKADDR_IN6_LEN = 28


def parse_sockaddr(raw: bytes) -> tuple[str, int] | None:
    """(ip, port) from a struct sockaddr_in (family, port, 4-byte address) or sockaddr_in6 (family,
    port, flowinfo, 16-byte address, scope id); None for anything else.  The family is host byte
    order (little-endian on the machines we run on), port and address network order."""
    if len(raw) < 2:
        return None
    family = int.from_bytes(raw[:2], "little")
    if family == socket.AF_INET and len(raw) >= 8:
        return str(ipaddress.IPv4Address(raw[4:8])), int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET6 and len(raw) >= 24:
        ip = ipaddress.IPv6Address(raw[8:24])
        return str(ip), int.from_bytes(raw[2:4], "big")
    return None


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """The connection's original destination, or None when there is none to restore (not an IP
    socket, not tracked by conntrack, and not a transparent socket)."""
    family = sock.family
    if family == socket.AF_INET:
        level, opt, tp = SOL_IP, SO_ORIGINAL_DST, IP_TRANSPARENT
    elif family == socket.AF_INET6:
        level, opt, tp = SOL_IPV6, IP6T_SO_ORIGINAL_DST, IPV6_TRANSPARENT
    else:
        return None
    try:
        return parse_sockaddr(sock.getsockopt(level, opt, _SOCKADDR_IN6_LEN))
    except OSError:
        pass
    try:
        transparent = sock.getsockopt(level, tp)
    except OSError:
        return None
    if not transparent:
        return None
    local = sock.getsockname()
    return str(local[0]), int(local[1])


def set_capture_options(sock: socket.socket, transparent: bool, freebind: bool) -> None:
    """Listener.transparent (IP_TRANSPARENT: accept connections for any destination TPROXY sends
    here, needs CAP_NET_ADMIN) and Listener.freebind (bind an address not yet configured), set on the
    listening socket before bind as Envoy does."""
    v6 = sock.family == socket.AF_INET6
    if transparent:
        sock.setsockopt(SOL_IPV6 if v6 else SOL_IP, IPV6_TRANSPARENT if v6 else IP_TRANSPARENT, 1)
    if freebind:
        sock.setsockopt(SOL_IPV6 if v6 else SOL_IP, IPV6_FREEBIND if v6 else IP_FREEBIND, 1)

"""Free loopback TCP ports for test servers and proxies.

Ports come from 20000-32767, below Linux's default ephemeral range (32768-60999), so that the
kernel never hands one of them to an outgoing client socket between our check and the proxy's bind.
Each process starts at a random offset and walks forward, and never hands out the same port twice,
which keeps parallel pytest-xdist workers (and other test runs on the same machine) apart.  A port is
only offered after a trial bind on 127.0.0.1 succeeds; the caller should still be ready for a lost
race (see `tests.support.proxy.ProxyProcess`, which retries a start that failed to bind)."""

from __future__ import annotations

import fcntl
import os
import random
import socket
import struct
import threading

_LOW, _HIGH = 20000, 32767
_lock = threading.Lock()
_given: set[int] = set()
_cursor = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little")).randrange(_LOW, _HIGH)


def _bindable(port: int, host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nobody is bound to now and that this process has not handed out."""
    global _cursor
    with _lock:
        for _ in range(_HIGH - _LOW):  # bounded: at most one pass over the range
            port = _cursor
            _cursor = _LOW if _cursor >= _HIGH else _cursor + 1
            if port not in _given and _bindable(port, host):
                _given.add(port)
                return port
    raise RuntimeError(f"no free port in {_LOW}-{_HIGH} on {host}")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    return [free_port(host) for _ in range(count)]


def closed_port(host: str = "127.0.0.1") -> int:
    """A port with no listener: connecting to it is refused (for 'connection failure' cases)."""
    return free_port(host)


def first_non_loopback_ipv4() -> str:
    """The first IPv4 address of the first interface (in kernel order) that is not loopback, or
    127.0.0.1 if there is none.  Envoy calls this its local address (Network::Utility::getLocalAddress)
    and appends it to x-forwarded-for, instead of 127.0.0.1, for clients on loopback."""
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on this interface
            addr = socket.inet_ntoa(packed[20:24])
            if not addr.startswith("127."):
                return addr
    return "127.0.0.1"

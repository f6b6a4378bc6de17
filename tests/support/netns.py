"""Throw-away Linux network namespaces for e2e tests (needs root, `ip` from iproute2, `setpriv`).

    from tests.support import netns

    with netns.namespace() as ns:                     # a fresh namespace, lo up
        ns.run("iptables-save")                       # a command inside it (CompletedProcess, text)
        ns.run("id", "-u", user=1337)                 # ... as another uid/gid (setpriv)
        ns.python("print(1)", user=1337)              # python -I -c CODE inside it
        proc = ns.popen("sleep", "5")                 # a background process, killed at exit
        srv = ns.socket()                             # a socket that lives in the namespace; use it
        srv.bind(("127.0.0.1", 0))                    # from this process, any thread
        ns.call(lambda: socket.getaddrinfo(...))      # any callable, run on a thread inside it

    with netns.pod_and_remote() as pair:              # two namespaces joined by a veth pair "eth0"
        pair.pod, pair.remote                         # NetNS objects
        pair.pod_ip, pair.remote_ip                   # 10.201.0.1 / 10.201.0.2 (/24), and
        pair.pod_ip6, pair.remote_ip6                 # fd00:201::1 / fd00:201::2 (/64, no DAD)
        srv = netns.listener(pair.pod, "0.0.0.0", 15001)   # a listening socket in the pod (1 s timeout)
        conn, _ = srv.accept()
        netns.original_dst(conn)                      # ("10.201.0.2", 80): where the app was going

    veth(a, b, "10.202.0.1/24", "10.202.0.2/24")       # more links between namespaces of your own

Names are unique per process and call, so tests may run in parallel (xdist).  Everything is torn
down at exit, even after a failure: tracked processes are killed, then the namespaces deleted (which
removes their interfaces).  IPv6 duplicate address detection is off in these namespaces and
`pod_and_remote` waits until link-local set-up is done, so addresses and routes are stable when a
test starts.  `original_dst(sock)` reads the pre-NAT destination of a REDIRECTed connection
(SO_ORIGINAL_DST), for listeners standing in for the proxy.  pytest fixtures built on this live in
tests/e2e/conftest.py (`pair`, `sidecar_init`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SO_ORIGINAL_DST = 80
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


class NetNS:
    """One named namespace (`ip netns add`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"
        self._procs: list[subprocess.Popen[Any]] = []
        self._sockets: list[socket.socket] = []

    def _argv(
        self, argv: tuple[str, ...], user: int | None, group: int | None, read_all: bool = False
    ) -> list[str]:
        prefix = ["ip", "netns", "exec", self.name]
        if user is not None:
            gid = user if group is None else group
            prefix += ["setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups"]
            if read_all:
                # CAP_DAC_READ_SEARCH only: the process may read the checkout and its venv wherever
                # they are (a `mktemp -d` clone is 0700), and is still that uid for netfilter's owner
                # match, which is what these tests are about.
                prefix += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
            prefix.append("--")
        return [*prefix, *argv]

    def run(
        self,
        *argv: str,
        user: int | None = None,
        group: int | None = None,
        input: str | None = None,
        timeout: float = 15.0,
        check: bool = True,
        env: dict[str, str] | None = None,
        read_all: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace; check=True raises with its stderr on failure."""
        done = subprocess.run(
            self._argv(argv, user, group, read_all),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} in {self.name} -> {done.returncode}\n{done.stdout}{done.stderr}"
            )
        return done

    def popen(
        self, *argv: str, user: int | None = None, group: int | None = None, read_all: bool = False, **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start a background process inside the namespace; it is killed when the namespace goes."""
        proc = subprocess.Popen(self._argv(argv, user, group, read_all), **kw)
        self._procs.append(proc)
        return proc

    def python(
        self,
        code: str,
        *args: str,
        user: int | None = None,
        timeout: float = 15.0,
        check: bool = True,
        read_all: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """`python -I -c code args...` inside the namespace (the test interpreter, stdlib only)."""
        return self.run(
            sys.executable, "-I", "-c", code, *args, user=user, timeout=timeout, check=check, read_all=read_all
        )

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn on a fresh thread that has joined the namespace (setns is per thread), return its
        result.  Sockets created there stay in the namespace when used from other threads."""
        box: dict[str, Any] = {}

        def body() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {self.path}")
                finally:
                    os.close(fd)
                box["value"] = fn()
            except BaseException as err:  # handed to the caller below
                box["error"] = err

        thread = threading.Thread(target=body, name=f"netns-{self.name}")
        thread.start()
        thread.join(timeout=30)
        if "error" in box:
            raise box["error"]
        if "value" not in box:
            raise TimeoutError(f"call in {self.name} did not finish")
        return box["value"]  # type: ignore[no-any-return]

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket created inside the namespace (closed when the namespace goes)."""
        sock = self.call(lambda: socket.socket(family, type))
        self._sockets.append(sock)
        return sock

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False, timeout=15)


@contextlib.contextmanager
def namespace(prefix: str = "sct") -> Iterator[NetNS]:
    """A new namespace with lo up; deleted (with everything in it) on exit."""
    name = f"{prefix}-{os.getpid()}-{next(_counter)}-{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=15)
    ns = NetNS(name)
    try:
        # No duplicate address detection: IPv6 addresses (link-local ones too) are usable at once.
        ns.run("sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        ns.close()


def veth(a: NetNS, b: NetNS, a_cidr: str, b_cidr: str, a_if: str = "eth0", b_if: str = "eth0") -> None:
    """Join a and b with a veth pair created directly inside them, addressed and up.
    IPv6 addresses are added without duplicate address detection, so they work at once."""
    subprocess.run(
        ["ip", "link", "add", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if, "netns", b.name],
        check=True,
        capture_output=True,
        timeout=15,
    )
    for ns, ifname, cidr in ((a, a_if, a_cidr), (b, b_if, b_cidr)):
        _address(ns, ifname, cidr)
        ns.run("ip", "link", "set", ifname, "up")


def _settle(ns: NetNS, ifname: str) -> None:
    """Wait (bounded) until the kernel has finished the interface's IPv6 link-local set-up, so that
    addresses and routes no longer change under a test that compares them."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        addrs = ns.run("ip", "-6", "addr", "show", "dev", ifname).stdout
        local = ns.run("ip", "-6", "route", "show", "table", "local", "dev", ifname).stdout
        if "fe80::" in addrs and "tentative" not in addrs and "local fe80::" in local:
            return
        time.sleep(0.02)
    raise TimeoutError(f"IPv6 on {ifname} in {ns.name} did not settle")


def _address(ns: NetNS, ifname: str, cidr: str) -> None:
    extra = ["nodad"] if ipaddress.ip_interface(cidr).version == 6 else []
    ns.run("ip", "addr", "add", cidr, "dev", ifname, *extra)


@dataclass(frozen=True)
class Pair:
    pod: NetNS
    remote: NetNS
    pod_ip: str = "10.201.0.1"
    remote_ip: str = "10.201.0.2"
    pod_ip6: str = "fd00:201::1"
    remote_ip6: str = "fd00:201::2"


@contextlib.contextmanager
def pod_and_remote(ipv6: bool = True) -> Iterator[Pair]:
    """A "pod" and a "remote" namespace, each with eth0 on 10.201.0.0/24 (and fd00:201::/64)."""
    with namespace("scpod") as pod, namespace("screm") as remote:
        pair = Pair(pod, remote)
        veth(pod, remote, f"{pair.pod_ip}/24", f"{pair.remote_ip}/24")
        if ipv6:
            _address(pod, "eth0", f"{pair.pod_ip6}/64")
            _address(remote, "eth0", f"{pair.remote_ip6}/64")
        for ns in (pod, remote):
            _settle(ns, "eth0")
        yield pair


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """Where a REDIRECTed (NAT) connection was going: netfilter's SO_ORIGINAL_DST, IPv4 or IPv6."""
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)  # struct sockaddr_in6
        return str(ipaddress.IPv6Address(raw[8:24])), struct.unpack_from("!H", raw, 2)[0]
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)  # struct sockaddr_in
    return socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0]


def listener(ns: NetNS, host: str, port: int, *, transparent: bool = False) -> socket.socket:
    """A listening TCP socket inside ns (SO_REUSEADDR; IP_TRANSPARENT for TPROXY), 1 s accept timeout."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = ns.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if transparent:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, 75, 1)  # IPV6_TRANSPARENT (linux/in6.h)
        else:
            sock.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT (linux/in.h)
    sock.bind((host, port))
    sock.listen(16)
    sock.settimeout(1.0)
    return sock

"""Real SO_ORIGINAL_DST: a throwaway network namespace with hand-written REDIRECT rules, the sidecar's
listener and cluster managers running in it (on a thread that joined the namespace with setns), and
clients and upstreams in it too.

Covered: hand-off from the capturing listener (use_original_dst) to the `bind_to_port: false`
listener for the original destination, exact `ip:port` before `0.0.0.0:port`, the target's own
listener filters; the PassthroughCluster (ORIGINAL_DST) for destinations without a listener, IPv4 and
IPv6; the InboundPassthroughCluster binding 127.0.0.6; a connection to the capture port itself
refused rather than looped; and, in a namespace without NAT, a transparent listener taking the
socket's local address as the original destination (TPROXY)."""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import uvloop
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format

from sidecar.listener.manager import ListenerManager, make_socket
from sidecar.model.listener import Listener
from sidecar.observe.stats import Stats
from sidecar.translate.cds import translate_cluster
from sidecar.translate.common import preload_types
from sidecar.translate.lds import translate_listener
from sidecar.upstream.cluster_manager import ClusterManager
from tests.integration.test_capture_chains import HCM, LF, Recorder, tcp_chain

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_names = itertools.count()


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=20)


class Netns:
    """A network namespace that exists for one test; deleted in close()."""

    def __init__(self, *setup: tuple[str, ...]) -> None:
        self.name = f"sc-cap-{os.getpid()}-{next(_names)}"
        sh("ip", "netns", "add", self.name)
        try:
            sh("ip", "-n", self.name, "link", "set", "lo", "up")
            for argv in setup:
                sh("ip", "netns", "exec", self.name, *argv)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)


class NetnsLoop:
    """A uvloop event loop on a thread that joined `ns`: every socket made on it lives there."""

    def __init__(self, ns: Netns) -> None:
        self.loop = uvloop.new_event_loop()
        self.servers: list[Recorder] = []
        self.sidecars: list[Sidecar] = []
        self._error: BaseException | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ns.name, ready), name=ns.name, daemon=True)
        self._thread.start()
        ready.wait(10)
        if self._error is not None:
            raise self._error

    def _run(self, ns: str, ready: threading.Event) -> None:
        try:
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            finally:
                os.close(fd)
        except BaseException as e:
            self._error = e
            ready.set()
            return
        asyncio.set_event_loop(self.loop)
        ready.set()
        try:
            self.loop.run_forever()
        finally:
            # Closed here, on its own thread: a handle left open would otherwise hang the caller.
            self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, sc: Sidecar) -> None:
        self.sidecars.append(sc)
        self.call(sc.start())

    def recorder(self, name: str, host: str = "127.0.0.1", port: int = 0, http: bool = False) -> Recorder:
        r = self.call(Recorder(name, http=http).start(host, port))
        self.servers.append(r)
        return r

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            for sc in self.sidecars:
                self.call(sc.stop())
            for r in self.servers:
                self.call(r.stop())
            self.call(cancel_all())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


class Sidecar:
    """The listener and cluster managers of one worker, built from Envoy config dicts."""

    def __init__(self, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> None:
        self.listeners: list[Listener] = []
        for i, d in enumerate(listeners):
            preload_types(d)
            self.listeners.append(translate_listener(json_format.ParseDict(d, listener_pb2.Listener()), f"l[{i}]"))
        self.clusters = {
            d["name"]: translate_cluster(json_format.ParseDict(d, cluster_pb2.Cluster()), f"c[{i}]")
            for i, d in enumerate(clusters)
        }
        self.stats = Stats()
        self.lm: ListenerManager | None = None
        self.cm: ClusterManager | None = None

    async def start(self) -> Sidecar:
        loop = asyncio.get_running_loop()
        self.cm = ClusterManager(self.stats, loop)
        self.cm.update(self.clusters)
        self.lm = ListenerManager(loop, self.cm, self.stats)
        bound = [(lst, make_socket(lst)) for lst in self.listeners if lst.bind_to_port]
        await self.lm.start(bound, unbound=[lst for lst in self.listeners if not lst.bind_to_port])
        return self

    async def stop(self) -> None:
        if self.lm is not None and self.cm is not None:
            self.lm.stop_accepting()
            self.lm.close_all()
            self.cm.close()
            self.lm = self.cm = None

    def stat(self, name: str) -> int:
        return self.stats.value(name)


def listener(name: str, host: str, port: int, **fields: Any) -> dict[str, Any]:
    return {"name": name, "address": {"socket_address": {"address": host, "port_value": port}}, **fields}


def to(name: str, port: int, host: str = "127.0.0.1", **extra: Any) -> dict[str, Any]:
    addr = {"socket_address": {"address": host, "port_value": port}}
    return {
        "name": name,
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr}}]}]},
        **extra,
    }


def passthrough(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "2s", **extra}


async def first_line(dst: str, port: int, src: str, send: bytes = b"") -> bytes:
    """Connect from `src`, send `send`, return the first line the far end writes (b"" if closed)."""
    reader, writer = await asyncio.open_connection(dst, port, local_addr=(src, 0))
    try:
        if send:
            writer.write(send)
        try:
            return (await asyncio.wait_for(reader.readline(), 5)).rstrip(b"\n")
        except ConnectionError:
            return b""
    finally:
        writer.close()


ORIGINAL_DST_FILTER = {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": LF + "original_dst.v3.OriginalDst"}}


@pytest.fixture
def ns() -> Iterator[Netns]:
    n = Netns(
        ("ip", "addr", "add", "fd00::5/128", "dev", "lo", "nodad"),
        ("ip", "addr", "add", "fd00::9/128", "dev", "lo", "nodad"),
        # The "app" (sources 127.0.0.5, fd00::5) is captured to 15001; 127.0.0.7 plays inbound traffic
        # captured to 15006.  The sidecar's own connections (other sources) are not.
        ("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", "127.0.0.5", "-j", "REDIRECT", "--to-ports", "15001"),
        ("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", "127.0.0.7", "-j", "REDIRECT", "--to-ports", "15006"),
        ("ip6tables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", "fd00::5", "-j", "REDIRECT", "--to-ports", "15001"),
    )
    yield n
    n.close()


def test_redirected_connections_are_handed_off_or_passed_through(ns: Netns) -> None:
    nl = NetnsLoop(ns)
    try:
        ups = {
            "svc8080": nl.recorder("svc8080"),
            "exact8081": nl.recorder("exact8081"),
            "http8082": nl.recorder("http8082"),
            "tcp8082": nl.recorder("tcp8082"),
            "direct": nl.recorder("direct", "127.0.0.11", 8083),
            "direct6": nl.recorder("direct6", "fd00::9", 8084),
            "inbound": nl.recorder("inbound", "127.0.0.12", 8085),
        }
        http_inspector = {"name": "http", "typed_config": {"@type": LF + "http_inspector.v3.HttpInspector"}}
        sc = Sidecar(
            [
                listener("virtualOutbound", "0.0.0.0", 15001, use_original_dst=True, default_filter_chain=tcp_chain("pass", "PassthroughCluster")),
                listener("virtualOutbound6", "::", 15001, use_original_dst=True, default_filter_chain=tcp_chain("pass6", "PassthroughCluster")),
                listener("virtualInbound", "0.0.0.0", 15006, listener_filters=[ORIGINAL_DST_FILTER], default_filter_chain=tcp_chain("in", "InboundPassthroughCluster")),
                listener("0.0.0.0_8080", "0.0.0.0", 8080, bind_to_port=False, filter_chains=[tcp_chain("svc", "svc8080")]),
                listener("[::]_8088", "::", 8088, bind_to_port=False, filter_chains=[tcp_chain("svc6", "svc8080")]),
                listener("0.0.0.0_8081", "0.0.0.0", 8081, bind_to_port=False, filter_chains=[tcp_chain("wild", "svc8080")]),
                listener("127.0.0.10_8081", "127.0.0.10", 8081, bind_to_port=False, filter_chains=[tcp_chain("exact", "exact8081")]),
                listener(
                    "0.0.0.0_8082",
                    "0.0.0.0",
                    8082,
                    bind_to_port=False,
                    listener_filters=[http_inspector],
                    filter_chains=[tcp_chain("h", "http8082", application_protocols=["http/1.1"]), tcp_chain("t", "tcp8082")],
                ),
            ],
            [
                *(to(n, ups[n].port) for n in ("svc8080", "exact8081", "http8082", "tcp8082")),
                passthrough("PassthroughCluster"),
                passthrough("InboundPassthroughCluster", upstream_bind_config={"source_address": {"address": "127.0.0.6", "port_value": 0}}),
            ],
        )
        nl.start(sc)
        app, app6 = "127.0.0.5", "fd00::5"
        # 0.0.0.0:8080 takes any destination IP on port 8080.
        assert nl.call(first_line("127.0.0.9", 8080, app)) == b"svc8080"
        # The exact 127.0.0.10:8081 listener before 0.0.0.0:8081.
        assert nl.call(first_line("127.0.0.10", 8081, app)) == b"exact8081"
        assert nl.call(first_line("127.0.0.99", 8081, app)) == b"svc8080"
        # The target's own listener filters run: the http_inspector picks its chain.
        assert nl.call(first_line("127.0.0.9", 8082, app, b"GET / HTTP/1.1\r\n")) == b"http8082"
        assert nl.call(first_line("127.0.0.9", 8082, app, b"\x00binary\n")) == b"tcp8082"
        # No listener for 127.0.0.11:8083: 15001's own chain, the PassthroughCluster to the
        # original destination (IPv4, then IPv6 through the [::]:15001 listener).
        assert nl.call(first_line("127.0.0.11", 8083, app)) == b"direct"
        assert nl.call(first_line("fd00::9", 8084, app6)) == b"direct6"
        # IPv6 hand-off to the [::]:8088 listener.
        assert nl.call(first_line("fd00::9", 8088, app6)) == b"svc8080"
        # Inbound: 15006's InboundPassthroughCluster, from 127.0.0.6.
        assert nl.call(first_line("127.0.0.12", 8085, "127.0.0.7")) == b"inbound"
        assert ups["inbound"].peers[0][0] == "127.0.0.6"
        # Handed-off connections count on the listener that serves them.
        assert sc.stat("listener.0.0.0.0_15001.downstream_cx_total") == 1
        assert sc.stat("listener.[__]_15001.downstream_cx_total") == 1
        assert sc.stat("listener.0.0.0.0_8080.downstream_cx_total") == 1
        assert sc.stat("listener.0.0.0.0_8082.downstream_cx_total") == 2
        assert sc.stat("http_inspector.http11_found") == 1
        # A connection to the capture port itself (not redirected: its original destination is
        # 15001) is refused, not passed through into 15001 again and again.
        before = sc.stat("cluster.PassthroughCluster.upstream_cx_total")
        assert nl.call(first_line("127.0.0.1", 15001, "127.0.0.1")) == b""
        assert sc.stat("cluster.PassthroughCluster.upstream_cx_total") == before
        assert sc.stat("cluster.PassthroughCluster.upstream_cx_none_healthy") == 1
        assert sc.stat("listener.0.0.0.0_15001.downstream_cx_total") == 2
    finally:
        nl.close()


def test_http_original_dst_with_header(ns: Netns) -> None:
    nl = NetnsLoop(ns)
    try:
        target = nl.recorder("target", "127.0.0.13", 8087, http=True)
        hcm = {
            "@type": HCM,
            "stat_prefix": "out",
            "http_filters": [{"name": "router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "PassthroughHeader"}}]}]},
        }
        sc = Sidecar(
            [
                listener("virtualOutbound", "0.0.0.0", 15001, use_original_dst=True, default_filter_chain=tcp_chain("pass", "PassthroughCluster")),
                listener("0.0.0.0_8086", "0.0.0.0", 8086, bind_to_port=False, filter_chains=[{"filters": [{"name": "hcm", "typed_config": hcm}]}]),
            ],
            [passthrough("PassthroughCluster"), passthrough("PassthroughHeader", original_dst_lb_config={"use_http_header": True})],
        )
        nl.start(sc)
        request = b"GET / HTTP/1.1\r\nhost: x\r\nx-envoy-original-dst-host: 127.0.0.13:8087\r\n\r\n"
        assert nl.call(first_line("127.0.0.9", 8086, "127.0.0.5", request)) == b"HTTP/1.1 200 OK\r"
        assert target.wait(1, 2.0)
        assert target.received[0].startswith(b"GET / HTTP/1.1\r\n")
    finally:
        nl.close()


def test_transparent_listener_uses_the_local_address() -> None:
    """No NAT in this namespace, so conntrack has nothing to say (SO_ORIGINAL_DST fails): a
    transparent listener's socket's local address is the original destination (TPROXY's case)."""
    ns = Netns()
    try:
        nl = NetnsLoop(ns)
    except BaseException:
        ns.close()
        raise
    try:
        ups = {n: nl.recorder(n) for n in ("handed", "own", "own-plain")}
        sc = Sidecar(
            [
                listener("tproxy", "0.0.0.0", 15006, transparent=True, use_original_dst=True, default_filter_chain=tcp_chain("own", "own")),
                listener("plain", "0.0.0.0", 15007, use_original_dst=True, default_filter_chain=tcp_chain("own-plain", "own-plain")),
                listener("127.0.0.20_15006", "127.0.0.20", 15006, bind_to_port=False, filter_chains=[tcp_chain("h", "handed")]),
                listener("127.0.0.20_15007", "127.0.0.20", 15007, bind_to_port=False, filter_chains=[tcp_chain("h2", "handed")]),
            ],
            [to(n, u.port) for n, u in ups.items()],
        )
        nl.start(sc)
        assert nl.call(first_line("127.0.0.20", 15006, "127.0.0.1")) == b"handed"
        # Not transparent and nothing restored: no hand-off, the listener's own chain.
        assert nl.call(first_line("127.0.0.20", 15007, "127.0.0.1")) == b"own-plain"
    finally:
        try:
            nl.close()
        finally:
            ns.close()

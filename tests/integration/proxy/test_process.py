"""The sidecar as a process: validate mode, worker processes, drain on SIGTERM, big bodies.

These run the real `sidecar` binary on loopback with tests/support; what they check is process-level
behaviour that a differential test against Envoy cannot (memory bounds, our own drain contract)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.http1 import Client, request
from tests.support.loop_thread import LoopThread
from tests.support.ports import free_port
from tests.support.proxy import binary, render, start_proxy
from tests.support.upstream import Behaviour, Upstreams

BOOTSTRAP = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {admin_port}}}
static_resources:
  listeners:
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: {http_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: app, timeout: 0s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: {tcp_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: app
  clusters:
  - name: app
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {app_port}}}}
"""

pytestmark = pytest.mark.timeout(120)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bootstrap.yaml"
    p.write_text(text)
    return p


def test_validate_mode_accepts_a_good_bootstrap_and_binds_nothing(tmp_path: Path) -> None:
    text, _ = render(BOOTSTRAP)
    p = _write(tmp_path, text)
    out = subprocess.run([str(binary("sidecar")), "--mode", "validate", "-c", str(p)],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


def test_validate_mode_names_the_field_it_refuses(tmp_path: Path) -> None:
    text, _ = render(BOOTSTRAP)
    text = text.replace("connect_timeout: 1s", "connect_timeout: 1s\n    lrs_server: {ads: {}}")
    p = _write(tmp_path, text)
    out = subprocess.run([str(binary("sidecar")), "--mode", "validate", "-c", str(p)],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 1
    assert "static_resources.clusters[0].lrs_server" in out.stderr


def test_unknown_flag_is_a_usage_error() -> None:
    out = subprocess.run([str(binary("sidecar")), "--no-such-flag"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "--no-such-flag" in out.stderr


@pytest.fixture
def app() -> Upstreams:
    ups = Upstreams(["app"])
    yield ups
    ups.close()


def _start(app: Upstreams, *args: str) -> tuple[object, dict[str, object]]:
    tmpl = BOOTSTRAP.replace("{app_port}", str(app.ports["app_port"]))
    proc, used = start_proxy("sidecar", tmpl)
    if args:
        proc.stop()
        proc.extra_args = args
        proc.start()
    return proc, used


def test_sigterm_lets_an_in_flight_request_finish(app: Upstreams) -> None:
    app["app"].behave(Behaviour(delay=1.0, body=b"slow but whole"))
    proc, used = _start(app)
    try:
        with Client(int(used["http_port"])) as c:
            c.send(request("GET", "/slow"))
            app["app"].wait_for(1, timeout=5)
            os.killpg(proc.proc.pid, signal.SIGTERM)  # type: ignore[attr-defined]
            resp = c.read_response(timeout=10)
            assert resp.status == 200
            assert resp.body == b"slow but whole"
            assert resp.header("connection") == "close"  # drain asks the client to go
        assert proc.proc.wait(10) == 0  # type: ignore[attr-defined]
        with pytest.raises(OSError):
            Client(int(used["http_port"]), timeout=1).send(request())
    finally:
        proc.close()  # type: ignore[attr-defined]


def test_workers_share_the_listener_and_stats_add_up(app: Upstreams) -> None:
    proc, used = _start(app, "--concurrency", "2")
    try:
        pids = subprocess.run(["pgrep", "-P", str(proc.proc.pid)], capture_output=True, text=True)  # type: ignore[attr-defined]
        assert len(pids.stdout.split()) == 1  # one forked worker beside the main process
        n = 40
        for _ in range(n):
            with Client(int(used["http_port"])) as c:  # a new connection each: both workers get some
                c.send(request("GET", "/x"))
                assert c.read_response().status == 200
        # Other workers copy their counters into the shared rows every 0.5 s (observe/stats.py).
        body = ""
        for _ in range(40):
            with Client(int(used["admin_port"])) as c:
                c.send(request("GET", "/stats?filter=http.ingress.downstream_rq_total", host="admin"))
                body = c.read_response().text
            if f"http.ingress.downstream_rq_total: {n}" in body:
                break
            time.sleep(0.1)
        assert f"http.ingress.downstream_rq_total: {n}" in body
    finally:
        proc.close()  # type: ignore[attr-defined]


class _Bulk:
    """A raw upstream for big bodies: it discards request bodies (counting them) or streams a
    response of `size` bytes, without the recording upstream's buffering."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.received = 0
        self.loop = LoopThread()
        self.port = free_port()
        self.loop.call(self._start())

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if head.startswith(b"POST"):
            left = length
            while left:
                chunk = await reader.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
                self.received += len(chunk)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % self.size)
            block = b"x" * (1 << 20)
            left = self.size
            while left:
                n = min(left, len(block))
                writer.write(block[:n])
                left -= n
                await writer.drain()
        await writer.drain()
        writer.close()

    def close(self) -> None:
        self.loop.call(self._stop())
        self.loop.close()

    async def _stop(self) -> None:
        self.server.close()


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(240)
def test_a_gibibyte_each_way_passes_with_bounded_memory() -> None:
    size = 1 << 30
    bulk = _Bulk(size)
    tmpl = BOOTSTRAP.replace("{app_port}", str(bulk.port))
    proc, used = start_proxy("sidecar", tmpl)
    try:
        port = int(used["http_port"])
        # download: the client reads slowly at first, so the proxy must stop reading upstream
        with Client(port, timeout=60) as c:
            c.send(request("GET", "/big"))
            head = c._read_until(b"\r\n\r\n", time.monotonic() + 30, "head")
            assert b"200 OK" in head
            time.sleep(1.0)  # let buffers fill: without backpressure the proxy would hold it all
            got = len(c.buf)
            c.buf.clear()
            c.sock.settimeout(60)
            while got < size:
                data = c.sock.recv(1 << 20)
                assert data, f"closed after {got} bytes"
                got += len(data)
            assert got == size
        # upload: Content-Length body streamed from a thread
        with Client(port, timeout=60) as c:
            c.send(request("POST", "/up", headers=[("Content-Length", str(size))]))
            block = b"y" * (1 << 20)
            for _ in range(size // len(block)):
                c.sock.sendall(block)
            resp = c.read_response(timeout=60)
            assert resp.status == 200
        assert bulk.received == size
        peak = _peak_rss_kib(proc.proc.pid)  # type: ignore[attr-defined]
        assert peak < 200 * 1024, f"peak RSS {peak} KiB"
    finally:
        proc.close()  # type: ignore[attr-defined]
        bulk.close()

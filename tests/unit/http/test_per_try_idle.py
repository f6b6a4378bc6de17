"""retry_policy.per_try_idle_timeout in the router, socket-free: an attempt with no response bytes for
that long is given up and retried (as a per-try timeout); response bytes push the deadline; with
no retry left Envoy's 504 `upstream request timeout` (UT).  A fake clock drives the timers."""

from __future__ import annotations

from typing import Any

import yaml
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from sidecar.http.conn_manager import HcmRuntime
from sidecar.http.filters.router import Router
from sidecar.model.cluster import Cluster
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.model.listener import HttpConnectionManager
from sidecar.translate.rds import translate_route_configuration
from sidecar.upstream.cluster_manager import ClusterManager
from tests.unit.http.h1harness import CLUSTER, FakeLoop, FakeTimer, Wire, _stats, read_responses

ROUTES = f"""
name: pti
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {{prefix: "/"}}
    route:
      cluster: {CLUSTER}
      retry_policy: {{retry_on: "5xx", num_retries: 1, per_try_idle_timeout: 0.2s, retry_back_off: {{base_interval: 0.001s}}}}
"""


class Conn:
    """An upstream connection that takes the request and answers only when told to."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.head_request = False
        self.sent = bytearray()
        self.detached = False

    def send(self, data: bytes) -> None:
        self.sent += data

    def detach(self) -> None:
        self.detached = True
        self.handler = None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


class Pool:
    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.waiting: list[Any] = []

    def acquire(self, handler: Any) -> None:
        conn = Conn(handler)
        self.conns.append(conn)
        handler.on_upstream_ready(conn)

    def cancel_wait(self, handler: Any) -> None:
        return None

    def release(self, conn: Conn) -> None:
        return None

    def close(self) -> None:
        return None


def setup() -> tuple[Wire, Pool, FakeLoop]:
    loop = FakeLoop()
    stats = _stats()
    cm = ClusterManager(stats, loop)  # type: ignore[arg-type]
    cm.update({CLUSTER: Cluster(name=CLUSTER, endpoints=(Endpoint(SocketAddress("127.0.0.1", 9)),))})
    state = cm.get(CLUSTER)
    assert state is not None
    pool = Pool()
    for host in state.hosts:
        host.pool = pool  # type: ignore[assignment]
    pb = json_format.ParseDict(yaml.safe_load(ROUTES), route_pb2.RouteConfiguration())
    cfg = HttpConnectionManager(stat_prefix="t_pti", route_config=translate_route_configuration(pb, "rc"))
    rt = HcmRuntime(cfg, cm, stats, loop, (Router,), 1 << 20)
    w = Wire(rt)
    w.feed(b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n")
    return w, pool, loop


def due(loop: FakeLoop, after: float) -> FakeTimer:
    """The first live timer due after `after` seconds from now (the stream idle timer is 5 min)."""
    live = sorted((t for t in loop.timers if not t.cancelled and t.when >= loop.now), key=lambda t: t.when)
    for t in live:
        if round(t.when - loop.now, 6) >= after:
            return t
    raise AssertionError(f"no timer {after}s ahead: {[t.when - loop.now for t in live]}")


def run(loop: FakeLoop, t: FakeTimer) -> None:
    loop.now = t.when
    t.cancelled = True
    t.callback()


def test_a_silent_attempt_is_retried_then_504() -> None:
    w, pool, loop = setup()
    assert len(pool.conns) == 1
    run(loop, due(loop, 0.2))  # per-try idle: the attempt is given up, a retry backs off
    assert pool.conns[0].detached
    run(loop, due(loop, 0.0))  # the back-off
    assert len(pool.conns) == 2
    run(loop, due(loop, 0.2))  # the retry is silent too, and there is no retry left
    (resp,), _ = read_responses(w.data)
    assert (resp.status, resp.body) == (504, b"upstream request timeout")


def test_response_bytes_push_the_deadline() -> None:
    w, pool, loop = setup()
    timer = due(loop, 0.2)
    # The response head arrives after 0.15 s: the connection's clock moves (pools/http1 does this).
    loop.now += 0.15
    w.conn.last_io = loop.now
    handler = pool.conns[0].handler
    handler.on_upstream_headers(200, [(b"transfer-encoding", b"chunked")])
    run(loop, timer)  # at 0.2 s: not idle for 0.2 s yet, so it looks again at 0.35 s
    assert not pool.conns[0].detached
    again = due(loop, 0.0)
    assert round(again.when - w.conn.last_io, 6) == 0.2
    handler.on_upstream_body(b"part")
    handler.on_upstream_end()
    run(loop, again)  # the response ended: nothing happens
    (resp,), _ = read_responses(w.data)
    assert (resp.status, resp.body) == (200, b"part")

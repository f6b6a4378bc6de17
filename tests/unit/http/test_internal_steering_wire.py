"""An internal request through the real connection manager and router, socket-free (h1harness), on a
connection manager config that has internal_address_config (read with getattr until
model/listener.py carries the field): what reaches the upstream, and the local replies the
steering headers and gRPC requests shape."""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.http.router.v3 import router_pb2

from sidecar.http.conn_manager import HcmRuntime
from sidecar.http.filters.router import Router
from sidecar.model.cluster import Cluster
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.model.listener import HttpConnectionManager, HttpFilterConfig
from sidecar.model.route import InternalAddressConfig
from sidecar.upstream.cluster_manager import ClusterManager
from tests.unit.http.h1harness import (
    CLUSTER,
    FakeLoop,
    FakeUpstream,
    Wire,
    _stats,
    read_responses,
    route_config,
)


class WithInternal:
    """An HttpConnectionManager model plus the internal_address_config the lds hook will add."""

    def __init__(self, cfg: HttpConnectionManager, internal: InternalAddressConfig | None) -> None:
        self._cfg = cfg
        self.internal_address_config = internal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cfg, name)


def runtime(
    internal: InternalAddressConfig | None, respect: bool = False
) -> tuple[HcmRuntime, FakeUpstream, FakeLoop]:
    loop = FakeLoop()
    stats = _stats()
    cm = ClusterManager(stats, loop)  # type: ignore[arg-type]
    up = FakeUpstream()
    cm.update({CLUSTER: Cluster(name=CLUSTER, endpoints=(Endpoint(SocketAddress("127.0.0.1", 9)),))})
    state = cm.get(CLUSTER)
    assert state is not None
    for host in state.hosts:
        host.pool = up  # type: ignore[assignment]
    router = HttpFilterConfig(
        ROUTER, f"type.googleapis.com/{ROUTER}", router_pb2.Router(respect_expected_rq_timeout=respect)
    )
    cfg = HttpConnectionManager(
        stat_prefix="t_internal", route_config=route_config("upstream"), http_filters=(router,)
    )
    rt = HcmRuntime(WithInternal(cfg, internal), cm, stats, loop, (Router,), 1 << 20)  # type: ignore[arg-type]
    return rt, up, loop


ROUTER = "envoy.extensions.filters.http.router.v3.Router"
TRUST_TEN = InternalAddressConfig(cidr_ranges=("10.0.0.0/8",))
STEERING = (
    b"x-envoy-upstream-rq-timeout-ms: 200\r\n"
    b"x-envoy-retry-on: 5xx\r\n"
    b"x-envoy-max-retries: 3\r\n"
    b"x-envoy-hedge-on-per-try-timeout: false\r\n"
    b"x-envoy-ip-tags: t\r\n"
)


def get(xff: bytes, extra: bytes = b"") -> bytes:
    return b"GET /x HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: " + xff + b"\r\n" + extra + b"\r\n"


def upstream_headers(up: FakeUpstream) -> dict[bytes, bytes]:
    assert len(up.received) == 1
    return {k.lower(): v for k, v in up.received[0][2]}


def test_internal_request_is_steered_and_marked() -> None:
    rt, up, _ = runtime(TRUST_TEN)
    Wire(rt, up).feed(get(b"10.1.2.3", STEERING))
    hs = upstream_headers(up)
    assert hs[b"x-envoy-internal"] == b"true"
    assert hs[b"x-envoy-expected-rq-timeout-ms"] == b"200"
    assert hs[b"x-envoy-ip-tags"] == b"t"  # not the router's: it stays
    for consumed in (b"x-envoy-upstream-rq-timeout-ms", b"x-envoy-retry-on", b"x-envoy-max-retries"):
        assert consumed not in hs
    assert b"x-envoy-hedge-on-per-try-timeout" not in hs


def test_external_request_is_not() -> None:
    rt, up, _ = runtime(TRUST_TEN)
    Wire(rt, up).feed(get(b"1.2.3.4", STEERING))
    hs = upstream_headers(up)
    assert b"x-envoy-internal" not in hs and b"x-envoy-ip-tags" not in hs
    assert hs[b"x-envoy-expected-rq-timeout-ms"] == b"15000"


def test_no_internal_address_config_means_no_internal_request() -> None:
    rt, up, _ = runtime(None)
    assert rt.trust is None and not rt.trusting
    Wire(rt, up).feed(get(b"10.1.2.3", STEERING))
    assert b"x-envoy-internal" not in upstream_headers(up)


def _time_out(loop: FakeLoop) -> None:
    """Run the earliest timer, the request's 200 ms route timeout, as if its time had come (the
    connection's stream idle timer, 5 minutes, stays)."""
    first = min((t for t in loop.timers if not t.cancelled), key=lambda t: t.when)
    assert round(first.when - loop.now, 3) == 0.2
    loop.now = first.when
    first.callback()


def test_alt_response_is_an_empty_204() -> None:
    rt, _up, loop = runtime(TRUST_TEN)
    w = Wire(rt)  # the upstream is never pumped: the request waits for it
    w.feed(
        get(
            b"10.1.2.3",
            b"x-envoy-upstream-rq-timeout-ms: 200\r\nx-envoy-upstream-rq-timeout-alt-response: 1\r\n",
        )
    )
    _time_out(loop)
    (resp,), rest = read_responses(w.data)
    assert rest == b""
    assert (resp.status, resp.body) == (204, b"")
    assert resp.header(b"content-length") is None


def test_grpc_request_times_out_as_grpc() -> None:
    rt, _up, loop = runtime(TRUST_TEN)
    w = Wire(rt)
    w.feed(get(b"10.1.2.3", b"content-type: application/grpc\r\nx-envoy-upstream-rq-timeout-ms: 200\r\n"))
    _time_out(loop)
    (resp,), _ = read_responses(w.data)
    assert resp.status == 200
    assert resp.header(b"grpc-status") == b"14"  # UNAVAILABLE, Envoy's map of 504
    assert resp.header(b"grpc-message") == b"upstream request timeout"
    assert resp.header(b"content-type") == b"application/grpc"
    assert resp.header(b"content-length") == b"0"


def test_respect_expected_rq_timeout_takes_the_egress_envoys_value() -> None:
    steering = b"x-envoy-expected-rq-timeout-ms: 777\r\nx-envoy-upstream-rq-timeout-ms: 200\r\n"
    rt, up, loop = runtime(TRUST_TEN, respect=True)
    assert rt.respect_expected
    w = Wire(rt)
    w.feed(get(b"10.1.2.3", steering))
    first = min((t for t in loop.timers if not t.cancelled), key=lambda t: t.when)
    assert round(first.when - loop.now, 3) == 0.777  # the route timeout it armed
    w.up = up
    w.pump()
    hs = upstream_headers(up)
    # The egress Envoy's announcement is the timeout; x-envoy-upstream-rq-timeout-ms is left alone.
    assert hs[b"x-envoy-expected-rq-timeout-ms"] == b"777"
    assert hs[b"x-envoy-upstream-rq-timeout-ms"] == b"200"
    rt, up, _ = runtime(TRUST_TEN)
    Wire(rt, up).feed(get(b"10.1.2.3", steering))
    hs = upstream_headers(up)
    assert hs[b"x-envoy-expected-rq-timeout-ms"] == b"200"
    assert b"x-envoy-upstream-rq-timeout-ms" not in hs

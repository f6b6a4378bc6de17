"""The bootstrap Istio's pilot-agent writes (tests/support/istio_bootstrap.py), run the way pilot-agent
runs Envoy (its flags, the pod's working directory, ADS over ./etc/istio/proxy/XDS), on the sidecar
and on envoy: both accept it, send the node from it, take CDS and LDS over the Unix socket, route
traffic, and serve the two static listeners (15090 Prometheus through the admin, 15021 readiness
through pilot-agent's status port).

Istio's bootstrap has HTTP/2 clusters (xds-grpc, sds-grpc) and a HIGH circuit-breaker threshold;
istiod sends HTTP/2 clusters for grpc ports.  The sidecar loads them; an HTTP/1 request routed to an
HTTP/2 cluster gets a 502 (reset reason: protocol error) until the HTTP/2 upstream codec exists."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2

from tests.support.fake_xds import CLUSTER, LISTENER, FakeXds
from tests.support.http1 import exchange, request
from tests.support.istio_bootstrap import NODE_ID, PILOT_AGENT_ARGS, istio_bootstrap_json
from tests.support.ports import free_port
from tests.support.proxy import ProxyProcess, binary
from tests.support.upstream import Behaviour, Upstreams


@pytest.fixture
def pod_dir() -> Iterator[Path]:
    """The proxy's working directory: short, because pilot-agent's Unix socket paths are relative to
    it and AF_UNIX paths stop at 107 bytes (pytest's tmp_path under xdist gets close)."""
    with tempfile.TemporaryDirectory(prefix="pod-", dir="/tmp") as d:
        yield Path(d)


pytestmark = pytest.mark.timeout(60)


def _static_cluster(name: str, port: int, http2: bool = False) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    c.connect_timeout.seconds = 1
    c.load_assignment.cluster_name = name
    sa = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    sa.address, sa.port_value = "127.0.0.1", port
    if http2:
        opts = hpo_pb2.HttpProtocolOptions()
        opts.explicit_http_config.http2_protocol_options.SetInParent()
        c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Pack(opts)
    return c


def _listener(port: int) -> listener_pb2.Listener:
    lst = listener_pb2.Listener(name=f"127.0.0.1_{port}")
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = port
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="outbound_0.0.0.0_9080")
    # istiod sets tracing on every connection manager; the provider is the bootstrap's zipkin.
    hcm.tracing.random_sampling.value = 1.0
    vh = hcm.route_config.virtual_hosts.add(name="reviews.default.svc.cluster.local:9080", domains=["*"])
    for prefix, cluster in (("/grpc", "outbound|7070||grpc.default.svc.cluster.local"),
                            ("/", "outbound|9080||reviews.default.svc.cluster.local")):
        r = vh.routes.add()
        r.match.prefix = prefix
        r.route.cluster = cluster
    hcm.http_filters.add(name="envoy.filters.http.router").typed_config.Pack(router_pb2.Router())
    lst.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager").typed_config.Pack(hcm)
    return lst


@pytest.mark.parametrize("kind", ["sidecar", "envoy"])
def test_validate_accepts_pilot_agents_bootstrap(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "envoy-rev.json"
    path.write_text(istio_bootstrap_json(admin_port=15000, prometheus_port=15090, status_port=15021, agent_port=15020))
    out = subprocess.run(
        [str(binary(kind)), "--mode", "validate", "-c", str(path), *PILOT_AGENT_ARGS],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]


def _get(port: int, path: str) -> tuple[int, str]:
    resp = exchange(port, request(target=path), 5.0)
    return resp.status, resp.text


@pytest.mark.parametrize("kind", ["sidecar", "envoy"])
async def test_runs_like_under_pilot_agent(kind: str, pod_dir: Path) -> None:
    tmp_path = pod_dir
    (tmp_path / "etc/istio/proxy").mkdir(parents=True)
    fake = FakeXds()
    await fake.start(f"unix:{tmp_path}/etc/istio/proxy/XDS")
    ups = Upstreams(["agent", "reviews"])
    ups["agent"].behave(Behaviour(body=b"agent ready"))
    ups["reviews"].behave(Behaviour(body=b"reviews v1"))
    ports = {"admin_port": free_port(), "prometheus_port": free_port(), "status_port": free_port()}
    text = istio_bootstrap_json(agent_port=ups["agent"].port, **ports)
    # ProxyProcess already passes --concurrency 1, -l warning and --disable-hot-restart (envoy refuses
    # a flag given twice); the rest of pilot-agent's flags are added.
    extra = tuple(a for a in PILOT_AGENT_ARGS if a not in ("-l", "warning", "--disable-hot-restart"))
    proxy = ProxyProcess(kind, text, workdir=tmp_path, extra_args=extra)
    starting = asyncio.ensure_future(asyncio.to_thread(proxy.start, 40.0))
    port = free_port()
    try:
        stream = await fake.next_stream(30)
        first = await stream.next_request(10)
        assert first.type_url == CLUSTER
        assert first.message.node.id == NODE_ID
        assert first.message.node.metadata.fields["ISTIO_VERSION"].string_value == "1.24.0"
        await stream.send(CLUSTER, [
            _static_cluster("outbound|9080||reviews.default.svc.cluster.local", ups["reviews"].port),
            _static_cluster("outbound|7070||grpc.default.svc.cluster.local", ups["reviews"].port, http2=True),
        ], "1")
        # The CDS ACK and the first LDS request (sent once the clusters are warm), in either order.
        seen = [await stream.next_request(10) for _ in range(2)]
        assert sorted((r.type_url, r.version, r.error) for r in seen) == [(CLUSTER, "1", None), (LISTENER, "", None)]
        await stream.send(LISTENER, [_listener(port)], "1")
        await asyncio.wait_for(starting, 45)

        status, body = await asyncio.to_thread(_get, port, "/reviews")
        assert (status, body) == (200, "reviews v1")
        # The bootstrap's zipkin tracer reaches LDS listeners: B3 headers on the upstream request
        # (128-bit trace id, the span id its low half: a new root span).
        seen = ups["reviews"].requests[-1]
        trace, span = seen.header("x-b3-traceid"), seen.header("x-b3-spanid")
        assert trace is not None and span is not None and len(trace) == 32 and span == trace[16:]
        assert seen.header("x-b3-sampled") in ("0", "1")
        # 15090: Prometheus text from the admin, through the proxy's own listener and cluster.
        status, body = await asyncio.to_thread(_get, ports["prometheus_port"], "/stats/prometheus")
        assert status == 200 and "# TYPE envoy_" in body
        # 15021: readiness, forwarded to pilot-agent's status port.
        status, body = await asyncio.to_thread(_get, ports["status_port"], "/healthz/ready")
        assert (status, body) == (200, "agent ready")
        if kind == "sidecar":
            status, body = await asyncio.to_thread(_get, port, "/grpc")
            assert status == 502  # Envoy answers an upstream protocol error with 502
            assert body == "upstream connect error or disconnect/reset before headers. reset reason: protocol error"
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['admin_port']}/stats", timeout=5) as r:
                stats = r.read().decode()
            assert "cluster.outbound|7070||grpc.default.svc.cluster.local.upstream_cx_protocol_error: 1" in stats
    finally:
        if not starting.done():
            starting.cancel()
        proxy.close()
        ups.close()
        await fake.stop(0)

"""A scripted control plane scenario for the xDS runtime tests: a proxy (envoy or the sidecar) as a
process, configured over ADS by tests/support/fake_xds.py, with two upstreams "a" and "b" whose
responses are their names.  `start_env` gives an `Env` after the initial load (CDS, EDS, LDS, RDS in
Envoy's order): cluster a and b (EDS), listener l1 on `env.port` whose HCM takes route r1 (to a) from
RDS."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf.message import Message

from tests.support.fake_xds import CLUSTER, ENDPOINT, LISTENER, ROUTE, FakeStream, FakeXds, Received
from tests.support.http1 import exchange, request
from tests.support.ports import free_port
from tests.support.proxy import ProxyProcess
from tests.support.upstream import Behaviour, Upstreams

BOOTSTRAP = """
node: {{id: "sidecar~127.0.0.1~app.ns~ns.svc.cluster.local", cluster: app.ns}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services:
    - envoy_grpc:
        cluster_name: xds-grpc
        retry_policy: {{retry_back_off: {{base_interval: 0.05s, max_interval: 0.2s}}}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints:
      - lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds}}}}}}}}}]
"""


def eds_cluster(name: str) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.connect_timeout.seconds = 1
    c.eds_cluster_config.eds_config.ads.SetInParent()
    c.eds_cluster_config.eds_config.resource_api_version = 2  # V3
    return c


def cla(name: str, *ports: int) -> endpoint_pb2.ClusterLoadAssignment:
    pb = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    loc = pb.endpoints.add()
    for port in ports:
        sa = loc.lb_endpoints.add().endpoint.address.socket_address
        sa.address, sa.port_value = "127.0.0.1", port
    return pb


def route(name: str, cluster_name: str) -> route_pb2.RouteConfiguration:
    pb = route_pb2.RouteConfiguration(name=name)
    vh = pb.virtual_hosts.add(name="v", domains=["*"])
    r = vh.routes.add()
    r.match.prefix = "/"
    r.route.cluster = cluster_name
    return pb


def http_listener(name: str, port: int, rds: str, bad: bool = False) -> listener_pb2.Listener:
    lst = listener_pb2.Listener(name=name)
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = port
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="in")
    hcm.rds.route_config_name = rds
    hcm.rds.config_source.ads.SetInParent()
    hcm.rds.config_source.resource_api_version = 2
    hcm.http_filters.add(name="router").typed_config.Pack(router_pb2.Router())
    f = lst.filter_chains.add().filters.add(name="hcm")
    f.typed_config.Pack(hcm)
    if bad:
        hcm.stat_prefix = ""  # refused: stat_prefix is required
        f.typed_config.Pack(hcm)
    return lst


@dataclass
class Env:
    fake: FakeXds
    proxy: ProxyProcess
    ups: Upstreams
    delta: bool
    port: int
    stream: FakeStream | None = None
    version: int = 0

    async def push(self, type_url: str, resources: list[tuple[str, Message]]) -> str:
        assert self.stream is not None
        self.version += 1
        v = str(self.version)
        if self.delta:
            return await self.stream.send_delta(type_url, [(n, v, m) for n, m in resources], system_version=v)
        return await self.stream.send(type_url, [m for _, m in resources], v)

    async def until(self, pred: Callable[[Received], bool], timeout: float = 10.0) -> Received:
        """The first request that satisfies `pred` (others are skipped), bounded."""
        assert self.stream is not None
        async with asyncio.timeout(timeout):
            while True:
                r = await self.stream.next_request(timeout)
                if pred(r):
                    return r

    async def get(self, path: str = "/") -> tuple[int, str]:
        resp = await asyncio.to_thread(exchange, self.port, request(target=path), 5.0)
        return resp.status, resp.text

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.proxy.admin_port}{path}", timeout=5) as r:
            return str(r.read().decode())

    def stat_at_least(self, name: str, n: int) -> Callable[[], Any]:
        async def check() -> bool:
            return await asyncio.to_thread(self.stat, name) >= n

        return check

    def stat(self, name: str) -> int:
        for line in self.admin("/stats").splitlines():
            k, _, v = line.partition(": ")
            if k == name:
                return int(v)
        return -1


async def initial_load(env: Env) -> None:
    """Envoy's order: CDS, EDS of its clusters, then LDS, then RDS of its listeners."""
    env.stream = await env.fake.next_stream(20)
    await env.until(lambda r: r.type_url == CLUSTER)
    await env.push(CLUSTER, [("a", eds_cluster("a")), ("b", eds_cluster("b"))])
    await env.until(lambda r: r.type_url == ENDPOINT and set(r.names) == {"a", "b"})
    await env.push(ENDPOINT, [("a", cla("a", env.ups["a"].port)), ("b", cla("b", env.ups["b"].port))])
    await env.until(lambda r: r.type_url == LISTENER)
    await env.push(LISTENER, [("l1", http_listener("l1", env.port, "r1"))])
    await env.until(lambda r: r.type_url == ROUTE and r.names == ["r1"])
    await env.push(ROUTE, [("r1", route("r1", "a"))])


@contextlib.asynccontextmanager
async def start_env(kind: str, api_type: str, workers: int, workdir: Path) -> AsyncIterator[Env]:
    fake = FakeXds()
    await fake.start("127.0.0.1:0")
    ups = Upstreams(["a", "b"])
    ups["a"].behave(Behaviour(body=b"a"))
    ups["b"].behave(Behaviour(body=b"b"))
    text = BOOTSTRAP.format(api_type=api_type, admin=free_port(), xds=fake.port)
    proxy = ProxyProcess(kind, text, workdir=workdir, extra_args=("--concurrency", str(workers)) if workers != 1 else ())
    e = Env(fake, proxy, ups, api_type == "DELTA_GRPC", free_port())
    starting = asyncio.ensure_future(asyncio.to_thread(proxy.start, 30.0))
    try:
        await initial_load(e)
        await starting
        yield e
    finally:
        if not starting.done():
            starting.cancel()
        proxy.close()
        ups.close()
        await fake.stop(0)


async def poll(get: Callable[[], Any], want: Any, within: float = 5.0) -> Any:
    """Call `get` until it returns `want` (bounded); returns the last value."""
    deadline = time.monotonic() + within
    value = None
    while time.monotonic() < deadline:
        value = await get()
        if value == want:
            return value
        await asyncio.sleep(0.02)
    return value

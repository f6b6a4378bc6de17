"""Real envoy and our XdsClient against the same scripted control plane (tests/support/fake_xds.py):
what each sends, request by request, must match.  This keeps the fake honest (envoy talks to it) and
our client honest (it must say what envoy says).

The scenario (SotW and Delta ADS): CDS with one EDS cluster, its endpoints, a listener whose HCM
names a route table, the route table, a bad listener (NACK), a second cluster added after start-up
(envoy holds the CDS ACK until it has endpoints), its endpoints, and a dropped stream.  Our client
runs with `Emulator`, the smallest stand-in for what the runtime will do around it (subscribe EDS for
EDS clusters, start LDS once clusters are warm, pause CDS while a new cluster warms, subscribe RDS
for HCMs, reject a listener whose filter type is unknown).  Compared per step: type URL, names,
version, nonce, whether it is a NACK and its code, whether it carries the node; not the error text."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from sidecar.translate.common import preload_types
from sidecar.xds.ads import CLUSTER, ENDPOINT, LISTENER, ROUTE, Rejected, Update
from sidecar.xds.client import XdsClient
from sidecar.xds.config import translate_dynamic_resources
from sidecar.xds.node import build_node
from tests.support.fake_xds import FakeStream, FakeXds, Received
from tests.support.ports import free_port
from tests.unit.xds.helpers import cla, route

pytestmark = pytest.mark.differential
ENVOY = Path(sys.executable).parent / "envoy"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

BOOTSTRAP = """
node:
  id: "sidecar~10.1.2.3~app-1.ns~ns.svc.cluster.local"
  cluster: app.ns
  locality: {{region: r1, zone: z1}}
  metadata: {{ISTIO_VERSION: "1.27.0", LABELS: {{app: app}}}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc:
        cluster_name: xds-grpc
        retry_policy: {{retry_back_off: {{base_interval: 0.05s, max_interval: 0.2s}}}}
  cds_config: {{ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3}}
  lds_config: {{ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3}}
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
    if bad:  # envoy: "Didn't find a registered implementation for 'hcm' with type URL ..."
        f.typed_config.type_url = "type.googleapis.com/google.protobuf.Duration"
    return lst


class Emulator:
    """The runtime's part, minimal: see the module docstring."""

    def __init__(self) -> None:
        self.client: XdsClient | None = None
        self.clusters: set[str] = set()
        self.endpoints: set[str] = set()
        self.initialized = False
        self.paused = False

    def apply(self, u: Update) -> Sequence[Rejected]:
        client = self.client
        assert client is not None
        if u.type_url == CLUSTER:
            self.clusters = (self.clusters | set(u.updated)) - u.removed
            if self.initialized and set(u.updated) - self.endpoints and not self.paused:
                client.pause(CLUSTER)  # envoy holds the CDS ACK while new clusters warm
                self.paused = True
            client.watch(ENDPOINT, sorted(self.clusters))
        elif u.type_url == ENDPOINT:
            self.endpoints |= set(u.updated)
            if not self.initialized and self.clusters <= self.endpoints:
                self.initialized = True
                client.watch(LISTENER)
            elif self.paused and self.clusters <= self.endpoints:
                self.paused = False
                client.resume(CLUSTER)
        elif u.type_url == LISTENER:
            names = []
            for name, lst in u.updated.items():
                for chain in lst.filter_chains:
                    for f in chain.filters:
                        if f.typed_config.type_url != HCM:
                            return [
                                Rejected(name, "filter_chains[0].filters[0].typed_config", "unknown type")
                            ]
                        hcm = hcm_pb2.HttpConnectionManager()
                        f.typed_config.Unpack(hcm)
                        names.append(hcm.rds.route_config_name)
            client.watch(ROUTE, sorted(names))
        return []


async def collect(
    stream: FakeStream, done: Callable[[list[Received]], bool], quiet: float = 0.5
) -> list[Received]:
    """Requests until `done` holds, then any more that come within `quiet` seconds (bounded)."""
    got: list[Received] = []
    async with asyncio.timeout(20):
        while not done(got):
            got.append(await stream.next_request(15))
    for _ in range(50):
        try:
            got.append(await stream.next_request(quiet))
        except TimeoutError:
            break
    return got


def acked(nonce: str) -> Callable[[list[Received]], bool]:
    return lambda got: any(r.nonce == nonce for r in got)


async def scenario(fake: FakeXds, delta: bool, listener_port: int) -> tuple[list[list[Any]], Any]:
    """Drive whichever client connects; returns the requests of each step and the first node."""
    stream = await fake.next_stream(30)

    async def push(type_url: str, resources: list[tuple[str, Message]], version: str) -> str:
        if delta:
            return await stream.send_delta(
                type_url, [(n, version, m) for n, m in resources], system_version=version
            )
        return await stream.send(type_url, [m for _, m in resources], version)

    steps: list[list[Received]] = [await collect(stream, lambda got: any(r.type_url == CLUSTER for r in got))]
    node = steps[0][0].message.node
    n = await push(CLUSTER, [("c1", eds_cluster("c1"))], "1")
    steps.append(await collect(stream, acked(n)))
    n = await push(ENDPOINT, [("c1", cla("c1", 1))], "1")
    steps.append(await collect(stream, acked(n)))
    n = await push(LISTENER, [("l1", http_listener("l1", listener_port, "r1"))], "1")
    steps.append(await collect(stream, acked(n)))
    n = await push(ROUTE, [("r1", route("r1", "c1"))], "1")
    steps.append(await collect(stream, acked(n)))
    n = await push(LISTENER, [("l1", http_listener("l1", listener_port, "r1", bad=True))], "2")
    steps.append(await collect(stream, acked(n)))
    await push(CLUSTER, [("c1", eds_cluster("c1")), ("c2", eds_cluster("c2"))], "2")
    steps.append(await collect(stream, lambda got: any("c2" in r.names for r in got)))
    n = await push(ENDPOINT, [("c1", cla("c1", 1)), ("c2", cla("c2", 2))], "2")
    steps.append(await collect(stream, acked(n)))
    await stream.drop()
    stream = await fake.next_stream(30)
    steps.append(
        await collect(stream, lambda got: {r.type_url for r in got} >= {CLUSTER, ENDPOINT, LISTENER, ROUTE})
    )
    return [[(*r.shape(), r.error_code, r.has_node) for r in step] for step in steps], node


def bootstrap(api_type: str, xds_port: int) -> str:
    return BOOTSTRAP.format(api_type=api_type, admin=free_port(), xds=xds_port)


async def run_envoy(api_type: str, tmp_path: Path) -> tuple[list[list[Any]], Any]:
    fake = FakeXds()
    await fake.start("127.0.0.1:0")
    path = tmp_path / f"envoy-{api_type}.yaml"
    path.write_text(bootstrap(api_type, fake.port))
    with open(tmp_path / "envoy.log", "wb") as log:
        proc = subprocess.Popen(
            [str(ENVOY), "-c", str(path), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    try:
        return await scenario(fake, api_type == "DELTA_GRPC", free_port())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 10)
        await fake.stop()


async def run_ours(api_type: str) -> tuple[list[list[Any]], Any]:
    fake = FakeXds()
    await fake.start("127.0.0.1:0")
    pb = bootstrap_pb2.Bootstrap()
    data = yaml.safe_load(bootstrap(api_type, fake.port))
    preload_types(data)
    json_format.ParseDict(data, pb)
    emulator = Emulator()
    client = XdsClient(
        translate_dynamic_resources(pb.dynamic_resources),
        build_node(pb.node),
        apply=emulator.apply,
        resolve=lambda name: f"127.0.0.1:{fake.port}",
    )
    emulator.client = client
    client.watch(CLUSTER)
    await client.start()
    try:
        return await scenario(fake, api_type == "DELTA_GRPC", free_port())
    finally:
        await client.stop()
        await fake.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
async def test_same_requests_as_envoy(api_type: str, tmp_path: Path) -> None:
    envoy_steps, envoy_node = await run_envoy(api_type, tmp_path)
    our_steps, our_node = await run_ours(api_type)
    for i, (theirs, ours) in enumerate(zip(envoy_steps, our_steps, strict=True)):
        assert ours == theirs, f"step {i}: envoy sent {theirs}, we sent {ours}"
    # What envoy says about itself and what we say, field by field (not its extension list).
    for field in ("id", "cluster", "locality", "metadata", "user_agent_name"):
        assert getattr(our_node, field) == getattr(envoy_node, field), field
    assert our_node.user_agent_build_version.version.major_number == 1
    # The scenario exercised what it claims: a NACK, a held ACK, a resubscription.
    flat = [r for step in envoy_steps for r in step]
    assert any(r[-2] == 13 for r in flat)
    assert len(envoy_steps[-1]) == 4

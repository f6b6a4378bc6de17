"""A sidecar under Istio's bootstrap (tests/support/istio_bootstrap.py) fed over ADS the whole
istiod-shaped configuration of a bookinfo productpage (tests/support/istio_config.py: listeners
with Istio's private filters, clusters with transport_socket_matches and SDS secrets from
pilot-agent's SDS socket, the route configuration "9080"), and the workload secrets `default` and
`ROOTCA` over the SDS socket, in Envoy's order.  Every response must be ACKed (no NACK), and the
listeners and clusters must end up active, not warming: the config istiod sends a real pod is
accepted whole.

The listeners keep their shapes but are moved to 127.0.0.1 and free ports so the test can run
beside others; traffic through captured listeners needs iptables and is the e2e tests' business."""

from __future__ import annotations

import asyncio
import json
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from tests.support import istio_config
from tests.support.ca import TestCA
from tests.support.fake_xds import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, FakeStream, FakeXds, Received
from tests.support.istio_bootstrap import PILOT_AGENT_ARGS, istio_bootstrap_json
from tests.support.ports import free_port
from tests.support.proxy import ProxyProcess
from tests.support.upstream import Behaviour, Upstreams


@pytest.fixture
def pod_dir() -> Iterator[Path]:
    """The proxy's working directory: short, because pilot-agent's Unix socket paths are relative to
    it and AF_UNIX paths stop at 107 bytes (pytest's tmp_path under xdist gets close)."""
    with tempfile.TemporaryDirectory(prefix="pod-", dir="/tmp") as d:
        yield Path(d)


pytestmark = pytest.mark.timeout(90)


def _cla(name: str, port: int) -> endpoint_pb2.ClusterLoadAssignment:
    pb = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    lbe = pb.endpoints.add().lb_endpoints.add()
    sa = lbe.endpoint.address.socket_address
    sa.address, sa.port_value = "127.0.0.1", port
    return pb


def _secrets(ca: TestCA) -> dict[str, secret_pb2.Secret]:
    issued = ca.workload("default", "bookinfo-productpage")
    default = secret_pb2.Secret(name="default")
    default.tls_certificate.certificate_chain.inline_bytes = issued.cert_pem
    default.tls_certificate.private_key.inline_bytes = issued.key_pem
    root = secret_pb2.Secret(name="ROOTCA")
    root.validation_context.trusted_ca.inline_bytes = ca.root_pem
    return {"default": default, "ROOTCA": root}


async def _serve_sds(sds: FakeXds, secrets: dict[str, secret_pb2.Secret], acks: list[Received]) -> None:
    """Answer every SDS stream with the secret it asks for (Envoy opens one stream per secret)."""

    async def serve(stream: FakeStream) -> None:
        req = await stream.next_request(30)
        await stream.send(SECRET, [secrets[n] for n in req.names if n in secrets], "1")
        acks.append(await stream.next_request(30))
        while True:  # keep the stream open; further requests are re-subscriptions
            await stream.next_request(3600)

    tasks = []
    try:
        while True:
            tasks.append(asyncio.ensure_future(serve(await sds.next_stream(3600))))
    finally:
        for t in tasks:
            t.cancel()


def _moved(listeners: list, ports: dict[str, int]) -> list:
    for lst in listeners:
        sa = lst.address.socket_address
        sa.address = "127.0.0.1"
        if sa.port_value:
            sa.port_value = ports.setdefault(lst.name, free_port())
    return listeners


class Seen:
    """Every request of the ADS stream, kept, so a wait can find one that came earlier (ACKs and
    new subscriptions arrive in either order)."""

    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream
        self.all: list[Received] = []

    async def wait(self, pred: Callable[[Received], bool], what: str, timeout: float = 30.0) -> Received:
        i = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    while i < len(self.all):
                        if pred(self.all[i]):
                            return self.all[i]
                        i += 1
                    self.all.append(await self.stream.next_request(timeout))
        except TimeoutError:
            got = [(r.type_url.rsplit(".", 1)[-1], r.names, r.nonce, r.error) for r in self.all]
            raise AssertionError(f"no {what}; the stream sent {got}") from None

    async def acked(self, nonce: str) -> None:
        r = await self.wait(lambda r: r.nonce == nonce, f"answer to {nonce}")
        assert r.error is None, f"NACK of {r.type_url}: {r.error}"

    async def subscribed(self, type_url: str) -> Received:
        return await self.wait(lambda r: r.type_url == type_url and not r.nonce, f"{type_url} request")


async def test_istiod_config_is_accepted_whole(pod_dir: Path) -> None:
    tmp_path = pod_dir
    (tmp_path / "etc/istio/proxy").mkdir(parents=True)
    (tmp_path / "var/run/secrets/workload-spiffe-uds").mkdir(parents=True)
    ads, sds = FakeXds(), FakeXds()
    await ads.start(f"unix:{tmp_path}/etc/istio/proxy/XDS")
    await sds.start(f"unix:{tmp_path}/var/run/secrets/workload-spiffe-uds/socket")
    ca = TestCA(tmp_path / "ca")
    sds_acks: list[Received] = []
    sds_task = asyncio.ensure_future(_serve_sds(sds, _secrets(ca), sds_acks))
    ups = Upstreams(["app", "agent"])
    ups["app"].behave(Behaviour(body=b"app"))
    admin = free_port()
    text = istio_bootstrap_json(
        admin_port=admin, prometheus_port=free_port(), status_port=free_port(), agent_port=ups["agent"].port
    )
    extra = tuple(a for a in PILOT_AGENT_ARGS if a not in ("-l", "warning", "--disable-hot-restart"))
    proxy = ProxyProcess("sidecar", text, workdir=tmp_path, extra_args=extra)
    starting = asyncio.ensure_future(asyncio.to_thread(proxy.start, 60.0))
    try:
        seen = Seen(await ads.next_stream(30))
        await seen.subscribed(CLUSTER)
        clusters = istio_config.cds()
        cds_nonce = await seen.stream.send(CLUSTER, clusters, "c1")
        eds_names = sorted(c.eds_cluster_config.service_name or c.name for c in clusters if c.type == c.EDS)
        await seen.wait(lambda r: r.type_url == ENDPOINT and r.names == eds_names, "EDS request")
        # CDS stays paused while its clusters warm (as Envoy's): its ACK follows the endpoints.
        await seen.acked(await seen.stream.send(ENDPOINT, [_cla(n, ups["app"].port) for n in eds_names], "e1"))
        await seen.acked(cds_nonce)
        await seen.subscribed(LISTENER)
        await seen.acked(await seen.stream.send(LISTENER, _moved(istio_config.lds(), {}), "l1"))
        rds = await seen.subscribed(ROUTE)
        assert rds.names == ["9080"]
        await seen.acked(await seen.stream.send(ROUTE, istio_config.rds(), "r1"))
        await asyncio.wait_for(starting, 60)  # /ready: every listener warm, secrets in

        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=5) as r:
            dump = json.loads(r.read())
        by_type = {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}
        listeners = by_type["ListenersConfigDump"]["dynamic_listeners"]
        assert sorted(entry["name"] for entry in listeners if "active_state" in entry) == sorted(
            lst.name for lst in istio_config.lds()
        )
        assert not [e["name"] for e in listeners if "warming_state" in e]
        clusters_dump = by_type["ClustersConfigDump"]
        assert len(clusters_dump["dynamic_active_clusters"]) == len(clusters)
        assert not clusters_dump.get("dynamic_warming_clusters")
        assert sorted(s.names[0] for s in sds_acks if s.names) == ["ROOTCA", "default"]
        assert all(s.error is None for s in sds_acks)
        secrets = by_type["SecretsConfigDump"]
        assert sorted(s["name"] for s in secrets["dynamic_active_secrets"]) == ["ROOTCA", "default"]
    finally:
        sds_task.cancel()
        if not starting.done():
            starting.cancel()
        proxy.close()
        ups.close()
        await ads.stop(0)
        await sds.stop(0)

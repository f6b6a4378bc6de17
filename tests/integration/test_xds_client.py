"""XdsClient against tests/support/fake_xds.py over loopback TCP and Unix sockets: subscribe, receive,
ACK, NACK, stream drops with back-off and resubscription, Delta, per-type streams, metadata,
initial_fetch_timeout, and uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format

from sidecar.xds.ads import CLUSTER, ENDPOINT, INTERNAL, LISTENER, Rejected, Update
from sidecar.xds.client import XdsClient
from sidecar.xds.config import DynamicResources, translate_dynamic_resources
from sidecar.xds.node import build_node
from tests.support.fake_xds import FakeStream, FakeXds
from tests.unit.xds.helpers import cla, cluster, listener

FAST = {"retry_policy": {"retry_back_off": {"base_interval": "0.02s", "max_interval": "0.1s"}}}


def dynamic(api_type: str = "GRPC", cluster_name: str = "xds", **ads_extra: Any) -> DynamicResources:
    data = {
        "ads_config": {
            "api_type": api_type,
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": cluster_name, **FAST}}],
            **ads_extra,
        },
        "lds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"},
        "cds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"},
    }
    pb = bootstrap_pb2.Bootstrap.DynamicResources()
    json_format.ParseDict(data, pb)
    return translate_dynamic_resources(pb)


def node() -> Any:
    pb = bootstrap_pb2.Bootstrap()
    json_format.ParseDict(
        {"node": {"id": "sidecar~10.1.1.1~a.ns~ns.svc.cluster.local", "cluster": "a.ns"}}, pb
    )
    return build_node(pb.node)


class Runtime:
    """Records updates; answers with scripted rejections; subscribes EDS for clusters like the runtime."""

    def __init__(self) -> None:
        self.updates: list[Update] = []
        self.reject: list[list[Rejected]] = []
        self.client: XdsClient | None = None
        self.got = asyncio.Event()

    def apply(self, update: Update) -> Sequence[Rejected]:
        self.updates.append(update)
        self.got.set()
        if self.reject:
            return self.reject.pop(0)
        if update.type_url == CLUSTER and self.client is not None and update.updated:
            self.client.watch(ENDPOINT, sorted(update.updated))
        return []

    async def next_update(self, timeout: float = 10.0) -> Update:
        count = len(self.updates)
        async with asyncio.timeout(timeout):
            while len(self.updates) == count:
                self.got.clear()
                await self.got.wait()
        return self.updates[count]


@pytest.fixture
async def fake() -> AsyncIterator[FakeXds]:
    server = FakeXds()
    await server.start("127.0.0.1:0")
    yield server
    await server.stop()


def make_client(fake: FakeXds, dyn: DynamicResources, rt: Runtime, **kw: Any) -> XdsClient:
    client = XdsClient(dyn, node(), apply=rt.apply, resolve=lambda name: fake.target, **kw)
    rt.client = client
    return client


async def first_request(stream: FakeStream, type_url: str) -> Any:
    req = await stream.next_request()
    assert req.type_url == type_url
    return req


async def test_subscribe_receive_ack_over_tcp(fake: FakeXds) -> None:
    rt = Runtime()
    client = make_client(fake, dynamic(), rt)
    client.watch(CLUSTER)
    await client.start()
    try:
        stream = await fake.next_stream()
        assert stream.method == "StreamAggregatedResources"
        req = await first_request(stream, CLUSTER)
        assert req.has_node and req.message.node.id.startswith("sidecar~") and req.names == []
        assert req.message.node.user_agent_name == "envoy"
        nonce = await stream.send(CLUSTER, [cluster("c1")], "v1")
        update = await rt.next_update()
        assert list(update.updated) == ["c1"] and update.version == "v1"
        eds, ack = await stream.requests_until(2)
        assert (eds.type_url, eds.names) == (ENDPOINT, ["c1"])  # made inside apply: before the ACK
        assert (ack.type_url, ack.version, ack.nonce, ack.error) == (CLUSTER, "v1", nonce, None)
        st = client.stats(CLUSTER)
        assert st is not None and st.update_success == 1 and st.version_text == "v1"
        assert client.control_plane.connected_state == 1
    finally:
        await client.stop()


@pytest.mark.parametrize("relative", [False, True])
async def test_unix_socket_like_pilot_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool
) -> None:
    sock_dir = tmp_path / "etc" / "istio" / "proxy"
    sock_dir.mkdir(parents=True)
    server = FakeXds()
    await server.start(f"unix:{sock_dir / 'XDS'}")
    monkeypatch.chdir(tmp_path)
    target = "unix:./etc/istio/proxy/XDS" if relative else f"unix:{sock_dir / 'XDS'}"
    rt = Runtime()
    client = XdsClient(dynamic(cluster_name="xds-grpc"), node(), apply=rt.apply, resolve=lambda name: target)
    client.watch(LISTENER)
    await client.start()
    try:
        stream = await server.next_stream()
        await first_request(stream, LISTENER)
        nonce = await stream.send(LISTENER, [listener("l1")], "1")
        assert list((await rt.next_update()).updated) == ["l1"]
        ack = await stream.next_request()
        assert (ack.version, ack.nonce) == ("1", nonce)
    finally:
        await client.stop()
        await server.stop()


async def test_bad_resource_is_nacked_with_previous_version_and_reason(fake: FakeXds) -> None:
    rt = Runtime()
    client = make_client(fake, dynamic(), rt)
    client.watch(LISTENER)
    await client.start()
    try:
        stream = await fake.next_stream()
        await first_request(stream, LISTENER)
        await stream.send(LISTENER, [listener("l1")], "1")
        await rt.next_update()
        await stream.next_request()
        rt.reject.append([Rejected("l1", "filter_chains[0].filters[0].typed_config", "unknown type")])
        nonce = await stream.send(LISTENER, [listener("l1", port=1)], "2")
        await rt.next_update()
        nack = await stream.next_request()
        assert (nack.version, nack.nonce, nack.error_code) == ("1", nonce, INTERNAL)
        assert nack.error == "l1: filter_chains[0].filters[0].typed_config: unknown type"
        st = client.stats(LISTENER)
        assert st is not None and st.update_rejected == 1
    finally:
        await client.stop()


async def test_apply_that_raises_is_a_nack_and_the_stream_survives(fake: FakeXds) -> None:
    calls: list[int] = []

    def apply(update: Update) -> Sequence[Rejected]:
        calls.append(1)
        raise RuntimeError("boom")

    client = XdsClient(dynamic(), node(), apply=apply, resolve=lambda n: fake.target)
    client.watch(CLUSTER)
    await client.start()
    try:
        stream = await fake.next_stream()
        await first_request(stream, CLUSTER)
        await stream.send(CLUSTER, [cluster("c1")], "1")
        nack = await stream.next_request()
        assert nack.error is not None and "boom" in nack.error and nack.version == ""
        assert len(fake.streams) == 1
    finally:
        await client.stop()


async def test_stream_drop_reconnects_with_backoff_and_resubscribes(fake: FakeXds) -> None:
    rt = Runtime()
    client = make_client(fake, dynamic(set_node_on_first_message_only=True), rt)
    client.watch(CLUSTER)
    await client.start()
    try:
        stream = await fake.next_stream()
        await first_request(stream, CLUSTER)
        await stream.send(CLUSTER, [cluster("c1")], "1")
        await rt.next_update()
        await stream.requests_until(2)  # EDS subscription, CDS ACK
        await stream.send(ENDPOINT, [cla("c1")], "e1")
        await rt.next_update()
        await stream.next_request()
        await stream.drop()
        again = await fake.next_stream()
        cds, eds = await again.requests_until(2)
        assert (cds.type_url, cds.version, cds.nonce, cds.has_node) == (CLUSTER, "1", "", True)
        assert (eds.type_url, eds.names, eds.version, eds.nonce, eds.has_node) == (
            ENDPOINT,
            ["c1"],
            "e1",
            "",
            False,
        )
        st = client.stats(CLUSTER)
        assert st is not None and st.update_failure == 1
    finally:
        await client.stop()


async def test_control_plane_restart(fake: FakeXds) -> None:
    rt = Runtime()
    client = make_client(fake, dynamic(), rt)
    client.watch(LISTENER)
    await client.start()
    try:
        stream = await fake.next_stream()
        await first_request(stream, LISTENER)
        await stream.send(LISTENER, [listener("l1")], "1")
        await rt.next_update()
        port = fake.port
        await fake.stop()
        await asyncio.sleep(0.3)  # several failed attempts while it is down
        st = client.stats(LISTENER)
        assert st is not None and st.update_failure >= 2
        assert client.control_plane.connected_state == 0
        restarted = FakeXds()
        await restarted.start(f"127.0.0.1:{port}")
        try:
            stream = await restarted.next_stream()
            req = await first_request(stream, LISTENER)
            assert (req.version, req.nonce) == ("1", "")
            assert rt.updates[-1].version == "1"  # nothing was withdrawn meanwhile
        finally:
            await client.stop()
            await restarted.stop()
    finally:
        await client.stop()


async def test_delta_subscribe_ack_nack_and_reconnect(fake: FakeXds) -> None:
    rt = Runtime()
    client = make_client(fake, dynamic("DELTA_GRPC"), rt)
    client.watch(CLUSTER)
    await client.start()
    try:
        stream = await fake.next_stream()
        assert stream.method == "DeltaAggregatedResources"
        req = await first_request(stream, CLUSTER)
        assert req.names == [] and req.initial_versions == {}
        nonce = await stream.send_delta(CLUSTER, [("c1", "7", cluster("c1"))], system_version="s1")
        assert (await rt.next_update()).version == "s1"
        eds, ack = await stream.requests_until(2)
        assert (eds.type_url, eds.names) == (ENDPOINT, ["c1"])
        assert (ack.type_url, ack.nonce, ack.error) == (CLUSTER, nonce, None)
        rt.reject.append([Rejected("c2", "type", "bad")])
        bad = await stream.send_delta(CLUSTER, [("c2", "1", cluster("c2"))])
        nack = await stream.next_request()
        assert (nack.nonce, nack.error) == (bad, "c2: type: bad")
        await stream.drop()
        again = await fake.next_stream()
        cds, eds = await again.requests_until(2)
        assert (cds.type_url, cds.names, cds.initial_versions) == (CLUSTER, [], {"c1": "7"})
        assert (eds.type_url, eds.names, eds.initial_versions) == (ENDPOINT, ["c1"], {})
    finally:
        await client.stop()


async def test_separate_stream_per_type_when_not_ads(fake: FakeXds) -> None:
    data = {
        "lds_config": {
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [
                    {
                        "envoy_grpc": {"cluster_name": "lds"},
                        "initial_metadata": [{"key": "X-Token", "value": "t1"}],
                    }
                ],
            },
            "initial_fetch_timeout": "0s",
        },
        "cds_config": {
            "api_config_source": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"google_grpc": {"target_uri": fake.target, "stat_prefix": "x"}}],
            },
        },
    }
    pb = bootstrap_pb2.Bootstrap.DynamicResources()
    json_format.ParseDict(data, pb)
    rt = Runtime()
    resolved: list[str] = []
    client = XdsClient(
        translate_dynamic_resources(pb),
        node(),
        apply=rt.apply,
        resolve=lambda n: resolved.append(n) or fake.target,
    )
    client.watch(LISTENER)
    client.watch(CLUSTER)
    await client.start()
    try:
        streams = {s.method: s for s in [await fake.next_stream(), await fake.next_stream()]}
        assert set(streams) == {"StreamListeners", "DeltaClusters"}
        lds = streams["StreamListeners"]
        assert lds.service == "envoy.service.listener.v3.ListenerDiscoveryService"
        assert lds.metadata.get("x-token") == "t1" and resolved == ["lds"]
        await first_request(lds, LISTENER)
        await first_request(streams["DeltaClusters"], CLUSTER)
        nonce = await lds.send(LISTENER, [listener("l1")], "1")
        await rt.next_update()
        assert (await lds.next_request()).nonce == nonce
    finally:
        await client.stop()


async def test_initial_fetch_timeout_is_reported(fake: FakeXds) -> None:
    rt = Runtime()
    timeouts: list[tuple[str, str]] = []
    client = make_client(fake, dynamic(), rt, on_initial_fetch_timeout=lambda t, n: timeouts.append((t, n)))
    from sidecar.xds.config import ConfigSource

    client.watch(ENDPOINT, ["c1", "c2"], source=ConfigSource(ads=True, initial_fetch_timeout=0.2))
    await client.start()
    try:
        stream = await fake.next_stream()
        await first_request(stream, ENDPOINT)
        await stream.send(ENDPOINT, [cla("c1")], "1")
        async with asyncio.timeout(5):
            while not timeouts:
                await asyncio.sleep(0.02)
        assert timeouts == [(ENDPOINT, "c2")]
    finally:
        await client.stop()


def test_runs_on_uvloop(tmp_path: Path) -> None:
    """The runtime's loop is uvloop: one subscribe/ACK round trip on it."""
    import uvloop

    async def scenario() -> tuple[str, str]:
        server = FakeXds()
        await server.start("127.0.0.1:0")
        rt = Runtime()
        client = make_client(server, dynamic(), rt)
        client.watch(LISTENER)
        await client.start()
        try:
            stream = await server.next_stream()
            await first_request(stream, LISTENER)
            nonce = await stream.send(LISTENER, [listener("l1")], "1")
            await rt.next_update()
            ack = await stream.next_request()
            return ack.version, "ok" if ack.nonce == nonce else "bad nonce"
        finally:
            await client.stop()
            await server.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == ("1", "ok")


async def test_secrets_over_their_own_unix_socket_like_istio_sds(fake: FakeXds, tmp_path: Path) -> None:
    """Istio's SDS: sds_config.api_config_source GRPC to the sds-grpc cluster, a Unix socket."""
    from envoy.config.core.v3 import config_source_pb2
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

    from sidecar.xds.ads import SECRET
    from sidecar.xds.config import translate_config_source

    sds = FakeXds()
    sock = tmp_path / "socket"
    await sds.start(f"unix:{sock}")
    pb = config_source_pb2.ConfigSource()
    json_format.ParseDict(
        {
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
            },
            "initial_fetch_timeout": "0s",
        },
        pb,
    )
    source = translate_config_source(pb, "sds_config")
    rt = Runtime()
    targets = {"sds-grpc": f"unix:{sock}", "xds": fake.target}
    client = XdsClient(dynamic(), node(), apply=rt.apply, resolve=lambda name: targets[name])
    client.watch(SECRET, ["default", "ROOTCA"], source=source)
    await client.start()
    try:
        stream = await sds.next_stream()
        assert (stream.service, stream.method) == (
            "envoy.service.secret.v3.SecretDiscoveryService",
            "StreamSecrets",
        )
        req = await first_request(stream, SECRET)
        assert req.names == ["ROOTCA", "default"] and req.has_node
        secret = secret_pb2.Secret(name="default")
        secret.tls_certificate.certificate_chain.inline_string = "PEM"
        nonce = await stream.send(SECRET, [secret], "s1")
        assert list((await rt.next_update()).updated) == ["default"]
        ack = await stream.next_request()
        assert (ack.version, ack.nonce, ack.has_node) == ("s1", nonce, False)
        assert fake.streams == []  # nothing went to the ADS server
    finally:
        await client.stop()
        await sds.stop()


async def test_rate_limit_settings_delay_requests(fake: FakeXds) -> None:
    rt = Runtime()
    client = make_client(fake, dynamic(rate_limit_settings={"max_tokens": 1, "fill_rate": 20}), rt)
    client.watch(CLUSTER)
    client.watch(LISTENER)
    client.watch(ENDPOINT, ["a"])
    await client.start()
    try:
        stream = await fake.next_stream()
        reqs = await stream.requests_until(3)
        assert [r.type_url for r in reqs] == [CLUSTER, ENDPOINT, LISTENER]
        assert client.control_plane.rate_limit_enforced >= 1  # one token: the second request waited
    finally:
        await client.stop()

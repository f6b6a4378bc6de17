"""The proxy as a process, configured by the shipped dev control plane (sidecar/devtools/ads_server.py)
through every kind of xDS source it can name: per-type gRPC streams (api_config_source GRPC, SotW),
per-type Delta streams (DELTA_GRPC), REST-JSON polling (REST with refresh_delay), and ADS over a Unix
socket at a relative path (pilot-agent's ./etc/istio/proxy/XDS, with the server started by its CLI).
The last test drives the server alone with the stock client stubs (pushes to every stream, NACKs).

Each test: the initial load serves traffic (route r1 -> cluster a), a rewrite of routes.yaml moves it
(r1 -> b, an RDS update), then a rewrite of endpoints.yaml moves it again (b's endpoint -> upstream c,
an EDS update).  The same tests run against the real envoy binary, which checks the server itself."""

from __future__ import annotations

import asyncio
import os
import selectors
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as d

from sidecar.devtools.ads_server import AdsServer
from sidecar.devtools.xds_files import CLUSTER
from tests.support.http1 import exchange, request
from tests.support.ports import free_port
from tests.support.proxy import ProxyProcess
from tests.support.upstream import Behaviour, Upstreams
from tests.support.xds_scenario import poll

KINDS = ["sidecar", "envoy"]
XDS_PIPE = "./etc/istio/proxy/XDS"  # relative to the proxy's working directory, as pilot-agent's
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
H2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def static_cluster(name: str, address: dict[str, Any], h2: bool) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if h2:
        c["typed_extension_protocol_options"] = H2
    return c


def config_source(mode: str) -> dict[str, Any]:
    if mode.startswith("ads"):
        return {"ads": {}, "resource_api_version": "V3"}
    api: dict[str, Any] = {"api_type": mode, "transport_api_version": "V3"}
    if mode == "REST":
        api.update(cluster_names=["xds-rest"], refresh_delay="0.2s", request_timeout="2s")
    else:
        api["grpc_services"] = [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
    return {"api_config_source": api, "resource_api_version": "V3"}


def bootstrap(mode: str, admin: int, xds: dict[str, Any]) -> str:
    """mode: GRPC, DELTA_GRPC or REST (per-type sources), or ads / ads-delta (ADS SotW / Delta)."""
    source = config_source(mode)
    dynamic: dict[str, Any] = {"lds_config": source, "cds_config": source}
    if mode.startswith("ads"):
        dynamic["ads_config"] = {
            "api_type": "DELTA_GRPC" if mode == "ads-delta" else "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
        }
    name = "xds-rest" if mode == "REST" else "xds-grpc"
    boot = {
        "node": {"id": "sidecar~127.0.0.1~app.ns~ns.svc.cluster.local", "cluster": "app.ns"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": dynamic,
        "static_resources": {"clusters": [static_cluster(name, xds, h2=mode != "REST")]},
    }
    return yaml.safe_dump(boot)


def endpoints(name: str, port: int) -> dict[str, Any]:
    sa = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sa}}]}]}


def route(to: str) -> dict[str, Any]:
    vh = {"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": to}}]}
    return {"name": "r1", "virtual_hosts": [vh]}


def write(directory: Path, stem: str, docs: list[dict[str, Any]]) -> None:
    """Replace the file in one step, as an editor or a config-map update would."""
    tmp = directory / f".{stem}.tmp"
    tmp.write_text(yaml.safe_dump(docs))
    os.replace(tmp, directory / f"{stem}.yaml")


def write_all(directory: Path, mode: str, port: int, ups: dict[str, int]) -> None:
    source = config_source(mode)
    clusters = [
        {"name": n, "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": source}}
        for n in ("a", "b")
    ]
    hcm = {
        "@type": HCM,
        "stat_prefix": "in",
        "rds": {"route_config_name": "r1", "config_source": source},
        "http_filters": [{"name": "router", "typed_config": {"@type": ROUTER}}],
    }
    listener = {
        "name": "l1",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
    }
    write(directory, "clusters", clusters)
    write(directory, "endpoints", [endpoints("a", ups["a"]), endpoints("b", ups["b"])])
    write(directory, "listeners", [listener])
    write(directory, "routes", [route("a")])


@dataclass
class Setup:
    proxy: ProxyProcess
    port: int
    ups: Upstreams
    resources: Path

    async def get(self) -> tuple[int, str]:
        try:
            resp = await asyncio.to_thread(exchange, self.port, request(target="/"), 5.0)
        except OSError as e:  # the listener may not be bound yet right after /ready
            return 0, repr(e)
        return resp.status, resp.text


@pytest.fixture
def upstreams() -> Any:
    with Upstreams(["a", "b", "c"]) as ups:
        for name in ("a", "b", "c"):
            ups[name].behave(Behaviour(body=name.encode()))
        yield ups


async def start(kind: str, mode: str, xds: dict[str, Any], ups: Upstreams, workdir: Path, res: Path) -> Setup:
    port = free_port()
    write_all(res, mode, port, {n: ups[n].port for n in ("a", "b", "c")})
    proxy = ProxyProcess(kind, bootstrap(mode, free_port(), xds), workdir=workdir)
    await asyncio.to_thread(proxy.start, 30.0)
    return Setup(proxy, port, ups, res)


async def moves_with_the_files(s: Setup) -> None:
    """Traffic to a, then a routes.yaml change moves it to b, then an endpoints.yaml change to c."""
    assert await poll(s.get, (200, "a"), 10.0) == (200, "a"), s.proxy.stderr()
    write(s.resources, "routes", [route("b")])
    assert await poll(s.get, (200, "b"), 10.0) == (200, "b"), s.proxy.stderr()
    write(s.resources, "endpoints", [endpoints("a", s.ups["a"].port), endpoints("b", s.ups["c"].port)])
    assert await poll(s.get, (200, "c"), 10.0) == (200, "c"), s.proxy.stderr()
    assert s.proxy.running


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[AdsServer, Path]]:
    res = tmp_path / "resources"
    res.mkdir()
    srv = AdsServer(res, poll_interval=0.05)
    try:
        yield srv, res
    finally:
        await srv.stop()


def tcp(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["GRPC", "DELTA_GRPC"])
async def test_per_type_grpc_streams(
    kind: str, mode: str, server: tuple[AdsServer, Path], upstreams: Upstreams, tmp_path: Path
) -> None:
    srv, res = server
    write_all(res, mode, 1, {n: upstreams[n].port for n in ("a", "b", "c")})  # valid before start
    target = await srv.start("127.0.0.1:0")
    s = await start(kind, mode, tcp(int(target.rsplit(":", 1)[1])), upstreams, tmp_path, res)
    try:
        await moves_with_the_files(s)
        # One stream per type, on the per-type services (no ADS stream).
        kinds = sorted({st.label.split("(")[1].split(",")[0] for st in srv.streams})
        want = ["DeltaClusters", "DeltaEndpoints", "DeltaListeners", "DeltaRoutes"]
        assert kinds == (want if mode == "DELTA_GRPC" else [k.replace("Delta", "Stream") for k in want])
    finally:
        s.proxy.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_rest_json_polling(
    kind: str, server: tuple[AdsServer, Path], upstreams: Upstreams, tmp_path: Path
) -> None:
    srv, res = server
    write_all(res, "REST", 1, {n: upstreams[n].port for n in ("a", "b", "c")})
    await srv.start("127.0.0.1:0", rest_listen="127.0.0.1:0")
    rest_port = int(srv.rest_address.rsplit(":", 1)[1])
    s = await start(kind, "REST", tcp(rest_port), upstreams, tmp_path, res)
    try:
        await moves_with_the_files(s)
        assert srv.rest.polls > 4 and not srv.streams  # polled over REST, no gRPC stream
    finally:
        s.proxy.close()


def read_ready(proc: subprocess.Popen[str], within: float) -> str:
    """The server's `ads_server ready:` line from its stdout, bounded."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                line = proc.stdout.readline()
                if line.startswith("ads_server ready:") or not line:
                    return line
    finally:
        sel.close()
    return ""


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["ads", "ads-delta"])
async def test_ads_over_a_unix_socket_from_the_cli(
    kind: str, mode: str, upstreams: Upstreams, tmp_path: Path
) -> None:
    res = tmp_path / "resources"
    res.mkdir()
    (tmp_path / "etc/istio/proxy").mkdir(parents=True)
    write_all(res, mode, 1, {n: upstreams[n].port for n in ("a", "b", "c")})
    cmd = [sys.executable, "-m", "sidecar.devtools.ads_server", "--dir", str(res), "--poll", "0.05"]
    cmd += ["--listen", f"unix:{tmp_path / XDS_PIPE}"]
    log = tmp_path / "ads_server.log"
    with log.open("wb") as err_file:  # a file, not a pipe: a full pipe would block the server
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True, cwd=tmp_path)
    s: Setup | None = None
    try:
        line = await asyncio.to_thread(read_ready, proc, 20.0)
        assert line.startswith("ads_server ready: grpc=unix:"), log.read_text()
        s = await start(kind, mode, {"pipe": {"path": XDS_PIPE}}, upstreams, tmp_path, res)
        await moves_with_the_files(s)
    finally:
        if s is not None:
            s.proxy.close()
        proc.terminate()
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=5)
    err = log.read_text()
    assert proc.returncode == 0, err
    assert ("(ADS delta, unix:" if mode == "ads-delta" else "(ADS, unix:") in err, (
        err
    )  # the stream was logged, with its peer
    assert "NACK" not in err, err


async def test_grpc_push_reaches_every_stream_and_nacks_are_logged(
    server: tuple[AdsServer, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The server alone, with the stock xds-protos client stubs: an ADS SotW stream and a per-type
    Delta stream both get a file change; a NACK is logged with its error_detail and resends nothing."""
    srv, res = server
    write(res, "clusters", [{"name": "a", "connect_timeout": "1s"}])
    target = await srv.start("127.0.0.1:0")
    async with grpc.aio.insecure_channel(target) as channel:
        sotw_out: asyncio.Queue[Any] = asyncio.Queue()
        delta_out: asyncio.Queue[Any] = asyncio.Queue()

        async def requests(q: asyncio.Queue[Any]) -> AsyncIterator[Any]:
            while (item := await q.get()) is not None:
                yield item

        sotw = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            requests(sotw_out)
        )
        delta = cds_pb2_grpc.ClusterDiscoveryServiceStub(channel).DeltaClusters(requests(delta_out))
        try:
            async with asyncio.timeout(10):
                await sotw_out.put(d.DiscoveryRequest(type_url=CLUSTER))
                first = await sotw.read()
                await delta_out.put(d.DeltaDiscoveryRequest())  # per-type: type_url may be empty
                dfirst = await delta.read()
                assert (first.version_info, len(first.resources)) == ("1", 1)
                assert [r.name for r in dfirst.resources] == ["a"]
                await sotw_out.put(
                    d.DiscoveryRequest(type_url=CLUSTER, version_info="1", response_nonce=first.nonce)
                )
                await delta_out.put(d.DeltaDiscoveryRequest(response_nonce=dfirst.nonce))

                write(res, "clusters", [{"name": "b", "connect_timeout": "1s"}])
                second, dsecond = await sotw.read(), await delta.read()
                assert second.version_info == "2" and second.nonce != first.nonce
                assert [r.name for r in dsecond.resources] == ["b"] and list(dsecond.removed_resources) == [
                    "a"
                ]

                nack = d.DiscoveryRequest(type_url=CLUSTER, version_info="1", response_nonce=second.nonce)
                nack.error_detail.message = "cluster b: refused for the test"
                await sotw_out.put(nack)
                for _ in range(100):
                    if "refused for the test" in caplog.text:
                        break
                    await asyncio.sleep(0.02)
            assert "NACK of Cluster nonce" in caplog.text and "refused for the test" in caplog.text
            assert all(st.queue.empty() for st in srv.streams)  # nothing resent after the NACK
        finally:
            await sotw_out.put(None)
            await delta_out.put(None)
            sotw.cancel()
            delta.cancel()

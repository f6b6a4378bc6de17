"""REST-JSON polling (api_type REST) against a stdlib http.server on loopback: the request each poll
sends (path, JSON DiscoveryRequest with node, version, names), ACK by version, NACK (old version and
error_detail), 304 Not Modified, server errors counted as update_failure, a Unix socket cluster."""

from __future__ import annotations

import asyncio
import json
import queue
import socketserver
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format

from sidecar.xds.ads import CLUSTER, ENDPOINT, Rejected, Update
from sidecar.xds.client import XdsClient
from sidecar.xds.config import DynamicResources, translate_dynamic_resources
from sidecar.xds.node import build_node
from tests.unit.xds.helpers import cla, cluster, packed


class RestServer:
    """Answers each POST with the next scripted (status, JSON body); records the requests."""

    def __init__(self, unix_path: str = "") -> None:
        self.requests: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.answers: queue.Queue[tuple[int, str]] = queue.Queue()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                outer.requests.put((self.path, body))
                try:
                    status, text = outer.answers.get_nowait()
                except queue.Empty:
                    status, text = 304, ""
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        if unix_path:

            class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
                daemon_threads = True

                def get_request(self) -> Any:  # BaseHTTPRequestHandler wants a (host, port) client address
                    sock, _ = super().get_request()
                    return sock, ("local", 0)

            self.server: Any = UnixServer(unix_path, Handler)
            self.target = f"unix:{unix_path}"
        else:
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.target = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def respond(self, type_url: str, resources: list[Any], version: str) -> None:
        body = {"version_info": version, "type_url": type_url, "resources": [
            json_format.MessageToDict(packed(r)) for r in resources
        ]}  # fmt: skip
        self.answers.put((200, json.dumps(body)))

    async def next_request(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        return await asyncio.to_thread(self.requests.get, True, timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def rest() -> Iterator[RestServer]:
    server = RestServer()
    yield server
    server.close()


def rest_dynamic() -> DynamicResources:
    pb = bootstrap_pb2.Bootstrap.DynamicResources()
    json_format.ParseDict(
        {
            "cds_config": {
                "api_config_source": {
                    "api_type": "REST",
                    "transport_api_version": "V3",
                    "cluster_names": ["xds_rest"],
                    "refresh_delay": "0.05s",
                    "request_timeout": "2s",
                },
                "initial_fetch_timeout": "0s",
            }
        },
        pb,
    )
    return translate_dynamic_resources(pb)


class Recorder:
    def __init__(self) -> None:
        self.updates: list[Update] = []
        self.reject: list[list[Rejected]] = []

    def __call__(self, update: Update) -> Sequence[Rejected]:
        self.updates.append(update)
        return self.reject.pop(0) if self.reject else []


def make(target: str, rec: Recorder) -> XdsClient:
    pb = bootstrap_pb2.Bootstrap()
    json_format.ParseDict({"node": {"id": "n1", "cluster": "c1"}}, pb)
    return XdsClient(rest_dynamic(), build_node(pb.node), apply=rec, resolve=lambda name: target)


async def test_polls_ack_by_version_nack_and_not_modified(rest: RestServer) -> None:
    rec = Recorder()
    client = make(rest.target, rec)
    client.watch(CLUSTER)
    rest.respond(CLUSTER, [cluster("a")], "v1")
    await client.start()
    try:
        path, first = await rest.next_request()
        assert path == "/v3/discovery:clusters"
        assert first["node"]["id"] == "n1" and first["typeUrl"] == CLUSTER and "versionInfo" not in first
        _, second = await rest.next_request()
        assert second["versionInfo"] == "v1" and second["node"]["id"] == "n1"  # the node on every poll
        assert [list(u.updated) for u in rec.updates] == [["a"]]
        rec.reject.append([Rejected("b", "lb_policy", "unsupported")])
        rest.respond(CLUSTER, [cluster("a"), cluster("b")], "v2")
        for _ in range(20):  # bounded: the poll that carries the NACK comes within a few refreshes
            _, req = await rest.next_request()
            if "errorDetail" in req:
                break
        assert req["versionInfo"] == "v1" and req["errorDetail"]["message"] == "b: lb_policy: unsupported"
        st = client.stats(CLUSTER)
        assert st is not None and (st.update_success, st.update_rejected) == (1, 1)
        assert len(rec.updates) == 2  # 304s applied nothing
    finally:
        await client.stop()


async def test_server_errors_and_bad_json(rest: RestServer) -> None:
    rec = Recorder()
    client = make(rest.target, rec)
    client.watch(CLUSTER)
    rest.answers.put((503, "overloaded"))
    rest.answers.put((200, "{not json"))
    await client.start()
    try:
        for _ in range(20):
            _, req = await rest.next_request()
            if "errorDetail" in req:
                break
        assert "invalid DiscoveryResponse JSON" in req["errorDetail"]["message"]
        st = client.stats(CLUSTER)
        assert st is not None and st.update_failure == 1 and st.update_rejected == 1 and rec.updates == []
    finally:
        await client.stop()


async def test_rest_over_unix_socket_for_endpoints(tmp_path: Path) -> None:
    server = RestServer(str(tmp_path / "rest.sock"))
    rec = Recorder()
    client = make(server.target, rec)
    from sidecar.xds.config import ConfigSource

    src = rest_dynamic().cds
    assert isinstance(src, ConfigSource)
    client.watch(ENDPOINT, ["c1"], source=src)
    server.respond(ENDPOINT, [cla("c1"), cla("other")], "e1")
    await client.start()
    try:
        path, first = await server.next_request()
        assert path == "/v3/discovery:endpoints" and first["resourceNames"] == ["c1"]
        await server.next_request()
        assert [list(u.updated) for u in rec.updates] == [["c1"]]
    finally:
        await client.stop()
        server.close()

"""The dev ADS server's adapters without sockets: RestHandler.answer (REST-JSON status and body for
a request) and AdsServer.reload (a file change pushed to every registered stream, a bad file kept
out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from envoy.service.discovery.v3 import discovery_pb2 as d

from sidecar.devtools.ads_server import AdsServer, _Stream
from sidecar.devtools.rest_server import RestHandler
from sidecar.devtools.xds_core import DeltaSession, SotwSession, Store
from sidecar.devtools.xds_files import CLUSTER, ENDPOINT


def write(directory: Path, stem: str, docs: object) -> None:
    (directory / f"{stem}.yaml").write_text(yaml.safe_dump(docs))


def test_rest_answers() -> None:
    store = Store()
    store.replace({ENDPOINT: {}})
    handler = RestHandler(store, lambda: "n")
    status, body = handler.answer("POST", "/v3/discovery:clusters", b'{"node": {"id": "x"}}')
    doc = json.loads(body)
    assert status == 200 and doc["typeUrl"] == CLUSTER and doc["versionInfo"].startswith("1-")
    again = json.dumps({"versionInfo": doc["versionInfo"]}).encode()
    assert handler.answer("POST", "/v3/discovery:clusters", again) == (304, b"")
    assert handler.answer("POST", "/v3/discovery:clustrs", b"{}")[0] == 404
    assert handler.answer("GET", "/v3/discovery:clusters", b"")[0] == 405
    assert handler.answer("POST", "/v3/discovery:clusters", b"{not json")[0] == 400
    # A NACK (the sidecar sends error_detail) is still answered: 304 for the same version.
    nack = json.dumps({"versionInfo": doc["versionInfo"], "errorDetail": {"message": "bad"}}).encode()
    assert handler.answer("POST", "/v3/discovery:clusters", nack)[0] == 304


async def test_reload_pushes_to_every_stream_and_skips_bad_files(tmp_path: Path) -> None:
    write(tmp_path, "clusters", [{"name": "a", "connect_timeout": "1s"}])
    server = AdsServer(tmp_path)
    server.reload()
    sotw = _Stream(SotwSession(server.store, server.nonce), "s")
    delta = _Stream(DeltaSession(server.store, server.nonce), "d")
    server.streams |= {sotw, delta}
    assert sotw.session.on_request(d.DiscoveryRequest(type_url=CLUSTER)).responses
    assert delta.session.on_request(d.DeltaDiscoveryRequest(type_url=CLUSTER)).responses

    write(tmp_path, "clusters", [{"name": "a", "connect_timeout": "2s"}])
    assert server.reload() == [CLUSTER]
    pushed: list[Any] = [sotw.queue.get_nowait(), delta.queue.get_nowait()]
    assert pushed[0].version_info == "2" and [r.name for r in pushed[1].resources] == ["a"]

    write(tmp_path, "clusters", [{"name": "a", "connect_timeout": "forever"}])  # does not parse
    assert server.reload() == [] and server.store.version(CLUSTER) == "2"
    assert sotw.queue.empty() and delta.queue.empty()

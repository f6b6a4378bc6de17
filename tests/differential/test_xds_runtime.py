"""The xDS runtime scenario on envoy and on the sidecar, against the same fake control plane
(tests/support/xds_scenario.py): what the client sees (status and which upstream answered) and what
the control plane receives (ACK or NACK, what is re-subscribed after a reconnect) must be the same."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_xds import ENDPOINT, LISTENER, ROUTE
from tests.support.xds_scenario import Env, cla, http_listener, poll, route, start_env

pytestmark = pytest.mark.differential


def dump_shape(dump: dict[str, Any]) -> dict[str, Any]:
    """The dynamic sections of /config_dump: each entry's keys (and a listener's state's keys), and
    each dump's version_info."""
    out: dict[str, Any] = {}
    for c in dump["configs"]:
        kind = c["@type"].rsplit(".", 1)[-1]
        for key, value in c.items():
            if key.startswith("dynamic") and value:
                entry = value[0]
                states = [f"{k}.{x}" for k, v in entry.items() if k.endswith("_state") for x in v]
                out[f"{kind}.{key}"] = sorted(entry) + sorted(states)
            elif key == "version_info":
                out[f"{kind}.version_info"] = value
    return out


async def observe(env: Env) -> list[Any]:
    seen: list[Any] = [("initial", await env.get())]
    seen.append(("config_dump", dump_shape(json.loads(env.admin("/config_dump?include_eds")))))
    await env.push(ROUTE, [("r1", route("r1", "b"))])
    seen.append(("route update", await poll(env.get, (200, "b"))))
    nonce = await env.push(LISTENER, [("l1", http_listener("l1", env.port, "r1", bad=True))])
    nack = await env.until(lambda r: r.nonce == nonce)
    seen.append(("bad listener", nack.error is not None, nack.version, await env.get()))
    await env.push(ENDPOINT, [("a", cla("a", env.ups["a"].port)), ("b", cla("b", env.ups["a"].port))])
    seen.append(("eds update", await poll(env.get, (200, "a"))))
    # Envoy keeps RDS and EDS subscription stats per resource (under the HCM and the cluster).
    seen.append(("per-resource xDS stats", [
        env.stat(name) for name in (
            "http.in.rds.r1.update_success", "http.in.rds.r1.update_attempt",
            "cluster.a.update_success", "cluster.b.update_success",
        )
    ]))
    assert env.stream is not None
    await env.stream.drop()
    seen.append(("control plane gone", await env.get()))
    env.stream = await env.fake.next_stream(20)
    seen.append(("resubscribed", sorted({(await env.stream.next_request()).type_url for _ in range(4)})))
    seen.append(("after reconnect", await env.get()))
    return seen


@pytest.mark.timeout(120)
@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
async def test_same_as_envoy(api_type: str, tmp_path: Path) -> None:
    kinds = [k.strip() for k in os.environ.get("DIFF_PROXIES", "envoy,sidecar").split(",") if k.strip()]
    results = {}
    for kind in kinds:
        workdir = tmp_path / kind
        workdir.mkdir()
        async with start_env(kind, api_type, 1, workdir) as env:
            results[kind] = await observe(env)
    assert results["sidecar"][0] == ("initial", (200, "a"))
    if "envoy" in results:
        for theirs, ours in zip(results["envoy"], results["sidecar"], strict=True):
            assert ours == theirs

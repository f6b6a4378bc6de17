"""ListenerFilter.filter_disabled, as istiod sets it on virtualInbound's http_inspector for ports whose
protocol is declared: on those ports the inspector does not run, so a server-first protocol is not
held waiting for client bytes (listener_filters_timeout 0 = none).  Same run on Envoy and sidecar."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_capture_chains import (
    Recorder,
    bootstrap,
    connect,
    first_line,
    stat,
    static,
    tcp_chain,
)
from tests.support.loop_thread import LoopThread
from tests.support.ports import free_port
from tests.support.proxy import PROXY_KINDS, start_proxy

pytestmark = pytest.mark.timeout(60)

LF = "type.googleapis.com/envoy.extensions.filters.listener."


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread("filter-disabled-upstreams")
    yield lt
    lt.close()


def listener(name: str, disabled_port: int) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": f"{{{name}_port}}"}},
        "listener_filters": [
            {
                "name": "envoy.filters.listener.http_inspector",
                "typed_config": {"@type": LF + "http_inspector.v3.HttpInspector"},
                "filter_disabled": {
                    "destination_port_range": {"start": disabled_port, "end": disabled_port + 1}
                },
            }
        ],
        "listener_filters_timeout": "0s",
        "filter_chains": [tcp_chain(name, "app")],
    }


@pytest.mark.parametrize("kind", PROXY_KINDS)
def test_inspector_skipped_on_its_disabled_port(loop: LoopThread, kind: str) -> None:
    app = loop.call(Recorder("app").start())
    declared = free_port()
    text = bootstrap([listener("declared", declared), listener("sniffed", 1)], [static("app", app.port)])
    text = text.replace("'{declared_port}'", "{declared_port}").replace("'{sniffed_port}'", "{sniffed_port}")
    proc, used = start_proxy(kind, text, {"declared_port": declared})
    try:
        with connect(declared) as s:
            # Server-first: the app's greeting arrives before we send anything.
            assert first_line(s) == b"app"
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        with connect(int(str(used["sniffed_port"]))) as s:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")  # the inspector runs here and needs these bytes
            assert first_line(s) == b"app"
        assert app.wait(2)
        assert stat(proc, "http_inspector.http11_found") == 1  # only the sniffed port's connection
    finally:
        proc.close()
        loop.call(app.stop())

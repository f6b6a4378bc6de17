"""A listener replaced or removed by LDS gives back the stat blocks its chains registered (connection
manager, fault filter, tcp_proxy), once its connections are gone: otherwise every update would leave
blocks behind that each stats flush keeps walking (memory and idle CPU growing with updates)."""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format

from sidecar.listener.manager import ListenerManager
from sidecar.model.listener import Listener
from sidecar.observe.stats import Stats
from sidecar.translate.lds import translate_listener
from sidecar.upstream.cluster_manager import ClusterManager

pytestmark = pytest.mark.timeout(20)

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def _listener(name: str, version: int) -> Listener:
    d = {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "bind_to_port": False,
        "filter_chains": [
            {
                "filter_chain_match": {"destination_port": 80},
                "filters": [{
                    "name": "hcm",
                    "typed_config": {
                        "@type": HCM,
                        "stat_prefix": f"in{version % 2}",
                        "route_config": {"name": "r", "virtual_hosts": [
                            {"name": "v", "domains": ["*"], "routes": [
                                {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                        "http_filters": [
                            {"name": "fault", "typed_config": {"@type": FAULT}},
                            {"name": "router", "typed_config": {"@type": ROUTER}},
                        ],
                    },
                }],
            },
            {
                "filter_chain_match": {"destination_port": 81},
                "filters": [{"name": "tcp", "typed_config": {"@type": TCP, "stat_prefix": "t", "cluster": "c"}}],
            },
        ],
    }
    return translate_listener(json_format.ParseDict(d, listener_pb2.Listener()), "l", clusters={"c"})


class CountingStats(Stats):
    """Stats that reports which registered blocks are still being flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.live: set[int] = set()

    def block(self, obj: object, prefix: str, counters: object, gauges: object = ()) -> None:
        super().block(obj, prefix, counters, gauges)  # type: ignore[arg-type]
        self.live.add(id(obj))

    def forget(self, obj: object) -> None:
        super().forget(obj)
        self.live.discard(id(obj))


async def test_replaced_listeners_release_their_stat_blocks() -> None:

    loop = asyncio.get_running_loop()
    stats = CountingStats()
    cm = ClusterManager(stats, loop)
    lm = ListenerManager(loop, cm, stats)
    base = len(stats.live)
    al = await lm.serve(_listener("l", 0), None)
    one = len(stats.live) - base
    assert one >= 3  # connection manager, fault filter, tcp_proxy
    for v in range(1, 50):
        new = await lm.serve(_listener("l", v), None)
        lm.retire(al, drain_time=5.0)  # no open connections: released at once
        al = new
    assert len(stats.live) - base == one
    lm.retire(al, drain_time=5.0)
    assert len(stats.live) == base


async def test_a_draining_listener_keeps_its_blocks_until_it_closes() -> None:

    loop = asyncio.get_running_loop()
    stats = CountingStats()
    lm = ListenerManager(loop, ClusterManager(stats, loop), stats)
    base = len(stats.live)
    al = await lm.serve(_listener("l", 0), None)
    held = len(stats.live)

    class Conn:
        draining = False
        transport = None

    al.conns.add(Conn())  # type: ignore[arg-type]
    lm.retire(al, drain_time=0.05)
    assert len(stats.live) == held  # still counting for the draining connection
    await asyncio.sleep(0.2)
    assert len(stats.live) == base

"""A FakeAdminContext: the AdminContext protocol over plain attributes, recording every callback."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar.admin.context import HostInfo, XdsResource
from sidecar.model.cluster import Cluster, DiscoveryType
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.model.listener import Listener
from sidecar.model.snapshot import Admin, Node, Snapshot
from sidecar.observe.stats import Stats

REVIEWS = "outbound|9080|v1|reviews.default.svc.cluster.local"

BOOTSTRAP: dict[str, Any] = {
    "node": {
        "id": "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local",
        "cluster": "mycluster",
        "metadata": {"ISTIO_VERSION": "1.28.0", "foo": "bar"},
    },
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
    "static_resources": {
        "listeners": [
            {
                "name": "tcp_in",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 19002}},
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.tcp_proxy",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                                    "stat_prefix": "tcp_stats",
                                    "cluster": "backend2",
                                },
                            }
                        ]
                    }
                ],
            },
            {
                "name": "http_in",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 19001}},
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.http_connection_manager",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                                    "HttpConnectionManager",
                                    "stat_prefix": "ingress_http",
                                    "route_config": {
                                        "name": "local_route",
                                        "virtual_hosts": [
                                            {
                                                "name": "backend",
                                                "domains": ["*"],
                                                "routes": [
                                                    {"match": {"prefix": "/"}, "route": {"cluster": REVIEWS}}
                                                ],
                                            }
                                        ],
                                    },
                                    "http_filters": [
                                        {
                                            "name": "envoy.filters.http.router",
                                            "typed_config": {
                                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                            },
                                        }
                                    ],
                                },
                            }
                        ]
                    }
                ],
            },
        ],
        "clusters": [
            {
                "name": REVIEWS,
                "type": "STATIC",
                "connect_timeout": "1s",
                "circuit_breakers": {
                    "thresholds": [
                        {"max_connections": 100, "max_retries": 7},
                        {"priority": "HIGH", "max_requests": 5},
                    ]
                },
                "load_assignment": {
                    "cluster_name": REVIEWS,
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {"address": "127.0.0.1", "port_value": 19005}
                                        }
                                    }
                                },
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {"address": "127.0.0.2", "port_value": 19005}
                                        }
                                    },
                                    "load_balancing_weight": 3,
                                },
                            ]
                        }
                    ],
                },
            },
            {
                "name": "backend2",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "backend2",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {"address": "127.0.0.1", "port_value": 19006}
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            },
        ],
        "secrets": [
            {
                "name": "server_cert",
                "tls_certificate": {
                    "certificate_chain": {"inline_string": "-----BEGIN CERTIFICATE-----"},
                    "private_key": {"inline_string": "-----BEGIN PRIVATE KEY-----secret"},
                },
            },
        ],
    },
}


def make_snapshot(bootstrap: Mapping[str, Any] = BOOTSTRAP) -> Snapshot:
    clusters = {
        REVIEWS: Cluster(
            REVIEWS,
            endpoints=(
                Endpoint(SocketAddress("127.0.0.1", 19005)),
                Endpoint(SocketAddress("127.0.0.2", 19005), weight=3),
            ),
        ),
        "backend2": Cluster("backend2", endpoints=(Endpoint(SocketAddress("127.0.0.1", 19006)),)),
        "outbound|80||eds.example": Cluster("outbound|80||eds.example", type=DiscoveryType.EDS),
    }
    listeners = (
        Listener("http_in", SocketAddress("127.0.0.1", 19001)),
        Listener("tcp_in", SocketAddress("127.0.0.1", 19002)),
    )
    return Snapshot(
        listeners=listeners,
        clusters=clusters,
        admin=Admin(SocketAddress("127.0.0.1", 15000)),
        node=Node(id="sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local", cluster="mycluster"),
        version="1",
        bootstrap_json=bootstrap,
    )


@dataclass
class FakeAdminContext:
    snapshot: Snapshot = field(default_factory=make_snapshot)
    stats: Stats = field(default_factory=lambda: Stats(max_slots=4096))
    state: str = "LIVE"
    start_time: float = 1_700_000_000.0
    clock: float = 1_700_000_042.5
    concurrency: int = 2
    workers_started: bool = True
    command_line: Sequence[str] = (
        "envoy",
        "-c",
        "/etc/istio/proxy/envoy-rev.json",
        "--drain-time-s",
        "45",
        "--drain-strategy",
        "immediate",
        "--disable-hot-restart",
        "--file-flush-interval-msec",
        "1500",
        "-l",
        "warning",
        "--concurrency",
        "2",
    )
    healthy: bool = True
    hosts: dict[str, list[HostInfo]] = field(
        default_factory=lambda: {
            REVIEWS: [
                HostInfo("127.0.0.1:19005", cx_total=4, rq_total=9, rq_success=8, rq_error=1, cx_active=1),
                HostInfo(
                    "127.0.0.2:19005",
                    weight=3,
                    eds_health_status="UNHEALTHY",
                    health_flags=("failed_outlier_check",),
                    zone="z1",
                ),
            ],
            "backend2": [HostInfo("127.0.0.1:19006")],
            "outbound|80||eds.example": [HostInfo("10.1.1.1:80", hostname="eds-host", priority=1)],
        }
    )
    listeners: list[tuple[str, str]] = field(
        default_factory=lambda: [("http_in", "127.0.0.1:19001"), ("tcp_in", "127.0.0.1:19002")]
    )
    xds: dict[str, list[XdsResource]] = field(default_factory=dict)
    log_levels: dict[str, str] = field(
        default_factory=lambda: {"admin": "info", "config": "info", "upstream": "info"}
    )
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    async_callbacks: bool = False
    quit_event: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> float:
        return self.clock

    def cluster_hosts(self, name: str) -> Sequence[HostInfo]:
        return self.hosts.get(name, [])

    def listener_addresses(self) -> Sequence[tuple[str, str]]:
        return self.listeners

    def xds_resources(self, type_url: str) -> Sequence[XdsResource]:
        return self.xds.get(type_url, [])

    def loggers(self) -> Mapping[str, str]:
        return self.log_levels

    def _record(self, *call: Any) -> Any:
        self.calls.append(call)
        if self.async_callbacks:

            async def done() -> None:
                await asyncio.sleep(0)

            return done()
        return None

    def healthcheck_fail(self) -> Any:
        self.healthy = False
        return self._record("healthcheck_fail")

    def healthcheck_ok(self) -> Any:
        self.healthy = True
        return self._record("healthcheck_ok")

    def drain_listeners(self, inbound_only: bool, graceful: bool) -> Any:
        return self._record("drain_listeners", inbound_only, graceful)

    def quit(self) -> Any:
        self.quit_event.set()
        return self._record("quit")

    def set_log_level(self, level: str | None, paths: Mapping[str, str]) -> Any:
        if level is not None:
            for name in self.log_levels:
                self.log_levels[name] = level
        self.log_levels.update(paths)
        return self._record("set_log_level", level, dict(paths))

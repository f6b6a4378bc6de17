"""What the admin server may read from, and ask of, the running sidecar.

The runtime implements `AdminContext`; the admin server only reads through it (never imports the
runtime, the listener manager or the cluster manager).  Tests use a fake with the same shape
(tests/integration/admin/fake_context.py).

Callbacks may be plain functions or coroutine functions: the admin server awaits whatever they
return when it is awaitable."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sidecar.model.snapshot import Snapshot
from sidecar.observe.stats import Stats

# Envoy's server.state gauge values (envoy.admin.v3.ServerInfo.State).
SERVER_STATES: Mapping[str, int] = {"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2, "INITIALIZING": 3}

# Envoy's xDS type URLs, the keys of `AdminContext.xds_resources`.
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


@dataclass(frozen=True, slots=True)
class HostInfo:
    """One upstream host as /clusters shows it (Envoy's admin.v3.HostStatus).

    `address` is "ip:port" ("[v6]:port" for IPv6) or a Unix socket path.  `eds_health_status`
    keeps Envoy's enum name (HEALTHY, UNHEALTHY, DRAINING, TIMEOUT, DEGRADED); `health_flags`
    holds the other flags by Envoy's text names: failed_active_hc, failed_outlier_check,
    degraded_active_hc, pending_dynamic_removal, pending_active_hc,
    excluded_via_immediate_hc_fail, active_hc_timeout.  Success rates are -1 when unknown."""

    address: str
    weight: int = 1
    hostname: str = ""
    priority: int = 0
    region: str = ""
    zone: str = ""
    sub_zone: str = ""
    eds_health_status: str = "HEALTHY"
    health_flags: tuple[str, ...] = ()
    # Envoy's per-host counters
    cx_connect_fail: int = 0
    cx_total: int = 0
    rq_error: int = 0
    rq_success: int = 0
    rq_timeout: int = 0
    rq_total: int = 0
    # ... and gauges
    cx_active: int = 0
    rq_active: int = 0
    rq_pending_active: int = 0
    success_rate: float = -1.0
    local_origin_success_rate: float = -1.0


@dataclass(frozen=True, slots=True)
class XdsResource:
    """One resource accepted from xDS, for /config_dump's dynamic_* sections.

    `resource` is the proto as `json_format.MessageToDict(msg, preserving_proto_field_name=True)`
    (snake_case keys, as Envoy's admin prints them), without "@type" (the dump adds it).
    `warming` marks a cluster or listener that is not serving yet."""

    name: str
    version_info: str
    last_updated: float  # epoch seconds
    resource: Mapping[str, object] = field(default_factory=dict)
    warming: bool = False


class AdminContext(Protocol):
    """The running sidecar, as the admin server sees it."""

    @property
    def snapshot(self) -> Snapshot:
        """The config being served (listeners, clusters, admin, node, bootstrap_json).  Its
        bootstrap_json should use snake_case keys (MessageToDict(preserving_proto_field_name=True));
        camelCase is converted on the way out when the proto types are importable."""
        ...

    @property
    def stats(self) -> Stats: ...

    @property
    def state(self) -> str:
        """LIVE, DRAINING, PRE_INITIALIZING or INITIALIZING."""
        ...

    @property
    def start_time(self) -> float:
        """Epoch seconds when the process started."""
        ...

    def now(self) -> float:
        """Epoch seconds (a wall clock: uptimes and last_updated stamps derive from it)."""
        ...

    @property
    def concurrency(self) -> int: ...

    @property
    def workers_started(self) -> bool: ...

    @property
    def command_line(self) -> Sequence[str]:
        """argv, program name first."""
        ...

    @property
    def healthy(self) -> bool:
        """False after /healthcheck/fail (then /ready says DRAINING, as Envoy does)."""
        ...

    def cluster_hosts(self, name: str) -> Sequence[HostInfo]: ...

    def listener_addresses(self) -> Sequence[tuple[str, str]]:
        """(listener name, bound "ip:port") for every listener that owns a socket."""
        ...

    def xds_resources(self, type_url: str) -> Sequence[XdsResource]:
        """Resources of one type accepted over xDS (empty when none or no xDS)."""
        ...

    def loggers(self) -> Mapping[str, str]:
        """Logger name -> level name (trace debug info warning error critical off)."""
        ...

    def healthcheck_fail(self) -> Awaitable[None] | None: ...

    def healthcheck_ok(self) -> Awaitable[None] | None: ...

    def drain_listeners(self, inbound_only: bool, graceful: bool) -> Awaitable[None] | None:
        """Start draining; the admin answers at once and does not wait for the drain to end."""
        ...

    def quit(self) -> Awaitable[None] | None:
        """Shut down; called after the "OK" reply is written."""
        ...

    def set_log_level(self, level: str | None, paths: Mapping[str, str]) -> Awaitable[None] | None:
        """Set every logger to `level` (when not None), then each `paths` logger to its level.
        Names and levels were checked against `loggers()` before the call."""
        ...

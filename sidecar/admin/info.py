"""/server_info, /clusters, /listeners and /memory: read-only views in Envoy's shapes.

Text formats copy source/server/admin/clusters_handler.cc and listeners_handler.cc; JSON copies
envoy.admin.v3 ServerInfo, Clusters and Listeners as Envoy's proto-to-JSON prints them (snake_case
names, zero values left out, uint64 values as strings)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sidecar.admin.context import CLUSTER_TYPE, AdminContext, HostInfo
from sidecar.admin.protojson import address_json, bootstrap_of, static_resources
from sidecar.admin.request import JSON, Request, Response, dumps, json_response, text
from sidecar.admin.stats_pages import compile_filter, effective_state, memory_bytes

try:  # the package version names us in /server_info
    from importlib.metadata import version as _pkg_version

    SIDECAR_VERSION = _pkg_version("sidecar")
except Exception:  # not installed (running from a checkout)
    SIDECAR_VERSION = "0.0.0"

# The Envoy release whose admin API and behaviour we copy.
ENVOY_COMPAT_VERSION = "1.40.0"
# Envoy's version string is "<revision>/<version>/<status>/<build type>/<ssl>"; tools split on
# '/' and read the second field, so that stays Envoy's and the first names us.
VERSION = f"sidecar-{SIDECAR_VERSION}/{ENVOY_COMPAT_VERSION}/Clean/RELEASE/OpenSSL"

# Envoy's circuit breaker defaults (config.cluster.v3.CircuitBreakers.Thresholds).
_CB_DEFAULTS = {"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024, "max_retries": 3}
_HOST_COUNTERS = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout", "rq_total")
_HOST_GAUGES = ("cx_active", "rq_active", "rq_pending_active")
# EDS health status -> the flag /clusters prints for it (HostUtility::healthFlagsToString order).
_EDS_FLAGS = {
    "UNHEALTHY": "failed_eds_health",
    "TIMEOUT": "failed_eds_health",
    "DEGRADED": "degraded_eds_health",
    "DRAINING": "eds_status_draining",
}
_FLAG_ORDER = (
    "failed_active_hc",
    "failed_outlier_check",
    "failed_eds_health",
    "degraded_active_hc",
    "degraded_eds_health",
    "pending_dynamic_removal",
    "pending_active_hc",
    "excluded_via_immediate_hc_fail",
    "active_hc_timeout",
    "eds_status_draining",
)
# HostHealthStatus JSON field for each flag.
_FLAG_JSON = {
    "failed_active_hc": "failed_active_health_check",
    "failed_outlier_check": "failed_outlier_check",
    "degraded_active_hc": "failed_active_degraded_check",
    "pending_dynamic_removal": "pending_dynamic_removal",
    "pending_active_hc": "pending_active_hc",
    "excluded_via_immediate_hc_fail": "excluded_via_immediate_hc_fail",
    "active_hc_timeout": "active_hc_timeout",
}


def _static_names(ctx: AdminContext, key: str) -> set[str]:
    return {str(i.get("name", "")) for i in static_resources(ctx.snapshot, key)}


def _cluster_configs(ctx: AdminContext) -> dict[str, Mapping[str, Any]]:
    """Each cluster's config JSON (bootstrap static ones, then xDS ones) by name."""
    out: dict[str, Mapping[str, Any]] = {}
    for c in static_resources(ctx.snapshot, "clusters"):
        out[str(c.get("name", ""))] = c
    for r in ctx.xds_resources(CLUSTER_TYPE):
        out[r.name] = r.resource
    return out


def _thresholds(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """[default, high] circuit breaker thresholds with Envoy's defaults filled in."""
    result = []
    given = (cfg.get("circuit_breakers") or {}).get("thresholds") or ()
    for priority in ("DEFAULT", "HIGH"):
        t: dict[str, Any] = dict(_CB_DEFAULTS)
        for g in given:
            if isinstance(g, Mapping) and g.get("priority", "DEFAULT") == priority:
                for k in _CB_DEFAULTS:
                    if k in g:
                        v = g[k]
                        t[k] = int(v["value"] if isinstance(v, Mapping) else v)
        result.append(t)
    return result


def _flags(h: HostInfo) -> list[str]:
    flags = set(h.health_flags)
    eds_flag = _EDS_FLAGS.get(h.eds_health_status)
    if eds_flag:
        flags.add(eds_flag)
    return [f for f in _FLAG_ORDER if f in flags]


def _fmt_rate(v: float) -> str:
    return f"{v:g}"


def _cluster_lines(ctx: AdminContext, name: str, cfg: Mapping[str, Any], static: set[str]) -> Iterator[str]:
    obs = str(cfg.get("alt_stat_name") or name)
    yield f"{name}::observability_name::{obs}\n"
    if cfg.get("outlier_detection") is not None:
        for key in (
            "success_rate_average",
            "success_rate_ejection_threshold",
            "local_origin_success_rate_average",
            "local_origin_success_rate_ejection_threshold",
        ):
            yield f"{name}::outlier::{key}::-1\n"
    for label, t in zip(("default", "high"), _thresholds(cfg), strict=True):
        for key in _CB_DEFAULTS:
            yield f"{name}::{label}_priority::{key}::{t[key]}\n"
    yield f"{name}::added_via_api::{'false' if name in static else 'true'}\n"
    eds_name = (cfg.get("eds_cluster_config") or {}).get("service_name")
    if eds_name:
        yield f"{name}::eds_service_name::{eds_name}\n"
    for h in ctx.cluster_hosts(name):
        p = f"{name}::{h.address}::"
        for stat in sorted(_HOST_COUNTERS + _HOST_GAUGES):
            yield f"{p}{stat}::{getattr(h, stat)}\n"
        flags = _flags(h)
        yield f"{p}hostname::{h.hostname}\n"
        yield f"{p}health_flags::{''.join('/' + f for f in flags) if flags else 'healthy'}\n"
        yield f"{p}weight::{h.weight}\n{p}region::{h.region}\n{p}zone::{h.zone}\n{p}sub_zone::{h.sub_zone}\n"
        yield f"{p}canary::false\n{p}priority::{h.priority}\n"
        yield f"{p}success_rate::{_fmt_rate(h.success_rate)}\n"
        yield f"{p}local_origin_success_rate::{_fmt_rate(h.local_origin_success_rate)}\n"


def _host_json(h: HostInfo) -> dict[str, Any]:
    stats: list[dict[str, Any]] = []
    for stat in _HOST_COUNTERS:
        v = getattr(h, stat)
        stats.append({"value": str(v), "name": stat} if v else {"name": stat})
    for stat in _HOST_GAUGES:
        v = getattr(h, stat)
        stats.append(
            {"type": "GAUGE", "value": str(v), "name": stat} if v else {"type": "GAUGE", "name": stat}
        )
    health: dict[str, Any] = {_FLAG_JSON[f]: True for f in _flags(h) if f in _FLAG_JSON}
    health["eds_health_status"] = h.eds_health_status
    out: dict[str, Any] = {"address": address_json(h.address), "stats": stats, "health_status": health}
    if h.success_rate >= 0:
        out["success_rate"] = {"value": h.success_rate}
    if h.weight:
        out["weight"] = h.weight
    if h.hostname:
        out["hostname"] = h.hostname
    if h.priority:
        out["priority"] = h.priority
    if h.local_origin_success_rate >= 0:
        out["local_origin_success_rate"] = {"value": h.local_origin_success_rate}
    locality = {k: v for k, v in (("region", h.region), ("zone", h.zone), ("sub_zone", h.sub_zone)) if v}
    out["locality"] = locality
    return out


def clusters(ctx: AdminContext, req: Request) -> Response:
    regex = None
    if req.query.get("filter"):
        compiled = compile_filter(req.query["filter"])
        if isinstance(compiled, str):
            return text("Invalid re2 regex", 400)
        regex = compiled
    configs = _cluster_configs(ctx)
    static = _static_names(ctx, "clusters")
    names = [n for n in ctx.snapshot.clusters if regex is None or regex.search(n) is not None]
    if req.query.get("format") == "json":
        statuses = []
        for name in names:
            cfg = configs.get(name, {})
            status: dict[str, Any] = {"name": name}
            if name not in static:
                status["added_via_api"] = True
            status["host_statuses"] = [_host_json(h) for h in ctx.cluster_hosts(name)]
            default, high = _thresholds(cfg)
            status["circuit_breakers"] = {"thresholds": [default, {"priority": "HIGH", **high}]}
            status["observability_name"] = str(cfg.get("alt_stat_name") or name)
            eds_name = (cfg.get("eds_cluster_config") or {}).get("service_name")
            if eds_name:
                status["eds_service_name"] = eds_name
            statuses.append(status)
        return json_response({"cluster_statuses": statuses} if statuses else {})
    return text("".join(line for n in names for line in _cluster_lines(ctx, n, configs.get(n, {}), static)))


def listeners(ctx: AdminContext, req: Request) -> Response:
    bound = ctx.listener_addresses()
    if req.query.get("format") == "json":
        statuses = [{"name": n, "local_address": address_json(a)} for n, a in bound]
        return json_response({"listener_statuses": statuses} if statuses else {})
    return text("".join(f"{n}::{a}\n" for n, a in bound))


def memory(ctx: AdminContext, req: Request) -> Response:
    rss, data = memory_bytes()
    return json_response(
        {
            "allocated": str(rss),
            "heap_size": str(data),
            "pageheap_unmapped": "0",
            "pageheap_free": "0",
            "total_thread_cache": "0",
            "total_physical_bytes": str(rss),
        }
    )


# -- /server_info --------------------------------------------------------------------------------
# Envoy's command_line_options with their defaults (admin.v3.CommandLineOptions), in its order.
def _default_options() -> dict[str, Any]:
    return {
        "base_id": "0",
        "concurrency": 1,
        "config_path": "",
        "config_yaml": "",
        "allow_unknown_static_fields": False,
        "admin_address_path": "",
        "local_address_ip_version": "v4",
        "log_level": "info",
        "component_log_level": "",
        "log_format": "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v",
        "log_path": "",
        "service_cluster": "",
        "service_node": "",
        "service_zone": "",
        "file_flush_interval": "10s",
        "drain_time": "600s",
        "parent_shutdown_time": "900s",
        "mode": "Serve",
        "disable_hot_restart": False,
        "enable_mutex_tracing": False,
        "restart_epoch": 0,
        "cpuset_threads": False,
        "reject_unknown_dynamic_fields": False,
        "log_format_escaped": False,
        "disabled_extensions": [],
        "ignore_unknown_dynamic_fields": False,
        "use_dynamic_base_id": False,
        "base_id_path": "",
        "drain_strategy": "Gradual",
        "enable_fine_grain_logging": False,
        "socket_path": "@envoy_domain_socket",
        "socket_mode": 0,
        "enable_core_dump": False,
        "stats_tag": [],
        "skip_hot_restart_on_no_parent": False,
        "skip_hot_restart_parent_stats": False,
        "skip_deprecated_logs": False,
        "file_flush_min_size": 0,
        "log_stacktrace_single_entry": False,
    }


_STRING_FLAGS = {
    "-c": "config_path",
    "--config-path": "config_path",
    "--config-yaml": "config_yaml",
    "-l": "log_level",
    "--log-level": "log_level",
    "--component-log-level": "component_log_level",
    "--log-format": "log_format",
    "--log-path": "log_path",
    "--service-cluster": "service_cluster",
    "--service-node": "service_node",
    "--service-zone": "service_zone",
    "--local-address-ip-version": "local_address_ip_version",
    "--admin-address-path": "admin_address_path",
    "--base-id": "base_id",
    "--base-id-path": "base_id_path",
    "--socket-path": "socket_path",
}
_INT_FLAGS = {"--restart-epoch": "restart_epoch", "--socket-mode": "socket_mode"}
_SECONDS_FLAGS = {"--drain-time-s": "drain_time", "--parent-shutdown-time-s": "parent_shutdown_time"}
_BOOL_FLAGS = {
    "--disable-hot-restart": "disable_hot_restart",
    "--allow-unknown-static-fields": "allow_unknown_static_fields",
    "--reject-unknown-dynamic-fields": "reject_unknown_dynamic_fields",
    "--ignore-unknown-dynamic-fields": "ignore_unknown_dynamic_fields",
    "--enable-core-dump": "enable_core_dump",
    "--use-dynamic-base-id": "use_dynamic_base_id",
    "--cpuset-threads": "cpuset_threads",
    "--log-format-escaped": "log_format_escaped",
    "--enable-fine-grain-logging": "enable_fine_grain_logging",
    "--skip-deprecated-logs": "skip_deprecated_logs",
    "--enable-mutex-tracing": "enable_mutex_tracing",
}
_MODES = {"serve": "Serve", "validate": "Validate", "init_only": "InitOnly"}


def _duration(seconds: float) -> str:
    """google.protobuf.Duration JSON: "10s", "0.500s"."""
    whole = int(seconds)
    frac = round((seconds - whole) * 1000)
    return f"{whole}s" if not frac else f"{whole}.{frac:03d}s"


def command_line_options(argv: Sequence[str], concurrency: int) -> dict[str, Any]:
    opts = _default_options()
    args = list(argv[1:])
    i = 0
    while i < len(args) and i < 1000:
        flag, eq, inline = args[i].partition("=")
        takes_value = (
            flag in _STRING_FLAGS
            or flag in _INT_FLAGS
            or flag in _SECONDS_FLAGS
            or flag in ("--file-flush-interval-msec", "--drain-strategy", "--mode", "--concurrency")
        )
        value = inline if eq else (args[i + 1] if takes_value and i + 1 < len(args) else "")
        i += 1 if eq or not takes_value else 2
        try:
            if flag in _STRING_FLAGS:
                opts[_STRING_FLAGS[flag]] = value
            elif flag in _INT_FLAGS:
                opts[_INT_FLAGS[flag]] = int(value)
            elif flag in _SECONDS_FLAGS:
                opts[_SECONDS_FLAGS[flag]] = _duration(float(value))
            elif flag == "--file-flush-interval-msec":
                opts["file_flush_interval"] = _duration(int(value) / 1000)
            elif flag == "--drain-strategy":
                opts["drain_strategy"] = "Immediate" if value == "immediate" else "Gradual"
            elif flag == "--mode":
                opts["mode"] = _MODES.get(value, "Serve")
            elif flag in _BOOL_FLAGS:
                opts[_BOOL_FLAGS[flag]] = inline.lower() != "false" if eq else True
        except ValueError:
            continue  # the runtime validated argv; an odd value only keeps the default here
    opts["concurrency"] = concurrency
    return opts


def _node_json(ctx: AdminContext) -> dict[str, Any]:
    given = bootstrap_of(ctx.snapshot).get("node")
    if isinstance(given, Mapping):
        node = dict(given)
    else:
        n = ctx.snapshot.node
        node = {"id": n.id, "cluster": n.cluster, "metadata": dict(n.metadata)}
        if n.zone:
            node["locality"] = {"zone": n.zone}
    node.setdefault("user_agent_name", "envoy")
    major, minor, patch = (int(x) for x in ENVOY_COMPAT_VERSION.split("."))
    node.setdefault(
        "user_agent_build_version",
        {
            "version": {"major_number": major, "minor_number": minor, "patch": patch},
            "metadata": {
                "build.type": "RELEASE",
                "revision.status": "Clean",
                "sidecar.version": SIDECAR_VERSION,
            },
        },
    )
    return node


def server_info(ctx: AdminContext, req: Request) -> Response:
    uptime = _duration(max(0, int(ctx.now() - ctx.start_time)))
    return Response(
        200,
        dumps(
            {
                "version": VERSION,
                "state": effective_state(ctx),
                "uptime_current_epoch": uptime,
                "uptime_all_epochs": uptime,
                "hot_restart_version": "disabled",
                "command_line_options": command_line_options(ctx.command_line, ctx.concurrency),
                "node": _node_json(ctx),
                "hot_restart_initializing": False,
            }
        ),
        JSON,
    )

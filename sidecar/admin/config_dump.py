"""/config_dump in Envoy's envoy.admin.v3.ConfigDump shape, with ?resource=, ?mask=, ?name_regex=
and ?include_eds (source/server/admin/config_dump_handler.cc).

The dump is built from the bootstrap JSON (static resources) and the xDS resources the runtime
accepted, both as snake_case proto JSON.  Sensitive fields (private keys, passwords, generic
secrets) are replaced by "[redacted]" as Envoy's MessageUtil::redact does.  Field masks are applied
to the JSON: a path may not cross a repeated field (protobuf FieldMask semantics), and a message
packed in an Any keeps its "@type"."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import re2

from sidecar.admin.context import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
    AdminContext,
    XdsResource,
)
from sidecar.admin.protojson import (
    address_json,
    bootstrap_of,
    redact,
    snake_case,
    static_resources,
    timestamp,
)
from sidecar.admin.request import PLAIN, Request, Response, json_response, text
from sidecar.model.cluster import DiscoveryType

_ADMIN = "type.googleapis.com/envoy.admin.v3."
_HCM_SUFFIX = ".HttpConnectionManager"
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False

# For each repeated section: (dump message, element message, the element field holding the
# resource, where its name is).  Used by ?resource= and ?name_regex=.
_SECTIONS: dict[str, tuple[str, str, str]] = {
    "static_clusters": ("ClustersConfigDump", "StaticCluster", "cluster.name"),
    "dynamic_active_clusters": ("ClustersConfigDump", "DynamicCluster", "cluster.name"),
    "dynamic_warming_clusters": ("ClustersConfigDump", "DynamicCluster", "cluster.name"),
    "static_endpoint_configs": (
        "EndpointsConfigDump",
        "StaticEndpointConfig",
        "endpoint_config.cluster_name",
    ),
    "dynamic_endpoint_configs": (
        "EndpointsConfigDump",
        "DynamicEndpointConfig",
        "endpoint_config.cluster_name",
    ),
    "static_listeners": ("ListenersConfigDump", "StaticListener", "listener.name"),
    "dynamic_listeners": ("ListenersConfigDump", "DynamicListener", "name"),
    "static_route_configs": ("RoutesConfigDump", "StaticRouteConfig", "route_config.name"),
    "dynamic_route_configs": ("RoutesConfigDump", "DynamicRouteConfig", "route_config.name"),
    "static_secrets": ("SecretsConfigDump", "StaticSecret", "name"),
    "dynamic_active_secrets": ("SecretsConfigDump", "DynamicSecret", "name"),
    "dynamic_warming_secrets": ("SecretsConfigDump", "DynamicSecret", "name"),
}
# Fields of each dump message and element message (for validating mask paths).
_FIELDS: dict[str, frozenset[str]] = {
    "BootstrapConfigDump": frozenset({"bootstrap", "last_updated"}),
    "ClustersConfigDump": frozenset(
        {"version_info", "static_clusters", "dynamic_active_clusters", "dynamic_warming_clusters"}
    ),
    "EndpointsConfigDump": frozenset({"static_endpoint_configs", "dynamic_endpoint_configs"}),
    "ListenersConfigDump": frozenset({"version_info", "static_listeners", "dynamic_listeners"}),
    "ScopedRoutesConfigDump": frozenset({"inline_scoped_route_configs", "dynamic_scoped_route_configs"}),
    "RoutesConfigDump": frozenset({"static_route_configs", "dynamic_route_configs"}),
    "SecretsConfigDump": frozenset({"static_secrets", "dynamic_active_secrets", "dynamic_warming_secrets"}),
    "StaticCluster": frozenset({"cluster", "last_updated"}),
    "DynamicCluster": frozenset({"version_info", "cluster", "last_updated", "error_state", "client_status"}),
    "StaticEndpointConfig": frozenset({"endpoint_config", "last_updated"}),
    "DynamicEndpointConfig": frozenset(
        {"version_info", "endpoint_config", "last_updated", "error_state", "client_status"}
    ),
    "StaticListener": frozenset({"listener", "last_updated"}),
    "DynamicListener": frozenset(
        {"name", "active_state", "warming_state", "draining_state", "error_state", "client_status"}
    ),
    "StaticRouteConfig": frozenset({"route_config", "last_updated"}),
    "DynamicRouteConfig": frozenset(
        {"version_info", "route_config", "last_updated", "error_state", "client_status"}
    ),
    "StaticSecret": frozenset({"name", "last_updated", "secret"}),
    "DynamicSecret": frozenset(
        {"name", "version_info", "last_updated", "secret", "error_state", "client_status"}
    ),
}


def _resource(r: XdsResource, type_url: str) -> dict[str, Any]:
    body = snake_case(r.resource, type_url.rsplit("/", 1)[-1])
    return {"@type": type_url, **{k: v for k, v in body.items() if k != "@type"}}


# -- building the dump --------------------------------------------------------------------------
def _version(resources: Iterable[XdsResource]) -> str:
    latest = max(resources, key=lambda r: r.last_updated, default=None)
    return latest.version_info if latest is not None else ""


def _inline_routes(listener: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    chains = list(listener.get("filter_chains") or ())
    if isinstance(listener.get("default_filter_chain"), Mapping):
        chains.append(listener["default_filter_chain"])
    for chain in chains:
        for f in (chain.get("filters") or ()) if isinstance(chain, Mapping) else ():
            cfg = f.get("typed_config") if isinstance(f, Mapping) else None
            if isinstance(cfg, Mapping) and str(cfg.get("@type", "")).endswith(_HCM_SUFFIX):
                rc = cfg.get("route_config")
                if isinstance(rc, Mapping):
                    yield rc


def _static_endpoints(ctx: AdminContext, name: str) -> dict[str, Any]:
    by_priority: dict[int, list[dict[str, Any]]] = {}
    for h in ctx.cluster_hosts(name):
        ep: dict[str, Any] = {"address": address_json(h.address), "health_check_config": {}}
        if h.hostname:
            ep["hostname"] = h.hostname
        by_priority.setdefault(h.priority, []).append(
            {"endpoint": ep, "health_status": h.eds_health_status, "load_balancing_weight": h.weight}
        )
    groups = []
    for priority in sorted(by_priority):
        group: dict[str, Any] = {
            "locality": {},
            "lb_endpoints": by_priority[priority],
            "load_balancing_weight": 0,
        }
        if priority:
            group["priority"] = priority
        groups.append(group)
    cla: dict[str, Any] = {"@type": ENDPOINT_TYPE, "cluster_name": name}
    if groups:
        cla["endpoints"] = groups
    cla["policy"] = {"overprovisioning_factor": 140}
    return cla


def build(ctx: AdminContext, include_eds: bool) -> list[dict[str, Any]]:
    """Every config dump message, in Envoy's order."""
    start = timestamp(ctx.start_time)
    boot = bootstrap_of(ctx.snapshot)
    configs: list[dict[str, Any]] = [
        {"@type": _ADMIN + "BootstrapConfigDump", "bootstrap": boot, "last_updated": start}
    ]

    def section(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        return {"@type": _ADMIN + kind, **{k: v for k, v in fields.items() if v}}

    cds = ctx.xds_resources(CLUSTER_TYPE)
    configs.append(
        section(
            "ClustersConfigDump",
            {
                "version_info": _version(cds),
                "static_clusters": [
                    {"cluster": {"@type": CLUSTER_TYPE, **c}, "last_updated": start}
                    for c in sorted(
                        static_resources(ctx.snapshot, "clusters"), key=lambda c: str(c.get("name", ""))
                    )
                ],
                "dynamic_active_clusters": [
                    {
                        "version_info": r.version_info,
                        "cluster": _resource(r, CLUSTER_TYPE),
                        "last_updated": timestamp(r.last_updated),
                    }
                    for r in cds
                    if not r.warming
                ],
                "dynamic_warming_clusters": [
                    {
                        "version_info": r.version_info,
                        "cluster": _resource(r, CLUSTER_TYPE),
                        "last_updated": timestamp(r.last_updated),
                    }
                    for r in cds
                    if r.warming
                ],
            },
        )
    )
    if include_eds:
        static_eps = [
            {"endpoint_config": _static_endpoints(ctx, n)}
            for n, c in ctx.snapshot.clusters.items()
            if c.type is not DiscoveryType.EDS
        ]
        configs.append(
            section(
                "EndpointsConfigDump",
                {
                    "static_endpoint_configs": static_eps,
                    # Envoy (ClusterManagerImpl's endpoint dump) writes, for each cluster added
                    # via CDS, only endpoint_config, built from its current hosts (not the last
                    # ClusterLoadAssignment received): no version_info, no last_updated.
                    "dynamic_endpoint_configs": [
                        {"endpoint_config": _static_endpoints(ctx, r.name)} for r in cds if not r.warming
                    ],
                },
            )
        )
    lds = ctx.xds_resources(LISTENER_TYPE)
    static_listeners = sorted(
        static_resources(ctx.snapshot, "listeners"), key=lambda x: str(x.get("name", ""))
    )
    dynamic_listeners = [
        {
            "name": r.name,
            ("warming_state" if r.warming else "active_state"): {
                "version_info": r.version_info,
                "listener": _resource(r, LISTENER_TYPE),
                "last_updated": timestamp(r.last_updated),
            },
        }
        for r in lds
    ]
    configs.append(
        section(
            "ListenersConfigDump",
            {
                "version_info": _version(lds),
                "static_listeners": [
                    {"listener": {"@type": LISTENER_TYPE, **x}, "last_updated": start}
                    for x in static_listeners
                ],
                "dynamic_listeners": dynamic_listeners,
            },
        )
    )
    configs.append(section("ScopedRoutesConfigDump", {}))
    inline = [rc for x in static_listeners for rc in _inline_routes(x)]
    inline += [rc for r in lds for rc in _inline_routes(_resource(r, LISTENER_TYPE))]
    configs.append(
        section(
            "RoutesConfigDump",
            {
                "static_route_configs": [
                    {"route_config": {"@type": ROUTE_TYPE, **rc}, "last_updated": start} for rc in inline
                ],
                "dynamic_route_configs": [
                    {
                        "version_info": r.version_info,
                        "route_config": _resource(r, ROUTE_TYPE),
                        "last_updated": timestamp(r.last_updated),
                    }
                    for r in ctx.xds_resources(ROUTE_TYPE)
                ],
            },
        )
    )
    sds = ctx.xds_resources(SECRET_TYPE)

    def dyn_secret(r: XdsResource) -> dict[str, Any]:
        out: dict[str, Any] = {"name": r.name}
        if r.version_info:
            out["version_info"] = r.version_info
        if r.last_updated:  # a warming secret (subscribed, nothing received) has neither
            out["last_updated"] = timestamp(r.last_updated)
        out["secret"] = _resource(r, SECRET_TYPE)
        return out

    configs.append(
        section(
            "SecretsConfigDump",
            {
                "static_secrets": [
                    {"name": s.get("name", ""), "secret": {"@type": SECRET_TYPE, **s}}
                    for s in static_resources(ctx.snapshot, "secrets")
                ],
                "dynamic_active_secrets": [dyn_secret(r) for r in sds if not r.warming],
                "dynamic_warming_secrets": [dyn_secret(r) for r in sds if r.warming],
            },
        )
    )
    return [redact(c) for c in configs]


# -- query parameters ---------------------------------------------------------------------------
class _InvalidPath(Exception):
    pass


def _get(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj


def _copy_path(src: Mapping[str, Any], dst: dict[str, Any], path: list[str]) -> None:
    key = path[0]
    if key not in src:
        return
    value = src[key]
    if len(path) == 1:
        dst[key] = value
        return
    if not isinstance(value, Mapping):
        raise _InvalidPath(key)  # a repeated or scalar field cannot be crossed
    sub = dst.setdefault(key, {"@type": value["@type"]} if "@type" in value else {})
    _copy_path(value, sub, path[1:])


def _trim(obj: Mapping[str, Any], kind: str, paths: list[list[str]]) -> dict[str, Any] | None:
    """`obj` cut down to `paths`; None when a path is not valid for `kind`."""
    if any(p[0] not in _FIELDS.get(kind, ()) for p in paths):
        return None
    out: dict[str, Any] = {"@type": obj["@type"]} if "@type" in obj else {}
    try:
        for p in paths:
            _copy_path(obj, out, p)
    except _InvalidPath:
        return None
    return out


def handle(ctx: AdminContext, req: Request) -> Response:
    q = req.query
    resource, mask, name_regex = q.get("resource", ""), q.get("mask", ""), q.get("name_regex", "")
    matcher = None
    if name_regex:
        try:
            matcher = re2.compile(name_regex, _RE2_OPTIONS)
        except re2.error as e:
            detail = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else ""
            return text(
                f"INVALID_ARGUMENT: Error while parsing name_regex from {name_regex}: {detail}", 400, PLAIN
            )
    paths = [p.split(".") for p in mask.split(",") if p] if mask else []
    if resource and resource not in _SECTIONS:
        return text(f"{resource} not found in config dump", 404, PLAIN)
    configs = build(ctx, "include_eds" in q or resource.endswith("endpoint_configs"))

    def keep(element: Mapping[str, Any], name_at: str) -> bool:
        return matcher is None or matcher.fullmatch(str(_get(element, name_at) or "")) is not None

    if matcher is not None:
        for c in configs:
            for section, (_, _, name_at) in _SECTIONS.items():
                if section in c:
                    c[section] = [e for e in c[section] if keep(e, name_at)]
                    if not c[section]:
                        del c[section]
    if resource:
        dump_kind, elem_kind, _ = _SECTIONS[resource]
        if resource.endswith("endpoint_configs") and "include_eds" not in q:
            return text(f"{resource} not found in config dump", 404, PLAIN)
        out = []
        for c in configs:
            if c["@type"] != _ADMIN + dump_kind:
                continue
            for entry in c.get(resource, ()):
                element = {"@type": f"{_ADMIN}{dump_kind}.{elem_kind}", **entry}
                if paths:
                    trimmed = _trim(element, elem_kind, paths)
                    if trimmed is None:
                        return text(f"FieldMask {mask} could not be successfully used.", 400, PLAIN)
                    element = trimmed
                out.append(element)
        return json_response({"configs": out} if out else {})
    if paths:
        trimmed_all = [
            t for c in configs if (t := _trim(c, c["@type"].rsplit(".", 1)[-1], paths)) is not None
        ]
        if not trimmed_all:
            return text(f"FieldMask {mask} could not be successfully applied to any configs.", 400, PLAIN)
        configs = trimmed_all
    return json_response({"configs": configs})

"""The bootstrap: load it as Envoy does (file, then --config-yaml merged over it) and translate its
node, admin and static_resources into a Snapshot.

Loading follows InstanceUtil::loadBootstrapConfig: `.yaml`/`.yml` files are YAML, anything else
JSON; --config-yaml is parsed into its own Bootstrap and merged with protobuf MergeFrom semantics
(scalars replaced, messages merged, repeated fields appended).  Unknown JSON fields are errors
unless --allow-unknown-static-fields.  Every set Bootstrap field is translated, refused with its path,
or (when it cannot change what a client observes: stats, runtime, watchdogs ...) ignored with a log
line.  No I/O except reading the one config file."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from sidecar.model.cluster import Cluster
from sidecar.model.listener import Listener
from sidecar.model.snapshot import Admin, Node, Snapshot
from sidecar.model.tracing import Zipkin

# cds and lds import the typed configs we implement, so they are registered before any JSON is
# parsed; other types are imported on demand by common.preload_types.
from sidecar.translate import cds, lds, tracing
from sidecar.translate.common import preload_types, socket_address
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields
from sidecar.translate.tls import check_static_secret_refs, translate_static_secrets
from sidecar.xds.node import NodeOptions  # (the command-line values that shape the node)

# Bootstrap fields that change nothing a client can observe here: stats plumbing, runtime layers,
# watchdogs, DNS resolver choice, extensions for features we do not have.  Logged once, then ignored.
_BOOTSTRAP_IGNORED = (
    "node_context_params",
    "flags_path",
    "stats_sinks",
    "deferred_stat_options",
    "stats_config",
    "stats_flush_interval",
    "stats_flush_on_admin",
    "stats_eviction_interval",
    "watchdog",
    "watchdogs",
    "layered_runtime",
    "overload_manager",
    "enable_dispatcher_stats",
    "stats_server_version_override",
    "use_tcp_for_dns_lookups",
    "dns_resolution_config",
    "typed_dns_resolver_config",
    "bootstrap_extensions",
    "fatal_actions",
    "config_sources",
    "default_config_source",
    "default_socket_interface",
    "inline_headers",
    "perf_tracing_file_path",
    "default_regex_engine",
    "xds_delegate_extension",
    "xds_config_tracker_extension",
    "listener_manager",
    "application_log_config",
    "grpc_async_client_manager_config",
    "memory_allocator_manager",
)
_BOOTSTRAP_HANDLED = ("node", "static_resources", "admin", "cluster_manager", "dynamic_resources", "tracing")


# --------------------------------------------------------------------------------------- loading


class _YamlLoader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """Safe YAML without YAML 1.1 timestamps: Envoy keeps `2024-01-01` a string, JSON has no dates."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _parse_text(text: str, where: str, as_yaml: bool) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_YamlLoader) if as_yaml else json.loads(text)
    except yaml.YAMLError as e:
        raise ConfigError(where, f"Unable to parse YAML: {e}") from None
    except ValueError as e:
        raise ConfigError(where, f"Unable to parse JSON: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(where, f"the bootstrap must be a mapping, not {type(data).__name__}")
    return data


def _to_proto(data: dict[str, Any], allow_unknown_fields: bool, where: str) -> bootstrap_pb2.Bootstrap:
    preload_types(data)
    pb = bootstrap_pb2.Bootstrap()
    try:
        json_format.ParseDict(data, pb, ignore_unknown_fields=allow_unknown_fields)
    except json_format.ParseError as e:
        path, reason = _parse_error(str(e))
        raise ConfigError(path or where, reason) from None
    except (TypeError, ValueError, AttributeError) as e:  # e.g. a YAML key that is not a string
        raise ConfigError(where, f"Unable to parse JSON as proto: {e}") from None
    return pb


def load_bootstrap(
    config_path: str | None, config_yaml: str | None, allow_unknown_fields: bool
) -> bootstrap_pb2.Bootstrap:
    """The Bootstrap from -c and --config-yaml (merged over the file, repeated fields appended)."""
    if not config_path and not config_yaml:
        raise ConfigError(
            "--config-path",
            "At least one of --config-path or --config-yaml or Options::configProto() should be non-empty",
        )
    pb = bootstrap_pb2.Bootstrap()
    if config_path:
        lower = config_path.lower()
        if lower.endswith((".pb", ".pb_text")):
            raise ConfigError(
                config_path,
                "binary and text protobuf bootstraps (.pb, .pb_text) are not supported: use JSON or YAML",
            )
        try:
            with open(config_path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            raise ConfigError(config_path, f"Invalid path: {config_path}") from None
        as_yaml = lower.endswith((".yaml", ".yml"))
        pb = _to_proto(_parse_text(text, config_path, as_yaml), allow_unknown_fields, config_path)
    if config_yaml:
        overlay = _parse_text(config_yaml, "--config-yaml", True)
        pb.MergeFrom(_to_proto(overlay, allow_unknown_fields, "--config-yaml"))
    return pb


_FAILED = re.compile(r"Failed to parse (\w+) field: ")
_AT = re.compile(r' at "?Bootstrap\.?([^"\s]*?)"?\.*$')
_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "([^"]+)"')


def _parse_error(message: str) -> tuple[str, str]:
    """(field path, reason) from json_format's nested ParseError text."""
    text = message.split("\n Available Fields", 1)[0].strip()
    chain = _FAILED.findall(text)
    text = _FAILED.sub("", text)
    path = ".".join(chain)
    m = _AT.search(text)
    if m:
        path = m.group(1)
        text = text[: m.start()]
    text = text.rstrip(".")
    unknown = _NO_FIELD.search(text)
    if unknown:
        path = f"{path}.{unknown.group(2)}" if path else unknown.group(2)
        return path, f"unknown field '{unknown.group(2)}' in {unknown.group(1)}"
    if text.startswith("Can not find message descriptor by type_url: "):
        url = text.split(": ", 1)[1]
        return path, f"unknown type URL '{url}' (no message type of that name in this build)"
    return path, text


# ----------------------------------------------------------------------------------- translation


def translate_bootstrap(pb: bootstrap_pb2.Bootstrap, options: NodeOptions) -> Snapshot:
    """Node, admin and static_resources as a Snapshot; clusters first, so that inline route tables
    can be checked against them (RouteConfiguration.validate_clusters)."""
    _check_bootstrap(pb)
    if pb.HasField("cluster_manager"):
        # local_cluster_name only feeds zone-aware routing; outlier_detection here is an event log.
        check_fields(
            pb.cluster_manager,
            "cluster_manager",
            handled=(),
            ignored=("local_cluster_name", "outlier_detection", "enable_deferred_cluster_creation"),
        )
    sr = pb.static_resources
    check_fields(sr, "static_resources", handled=("listeners", "clusters", "secrets"))
    secrets = translate_static_secrets(sr.secrets, "static_resources.secrets")
    clusters: dict[str, Cluster] = {}
    for i, c in enumerate(sr.clusters):
        cluster = cds.translate_cluster(c, f"static_resources.clusters[{i}]")
        if cluster.name in clusters:
            raise ConfigError(
                f"static_resources.clusters[{i}].name", f"cluster manager: duplicate cluster '{cluster.name}'"
            )
        clusters[cluster.name] = cluster
    if not pb.HasField("dynamic_resources"):
        for i, c in enumerate(sr.clusters):
            if c.type == c.EDS:
                raise ConfigError(f"static_resources.clusters[{i}].type", "EDS clusters need dynamic_resources")
    zipkin = _zipkin(pb)
    listeners: list[Listener] = []
    for i, lpb in enumerate(sr.listeners):
        path = f"static_resources.listeners[{i}]"
        listener = lds.translate_listener(lpb, path, clusters=clusters.keys())
        if not pb.HasField("dynamic_resources") and _uses_rds(listener):
            raise ConfigError(path, "connection managers with rds need dynamic_resources")
        _check_unique(listener, listeners, path)
        listeners.append(listener)
    check_static_secret_refs(clusters.values(), listeners, secrets)
    return Snapshot(
        listeners=tuple(listeners),
        clusters=clusters,
        admin=_admin(pb),
        node=_node(pb.node, options),
        secrets=secrets,
        zipkin=zipkin,
        bootstrap_json=json_format.MessageToDict(pb, preserving_proto_field_name=True),
    )


def _zipkin(pb: bootstrap_pb2.Bootstrap) -> Zipkin | None:
    """Bootstrap tracing.http (deprecated in Envoy, still what Istio sets): the default provider of
    traced connection managers.  Only Zipkin shapes what goes upstream (http/b3.py); another
    driver is kept as no provider (the trace reason in x-request-id is still set)."""
    if not pb.HasField("tracing"):
        return None
    check_fields(pb.tracing, "tracing", handled=("http",))
    if not pb.tracing.HasField("http"):
        return None
    check_fields(pb.tracing.http, "tracing.http", handled=("name", "typed_config"))
    return tracing.translate_zipkin(pb.tracing.http.typed_config, "tracing.http.typed_config")


def _check_bootstrap(pb: bootstrap_pb2.Bootstrap) -> None:
    if pb.HasField("dynamic_resources"):
        translate_dynamic(pb, None)  # refused here, with its path, rather than once serving
    try:
        check_fields(pb, "", _BOOTSTRAP_HANDLED, _BOOTSTRAP_IGNORED)
    except ConfigError as e:  # top-level fields: "header_prefix", not ".header_prefix"
        raise ConfigError(e.path.lstrip("."), e.reason) from None


def translate_dynamic(pb: bootstrap_pb2.Bootstrap, options: NodeOptions | None) -> Any:
    """(xds.config.DynamicResources, the xDS node proto) of a bootstrap with dynamic_resources, else
    None.  The node needs an id and a cluster when a subscription uses ADS (Envoy's
    LocalInfo check, "ads"); --service-* flags fill them in."""
    if not pb.HasField("dynamic_resources"):
        return None
    from sidecar.xds.config import translate_dynamic_resources  # xDS only when configured
    from sidecar.xds.node import build_node, check_local_info

    dynamic = translate_dynamic_resources(pb.dynamic_resources)
    node = build_node(pb.node if pb.HasField("node") else None, options)
    if options is not None and dynamic.ads is not None:
        check_local_info(node, "ads")
    return dynamic, node


def _uses_rds(listener: Listener) -> bool:
    chains = (*listener.filter_chains, listener.default_filter_chain)
    return any(getattr(f, "rds_name", "") for c in chains if c is not None for f in c.filters)


def _check_unique(listener: Listener, seen: list[Listener], path: str) -> None:
    for other in seen:
        # Envoy keeps the first of two static listeners with one name and drops the second without
        # a word; an error is kinder (this is always a mistake in a static file).
        if other.name == listener.name:
            raise ConfigError(f"{path}.name", f"listener manager: duplicate listener '{listener.name}'")
        # Port 0 asks the kernel for a fresh port, so two of those never clash.
        a, b = other.address, listener.address
        if (a.pipe and a.pipe == b.pipe) or (not a.pipe and a.port and (a.host, a.port) == (b.host, b.port)):
            raise ConfigError(
                f"{path}.address",
                f"error adding listener: '{listener.name}' has duplicate address '{b}' as existing listener",
            )


def _admin(pb: bootstrap_pb2.Bootstrap) -> Admin:
    if not pb.HasField("admin"):
        return Admin()
    admin = pb.admin
    # Admin access logs, profiling and the connection-limit exemption have no effect here.
    check_fields(
        admin,
        "admin",
        handled=("address",),
        ignored=("access_log", "access_log_path", "profile_path", "ignore_global_conn_limit"),
    )
    if not admin.HasField("address"):
        return Admin(access_log_path=admin.access_log_path)
    return Admin(
        address=socket_address(admin.address, "admin.address", resolve=False),
        access_log_path=admin.access_log_path,
    )


def _node(node: base_pb2.Node, options: NodeOptions) -> Node:
    check_fields(
        node,
        "node",
        handled=("id", "cluster", "metadata", "locality"),
        ignored=(
            "user_agent_name",
            "user_agent_version",
            "user_agent_build_version",
            "extensions",
            "client_features",
            "listening_addresses",
            "dynamic_parameters",
        ),
    )
    # --service-node/--service-cluster/--service-zone win over the bootstrap when given
    # (LocalInfoImpl: a non-empty command-line value replaces the node's), as envoy 1.40 shows.
    return Node(
        id=options.service_node or node.id,
        cluster=options.service_cluster or node.cluster,
        zone=options.service_zone or node.locality.zone,
        metadata=json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {},
    )

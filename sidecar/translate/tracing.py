"""HttpConnectionManager.tracing, request_id_extension and upgrade_configs -> model records.

Tracing: sidecar has no tracer.  What Envoy 1.40 puts on the wire for a traced connection manager
is done: the x-request-id trace-reason nibble (http/trace_reason.py) and, with a Zipkin provider
(inline, or the bootstrap's tracing.http: translate_zipkin), the B3 headers (http/b3.py).  No span
is started or reported, and no W3C traceparent is generated or changed (ZipkinConfig's
USE_B3_WITH_W3C_PROPAGATION is refused).  That is said once per process when a config asks for
tracing.

request_id_extension: only the uuid extension (Envoy's default); its two switches act on the
tracing decision only (model/tracing.py).

upgrade_configs: the enabled upgrade types (lowercased, as Envoy matches them case-insensitively).
CONNECT (it needs connect_config and a CONNECT-capable router) and upgrade `filters` are refused."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.trace.v3 import zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.request_id.uuid.v3 import uuid_pb2

from sidecar.model.listener import FilterChain, HttpConnectionManager
from sidecar.model.tracing import CustomTag, RequestIdExtension, Tracing, Zipkin
from sidecar.translate.common import bool_value, type_name
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields, opt_uint

log = logging.getLogger("sidecar.config")
_warned = False

ZIPKIN = zipkin_pb2.ZipkinConfig.DESCRIPTOR.full_name
UUID_REQUEST_ID = uuid_pb2.UuidRequestIdConfig.DESCRIPTOR.full_name
_TAG_SOURCES = ("literal", "environment", "request_header", "metadata", "value")


def _warn_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            "HttpConnectionManager.tracing: sidecar has no tracer; the x-request-id trace reason and "
            "(with a Zipkin provider) the x-b3-* / b3 headers are set as Envoy sets them, but no span "
            "is reported and no traceparent is generated or changed"
        )


def _percent(pb: hcm_pb2.HttpConnectionManager.Tracing, name: str, path: str) -> float:
    """A Percent field (envoy.type.v3.Percent, 0..100); Envoy's default is 100."""
    if not pb.HasField(name):
        return 100.0
    value: float = getattr(pb, name).value
    if not 0.0 <= value <= 100.0:
        raise ConfigError(f"{path}.{name}.value", "value must be inside range [0, 100]")
    return value


def translate_tracing(pb: hcm_pb2.HttpConnectionManager.Tracing, path: str) -> Tracing:
    check_fields(
        pb,
        path,
        handled=(
            "client_sampling",
            "random_sampling",
            "overall_sampling",
            "verbose",
            "max_path_tag_length",
            "custom_tags",
            "provider",
            "spawn_upstream_span",
        ),
    )
    _warn_once()
    tags = []
    for i, t in enumerate(pb.custom_tags):
        tp = f"{path}.custom_tags[{i}]"
        check_fields(t, tp, handled=("tag", *_TAG_SOURCES))
        if not t.tag:
            raise ConfigError(f"{tp}.tag", "value length must be at least 1 characters")
        kind = t.WhichOneof("type")
        if kind is None:
            raise ConfigError(tp, 'field: "type", reason: is required')
        source = getattr(t, kind)
        # literal: its value; value: the string itself; environment / request_header: the name read.
        value = ""
        if kind == "literal":
            value = source.value
        elif kind == "value":
            value = source
        elif kind in ("environment", "request_header"):
            value = source.name
        tags.append(CustomTag(tag=t.tag, kind=kind, value=value))
    provider = provider_name = ""
    zipkin = None
    if pb.HasField("provider"):
        check_fields(pb.provider, f"{path}.provider", handled=("name", "typed_config"))
        provider_name = pb.provider.name
        if pb.provider.HasField("typed_config"):
            provider = type_name(pb.provider.typed_config.type_url)
            zipkin = translate_zipkin(pb.provider.typed_config, f"{path}.provider.typed_config")
    return Tracing(
        client_sampling=_percent(pb, "client_sampling", path),
        random_sampling=_percent(pb, "random_sampling", path),
        overall_sampling=_percent(pb, "overall_sampling", path),
        verbose=pb.verbose,
        max_path_tag_length=opt_uint(pb, "max_path_tag_length", 256),
        custom_tags=tuple(tags),
        spawn_upstream_span=bool_value(pb, "spawn_upstream_span", False),
        provider=provider,
        provider_name=provider_name,
        zipkin=zipkin,
    )


def translate_zipkin(tc: Any, path: str) -> Zipkin | None:
    """A provider's typed_config: a Zipkin record when it is ZipkinConfig (None for another
    tracer, which sidecar does not emulate).  Only the fields shaping the B3 headers are read."""
    if type_name(tc.type_url) != ZIPKIN:
        return None
    msg = zipkin_pb2.ZipkinConfig()
    if not tc.Unpack(msg):
        raise ConfigError(path, "cannot unpack ZipkinConfig")
    if msg.trace_context_option != zipkin_pb2.ZipkinConfig.USE_B3:
        # W3C traceparent alongside B3 (Envoy 1.40's USE_B3_WITH_W3C_PROPAGATION) is not emulated.
        raise ConfigError(f"{path}.trace_context_option", "only USE_B3 is supported by sidecar yet")
    return Zipkin(
        trace_id_128bit=msg.trace_id_128bit,
        shared_span_context=bool_value(msg, "shared_span_context", True),
        collector_cluster=msg.collector_cluster,
    )


def translate_request_id(pb: hcm_pb2.HttpConnectionManager, path: str) -> RequestIdExtension:
    """request_id_extension: the uuid extension only (any other would change the id's shape)."""
    if not pb.HasField("request_id_extension"):
        return RequestIdExtension()
    ext = pb.request_id_extension
    rp = f"{path}.request_id_extension"
    check_fields(ext, rp, handled=("typed_config",))
    tc = ext.typed_config
    if type_name(tc.type_url) != UUID_REQUEST_ID:
        raise ConfigError(
            f"{rp}.typed_config", f"request id extension '{type_name(tc.type_url)}' is not supported"
        )
    msg = uuid_pb2.UuidRequestIdConfig()
    if not tc.Unpack(msg):
        raise ConfigError(f"{rp}.typed_config", "cannot unpack UuidRequestIdConfig")
    check_fields(
        msg, f"{rp}.typed_config", handled=("pack_trace_reason", "use_request_id_for_trace_sampling")
    )
    return RequestIdExtension(
        pack_trace_reason=bool_value(msg, "pack_trace_reason", True),
        use_request_id_for_trace_sampling=bool_value(msg, "use_request_id_for_trace_sampling", True),
    )


def _upgrade_type(upgrade_type: str, path: str) -> str:
    if not upgrade_type:
        raise ConfigError(f"{path}.upgrade_type", "value length must be at least 1 characters")
    if upgrade_type.lower() == "connect":
        raise ConfigError(f"{path}.upgrade_type", "CONNECT is not supported by sidecar yet")
    return upgrade_type.lower()


def translate_upgrade_configs(
    pbs: Iterable[hcm_pb2.HttpConnectionManager.UpgradeConfig], path: str
) -> tuple[str, ...]:
    """HCM upgrade_configs: the upgrade types enabled on this connection manager (a disabled entry is
    as good as none: a route may still enable it, Envoy's createUpgradeFilterChain)."""
    out: list[str] = []
    seen: set[str] = set()
    for i, u in enumerate(pbs):
        up = f"{path}.upgrade_configs[{i}]"
        check_fields(u, up, handled=("upgrade_type", "enabled", "filters"))
        if u.filters:
            raise ConfigError(f"{up}.filters", "upgrade filter chains are not supported by sidecar yet")
        kind = _upgrade_type(u.upgrade_type, up)
        if kind in seen:
            raise ConfigError(up, f"Error: multiple upgrade configs with the same name: '{u.upgrade_type}'")
        seen.add(kind)
        if bool_value(u, "enabled", True):
            out.append(kind)
    return tuple(out)


def translate_route_upgrades(
    pbs: Iterable[rc_pb2.RouteAction.UpgradeConfig], path: str
) -> tuple[tuple[str, bool], ...]:
    """RouteAction.upgrade_configs: (type, enabled) overrides of the connection manager's list."""
    out: list[tuple[str, bool]] = []
    for i, u in enumerate(pbs):
        up = f"{path}.upgrade_configs[{i}]"
        check_fields(u, up, handled=("upgrade_type", "enabled"))
        kind = _upgrade_type(u.upgrade_type, up)
        if any(k == kind for k, _ in out):
            raise ConfigError(up, f"Duplicate upgrade {u.upgrade_type}")
        out.append((kind, bool_value(u, "enabled", True)))
    return tuple(out)


def _egress_chain(chain: FilterChain) -> FilterChain:
    filters = tuple(
        dataclasses.replace(f, tracing=dataclasses.replace(f.tracing, egress=True))
        if isinstance(f, HttpConnectionManager) and f.tracing is not None
        else f
        for f in chain.filters
    )
    same = all(a is b for a, b in zip(filters, chain.filters, strict=True))
    return chain if same else dataclasses.replace(chain, filters=filters)


def egress_chains(
    chains: tuple[FilterChain, ...], default: FilterChain | None
) -> tuple[tuple[FilterChain, ...], FilterChain | None]:
    """Listener.traffic_direction OUTBOUND: every traced connection manager's operation name is
    Egress (Envoy's tracing_config operation_name follows the listener's direction)."""
    return tuple(_egress_chain(c) for c in chains), None if default is None else _egress_chain(default)

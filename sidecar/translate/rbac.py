"""RBAC configs (config.rbac.v3 and the http / network filters' messages) -> model/rbac.py.

Every field we do not implement is refused with its field path: metadata, filter_state,
sourced_metadata, custom principals, the unified `matcher` / `shadow_matcher` trees, uri_template,
CEL conditions and audit logging.  String and header matchers are compiled by translate/rds.py's
matcher translation (the same objects route matching runs).  Validation follows the protos'
constraints and Envoy's constructors (PortRangeMatcher, CidrRange::create)."""

from __future__ import annotations

import ipaddress
from typing import Any

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.type.matcher.v3 import path_pb2

from sidecar.http.filters.rbac import RBAC_TYPE_URL
from sidecar.model.listener import HttpFilterConfig
from sidecar.model.rbac import (
    ANY,
    Action,
    AndNode,
    AuthenticatedNode,
    Cidr,
    DestinationIpNode,
    DestinationPortNode,
    DestinationPortRangeNode,
    DirectRemoteIpNode,
    EnforcementType,
    HeaderNode,
    HttpRbac,
    NetworkRbac,
    Node,
    NotNode,
    OrNode,
    Policy,
    Rbac,
    RbacPerRoute,
    RemoteIpNode,
    RequestedServerNameNode,
    SourceIpNode,
    StringMatch,
    UrlPathNode,
)
from sidecar.translate.common import enum_name
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields

HTTP_RBAC_TYPE = "envoy.extensions.filters.http.rbac.v3.RBAC"
HTTP_RBAC_PER_ROUTE_TYPE = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
NETWORK_RBAC_TYPE = "envoy.extensions.filters.network.rbac.v3.RBAC"

_PERMISSION_RULES = (
    "and_rules",
    "or_rules",
    "any",
    "header",
    "url_path",
    "destination_ip",
    "destination_port",
    "destination_port_range",
    "not_rule",
    "requested_server_name",
)
_PRINCIPAL_IDS = (
    "and_ids",
    "or_ids",
    "any",
    "authenticated",
    "source_ip",
    "direct_remote_ip",
    "remote_ip",
    "header",
    "url_path",
    "not_id",
)
# Why each unimplemented kind is refused (the reason is part of the NACK).
_REFUSED = {
    "metadata": "metadata matchers read dynamic metadata, which sidecar's filters do not produce",
    "sourced_metadata": "metadata matchers read dynamic metadata, which sidecar's filters do not produce",
    "filter_state": "filter_state matchers are not supported by sidecar yet",
    "custom": "custom principal extensions are not supported by sidecar yet",
    "matcher": "permission matcher extensions are not supported by sidecar yet",
    "uri_template": "uri_template permissions are not supported by sidecar yet",
}


def _string_matcher(pb: Any, path: str) -> StringMatch:
    from sidecar.translate.route_match import translate_string_matcher  # imports routing: keep it lazy

    return translate_string_matcher(pb, path)


def _header_node(pb: Any, path: str) -> HeaderNode:
    from sidecar.translate.route_match import translate_header_matcher

    return HeaderNode(translate_header_matcher(pb, path))


def _url_path(pb: path_pb2.PathMatcher, path: str) -> UrlPathNode:
    check_fields(pb, path, handled=("path",))
    if not pb.HasField("path"):
        raise ConfigError(f"{path}.path", "value is required")
    return UrlPathNode(_string_matcher(pb.path, f"{path}.path"))


def translate_cidr(pb: address_pb2.CidrRange, path: str) -> Cidr:
    """config.core.v3.CidrRange (CidrRange::create: a prefix_len over the width means all bits)."""
    check_fields(pb, path, handled=("address_prefix", "prefix_len"))
    if not pb.address_prefix:
        raise ConfigError(f"{path}.address_prefix", "value length must be at least 1 characters")
    length = pb.prefix_len.value if pb.HasField("prefix_len") else 0
    if length > 128:
        raise ConfigError(f"{path}.prefix_len", "value must be less than or equal to 128")
    try:
        address = ipaddress.ip_address(pb.address_prefix)
    except ValueError:
        raise ConfigError(f"{path}.address_prefix", f"malformed IP address: {pb.address_prefix}") from None
    return Cidr.of(address, length)


def _any(pb: Any, path: str) -> Node:
    if not pb.any:  # (validate.rules).bool.const = true
        raise ConfigError(f"{path}.any", "value must equal true")
    return ANY


def translate_permission(pb: rbac_pb2.Permission, path: str) -> Node:
    """config.rbac.v3.Permission -> a node."""
    which = pb.WhichOneof("rule")
    if which is None:
        raise ConfigError(path, 'field: "rule", reason: is required')
    p = f"{path}.{which}"
    if which in _REFUSED:
        raise ConfigError(p, _REFUSED[which])
    check_fields(pb, path, handled=_PERMISSION_RULES)
    if which in ("and_rules", "or_rules"):
        s = getattr(pb, which)
        check_fields(s, p, handled=("rules",))
        if not s.rules:
            raise ConfigError(f"{p}.rules", "value must contain at least 1 item(s)")
        items = tuple(translate_permission(r, f"{p}.rules[{i}]") for i, r in enumerate(s.rules))
        return AndNode(items) if which == "and_rules" else OrNode(items)
    if which == "any":
        return _any(pb, path)
    if which == "header":
        return _header_node(pb.header, p)
    if which == "url_path":
        return _url_path(pb.url_path, p)
    if which == "destination_ip":
        return DestinationIpNode(translate_cidr(pb.destination_ip, p))
    if which == "destination_port":
        if pb.destination_port > 65535:
            raise ConfigError(p, "value must be less than or equal to 65535")
        return DestinationPortNode(pb.destination_port)
    if which == "destination_port_range":
        r = pb.destination_port_range
        check_fields(r, p, handled=("start", "end"))
        # PortRangeMatcher's constructor.
        if not 0 <= r.start <= 65536:
            raise ConfigError(p, f"range start {r.start} is out of bounds")
        if not 0 <= r.end <= 65536:
            raise ConfigError(p, f"range end {r.end} is out of bounds")
        if r.start >= r.end:
            raise ConfigError(p, f"range start {r.start} cannot be greater or equal than range end {r.end}")
        return DestinationPortRangeNode(r.start, r.end)
    if which == "not_rule":
        return NotNode(translate_permission(pb.not_rule, p))
    assert which == "requested_server_name", which
    return RequestedServerNameNode(_string_matcher(pb.requested_server_name, p))


def translate_principal(pb: rbac_pb2.Principal, path: str) -> Node:
    """config.rbac.v3.Principal -> a node."""
    which = pb.WhichOneof("identifier")
    if which is None:
        raise ConfigError(path, 'field: "identifier", reason: is required')
    p = f"{path}.{which}"
    if which in _REFUSED:
        raise ConfigError(p, _REFUSED[which])
    check_fields(pb, path, handled=_PRINCIPAL_IDS)
    if which in ("and_ids", "or_ids"):
        s = getattr(pb, which)
        check_fields(s, p, handled=("ids",))
        if not s.ids:
            raise ConfigError(f"{p}.ids", "value must contain at least 1 item(s)")
        items = tuple(translate_principal(r, f"{p}.ids[{i}]") for i, r in enumerate(s.ids))
        return AndNode(items) if which == "and_ids" else OrNode(items)
    if which == "any":
        return _any(pb, path)
    if which == "authenticated":
        a = pb.authenticated
        check_fields(a, p, handled=("principal_name",))
        if not a.HasField("principal_name"):
            return AuthenticatedNode(None)
        return AuthenticatedNode(_string_matcher(a.principal_name, f"{p}.principal_name"))
    if which == "source_ip":
        return SourceIpNode(translate_cidr(pb.source_ip, p))
    if which == "direct_remote_ip":
        return DirectRemoteIpNode(translate_cidr(pb.direct_remote_ip, p))
    if which == "remote_ip":
        return RemoteIpNode(translate_cidr(pb.remote_ip, p))
    if which == "header":
        return _header_node(pb.header, p)
    if which == "url_path":
        return _url_path(pb.url_path, p)
    assert which == "not_id", which
    return NotNode(translate_principal(pb.not_id, p))


def translate_policy(pb: rbac_pb2.Policy, path: str) -> Policy:
    for name in ("condition", "checked_condition", "cel_config"):
        if pb.HasField(name):
            raise ConfigError(f"{path}.{name}", "CEL conditions are not supported by sidecar yet")
    check_fields(pb, path, handled=("permissions", "principals"))
    if not pb.permissions:
        raise ConfigError(f"{path}.permissions", "value must contain at least 1 item(s)")
    if not pb.principals:
        raise ConfigError(f"{path}.principals", "value must contain at least 1 item(s)")
    return Policy(
        permissions=tuple(
            translate_permission(x, f"{path}.permissions[{i}]") for i, x in enumerate(pb.permissions)
        ),
        principals=tuple(
            translate_principal(x, f"{path}.principals[{i}]") for i, x in enumerate(pb.principals)
        ),
    )


def translate_rules(pb: rbac_pb2.RBAC, path: str) -> Rbac:
    """config.rbac.v3.RBAC.  Policies sorted by name (Envoy's std::map order: bytewise, which is code
    point order for the UTF-8 names proto strings are)."""
    if pb.HasField("audit_logging_options") and pb.audit_logging_options.ListFields():
        raise ConfigError(
            f"{path}.audit_logging_options", "RBAC audit logging is not supported by sidecar yet"
        )
    check_fields(pb, path, handled=("action", "policies", "audit_logging_options"))
    action = Action[enum_name(pb, "action", path)]
    policies = tuple(
        (name, translate_policy(pb.policies[name], f"{path}.policies[{name}]"))
        for name in sorted(pb.policies)
    )
    return Rbac(action=action, policies=policies)


def _no_matchers(pb: Any, path: str) -> None:
    for name in ("matcher", "shadow_matcher"):
        if pb.HasField(name):
            raise ConfigError(
                f"{path}.{name}", "RBAC matcher trees are not supported by sidecar yet: use rules"
            )


def translate_rbac_filter(msg: http_rbac_pb2.RBAC, path: str) -> HttpRbac:
    """extensions.filters.http.rbac.v3.RBAC -> HttpRbac (filter level or inside RBACPerRoute)."""
    _no_matchers(msg, path)
    check_fields(
        msg,
        path,
        handled=(
            "rules",
            "rules_stat_prefix",
            "shadow_rules",
            "shadow_rules_stat_prefix",
            "track_per_rule_stats",
        ),
    )
    return HttpRbac(
        rules=translate_rules(msg.rules, f"{path}.rules") if msg.HasField("rules") else None,
        shadow_rules=(
            translate_rules(msg.shadow_rules, f"{path}.shadow_rules")
            if msg.HasField("shadow_rules")
            else None
        ),
        rules_stat_prefix=msg.rules_stat_prefix,
        shadow_rules_stat_prefix=msg.shadow_rules_stat_prefix,
        track_per_rule_stats=msg.track_per_rule_stats,
    )


def translate_rbac_per_route(msg: http_rbac_pb2.RBACPerRoute, path: str) -> RbacPerRoute:
    """RBACPerRoute: `rbac` unset disables the filter on that route."""
    check_fields(msg, path, handled=("rbac",))
    if not msg.HasField("rbac"):
        return RbacPerRoute(None)
    return RbacPerRoute(translate_rbac_filter(msg.rbac, f"{path}.rbac"))


def rbac_http_filter(f: Any, msg: http_rbac_pb2.RBAC, fp: str, last: bool) -> HttpFilterConfig:
    """One http_filters entry of type RBAC (translate/lds.py `_http_filters` dispatches here): any
    position before the router."""
    if last:
        raise ConfigError(
            fp,
            f"Error: non-terminal filter named {f.name} of type envoy.filters.http.rbac "
            "is the last filter in a http filter chain.",
        )
    if f.disabled:
        # Disabled by default and enabled per route (config.route.v3.FilterConfig): not yet.
        raise ConfigError(f"{fp}.disabled", "a disabled rbac filter is not supported by sidecar yet")
    return HttpFilterConfig(
        name=f.name, type_url=RBAC_TYPE_URL, config=translate_rbac_filter(msg, f"{fp}.typed_config")
    )


def translate_network_rbac(msg: network_rbac_pb2.RBAC, path: str) -> NetworkRbac:
    """extensions.filters.network.rbac.v3.RBAC -> NetworkRbac."""
    _no_matchers(msg, path)
    check_fields(
        msg,
        path,
        handled=(
            "rules",
            "shadow_rules",
            "shadow_rules_stat_prefix",
            "stat_prefix",
            "enforcement_type",
            "delay_deny",
        ),
    )
    if not msg.stat_prefix:
        raise ConfigError(f"{path}.stat_prefix", "value length must be at least 1 characters")
    delay = 0.0
    if msg.HasField("delay_deny"):
        d = msg.delay_deny
        if d.seconds < 0 or d.nanos < 0:
            raise ConfigError(f"{path}.delay_deny", "Duration out-of-range")
        delay = (d.seconds * 1000 + d.nanos // 1_000_000) / 1000  # PROTOBUF_GET_MS_OR_DEFAULT
    return NetworkRbac(
        stat_prefix=msg.stat_prefix,
        rules=translate_rules(msg.rules, f"{path}.rules") if msg.HasField("rules") else None,
        shadow_rules=(
            translate_rules(msg.shadow_rules, f"{path}.shadow_rules")
            if msg.HasField("shadow_rules")
            else None
        ),
        shadow_rules_stat_prefix=msg.shadow_rules_stat_prefix,
        enforcement_type=EnforcementType[enum_name(msg, "enforcement_type", path)],
        delay_deny=delay,
    )


__all__ = [
    "HTTP_RBAC_PER_ROUTE_TYPE",
    "HTTP_RBAC_TYPE",
    "NETWORK_RBAC_TYPE",
    "rbac_http_filter",
    "translate_cidr",
    "translate_network_rbac",
    "translate_permission",
    "translate_policy",
    "translate_principal",
    "translate_rbac_filter",
    "translate_rbac_per_route",
    "translate_rules",
]

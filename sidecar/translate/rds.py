"""RouteConfiguration (envoy.config.route.v3) -> model.route, with Envoy's validation.

Owns the refusal of every route field we do not implement (check_fields), the proto-validate rules
Envoy applies to the fields we do (lengths, ranges, header-name charsets) and the checks of
config_impl.cc / header_parser.cc (one action per route, regexes that compile within RE2's program
size, no :-prefixed or host header mutations, unique domains).  Route matchers (route_match.py)
and header mutations (headers.py) have modules of their own; the RouteTable is compiled here, once
per config.  Errors name the field path, e.g.
`...route_config.virtual_hosts[0].routes[2].match.safe_regex.regex`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2

from sidecar.model.retry import RetryPolicy
from sidecar.model.route import (
    ClusterWeight,
    DirectResponseAction,
    HashPolicy,
    HashPolicyKind,
    MaxStreamDuration,
    MirrorPolicy,
    RedirectAction,
    RequireTls,
    Route,
    RouteAction,
    RouteConfiguration,
    VirtualHost,
)
from sidecar.routing import matchers as m
from sidecar.routing.table import DuplicateDomainError, RouteTable
from sidecar.translate.common import bool_value, enum_name
from sidecar.translate.errors import ConfigError
from sidecar.translate.fault import per_filter_config
from sidecar.translate.fields import check_fields, opt_uint
from sidecar.translate.headers import maybe_mutations
from sidecar.translate.retry import translate_retry_policy
from sidecar.translate.route_match import header_text, milliseconds, regex_rewrite, translate_route_match
from sidecar.translate.tracing import translate_route_upgrades

_DEFAULT_MAX_BODY = 4096
_REDIRECT_CODES = {
    "MOVED_PERMANENTLY": 301,
    "FOUND": 302,
    "SEE_OTHER": 303,
    "TEMPORARY_REDIRECT": 307,
    "PERMANENT_REDIRECT": 308,
}
_NOT_FOUND_CODES = {"SERVICE_UNAVAILABLE": 503, "NOT_FOUND": 404, "INTERNAL_SERVER_ERROR": 500}
_MUTATION_FIELDS = (
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
)


# --- actions ---------------------------------------------------------------------------------------


def _weighted_clusters(pb: rc_pb2.WeightedCluster, path: str) -> tuple[tuple[ClusterWeight, ...], int]:
    # runtime_key_prefix only names runtime overrides of the weights, and we have no runtime layer.
    check_fields(pb, path, handled=("clusters", "total_weight"), ignored=("runtime_key_prefix",))
    if not pb.clusters:
        raise ConfigError(f"{path}.clusters", "value must contain at least 1 item(s)")
    # total_weight is deprecated and ignored by Envoy 1.40 (the sum of the weights is used).
    if pb.HasField("total_weight") and pb.total_weight.value < 1:
        raise ConfigError(f"{path}.total_weight", "value must be greater than or equal to 1")
    out = []
    for i, c in enumerate(pb.clusters):
        cp = f"{path}.clusters[{i}]"
        check_fields(c, cp, handled=("name", "weight", "host_rewrite_literal", *_MUTATION_FIELDS))
        if not c.name:
            raise ConfigError(cp, "At least one of name or cluster_header need to be specified")
        if not c.HasField("weight"):
            raise ConfigError(f"{cp}.weight", "Field 'weight' is missing")
        out.append(
            ClusterWeight(
                name=c.name,
                weight=c.weight.value,
                mutations=maybe_mutations(c, cp),
                host_rewrite_literal=header_text(c.host_rewrite_literal, f"{cp}.host_rewrite_literal"),
            )
        )
    total = sum(c.weight for c in out)
    if total == 0:
        raise ConfigError(path, "Sum of weights in the weighted_cluster must be greater than 0.")
    if total > 0xFFFFFFFF:
        raise ConfigError(path, "The sum of weights of all weighted clusters exceeds 4294967295")
    return tuple(out), total


def translate_route_action(pb: rc_pb2.RouteAction, path: str) -> RouteAction:
    check_fields(
        pb,
        path,
        handled=(
            "cluster",
            "cluster_header",
            "weighted_clusters",
            "cluster_not_found_response_code",
            "prefix_rewrite",
            "regex_rewrite",
            "host_rewrite_literal",
            "auto_host_rewrite",
            "host_rewrite_header",
            "append_x_forwarded_host",
            "timeout",
            "idle_timeout",
            "max_stream_duration",
            "retry_policy",
            "hash_policy",
            "request_mirror_policies",
            "max_grpc_timeout",
            "grpc_timeout_offset",
            "upgrade_configs",
        ),
    )
    kw: dict[str, Any] = {}
    for name in ("max_grpc_timeout", "grpc_timeout_offset"):
        if pb.HasField(name):
            kw[name] = milliseconds(getattr(pb, name), f"{path}.{name}")
    if pb.upgrade_configs:
        kw["upgrade_configs"] = translate_route_upgrades(pb.upgrade_configs, path)
    if pb.hash_policy:
        kw["hash_policy"] = _hash_policies(pb.hash_policy, f"{path}.hash_policy")
    if pb.request_mirror_policies:
        kw["mirror_policies"] = tuple(
            _mirror_policy(mp, f"{path}.request_mirror_policies[{i}]")
            for i, mp in enumerate(pb.request_mirror_policies)
        )
    if pb.HasField("retry_policy"):
        kw["retry_policy"] = translate_retry_policy(pb.retry_policy, f"{path}.retry_policy")
    which = pb.WhichOneof("cluster_specifier")
    if which == "cluster":
        kw["cluster"] = header_text(pb.cluster, f"{path}.cluster", min_len=1)
    elif which == "cluster_header":
        kw["cluster_header"] = m.ascii_lower(
            header_text(pb.cluster_header, f"{path}.cluster_header", min_len=1)
        )
    elif which == "weighted_clusters":
        kw["weighted_clusters"], kw["total_weight"] = _weighted_clusters(
            pb.weighted_clusters, f"{path}.weighted_clusters"
        )
    else:
        raise ConfigError(path, 'field: "cluster_specifier", reason: is required')
    kw["cluster_not_found_response_code"] = _NOT_FOUND_CODES[
        enum_name(pb, "cluster_not_found_response_code", path)
    ]
    if pb.prefix_rewrite and pb.HasField("regex_rewrite"):
        raise ConfigError(path, "Specify only one of prefix_rewrite, regex_rewrite or path_rewrite_policy")
    kw["prefix_rewrite"] = header_text(pb.prefix_rewrite, f"{path}.prefix_rewrite")
    if pb.HasField("regex_rewrite"):
        kw["regex_rewrite"] = regex_rewrite(pb.regex_rewrite, f"{path}.regex_rewrite")
    host = pb.WhichOneof("host_rewrite_specifier")
    if host == "host_rewrite_literal":
        kw["host_rewrite_literal"] = header_text(pb.host_rewrite_literal, f"{path}.host_rewrite_literal")
    elif host == "auto_host_rewrite":
        kw["auto_host_rewrite"] = pb.auto_host_rewrite.value
    elif host == "host_rewrite_header":
        header = header_text(pb.host_rewrite_header, f"{path}.host_rewrite_header")
        kw["host_rewrite_header"] = m.ascii_lower(header)
    kw["append_x_forwarded_host"] = pb.append_x_forwarded_host
    if pb.HasField("timeout"):
        kw["timeout"] = milliseconds(pb.timeout, f"{path}.timeout")
    if pb.HasField("idle_timeout"):
        # The connection manager's stream idle timer for this route (0 switches it off).
        kw["idle_timeout"] = milliseconds(pb.idle_timeout, f"{path}.idle_timeout")
    if pb.HasField("max_stream_duration"):
        kw["max_stream_duration"] = _max_stream_duration(
            pb.max_stream_duration, f"{path}.max_stream_duration"
        )
    return RouteAction(**kw)


def _max_stream_duration(pb: rc_pb2.RouteAction.MaxStreamDuration, path: str) -> MaxStreamDuration:
    """RouteAction.MaxStreamDuration: each Duration at millisecond precision, None when unset."""
    check_fields(
        pb, path, handled=("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset")
    )
    out: dict[str, Any] = {}
    for name in ("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset"):
        if pb.HasField(name):
            out[name] = milliseconds(getattr(pb, name), f"{path}.{name}")
    return MaxStreamDuration(**out)


_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


def _mirror_policy(pb: rc_pb2.RouteAction.RequestMirrorPolicy, path: str) -> MirrorPolicy:
    check_fields(
        pb,
        path,
        handled=("cluster", "runtime_fraction", "disable_shadow_host_suffix_append"),
    )
    cluster = header_text(pb.cluster, f"{path}.cluster", min_len=1)
    num, den = 100, 100
    if pb.HasField("runtime_fraction"):
        rf = pb.runtime_fraction
        check_fields(rf, f"{path}.runtime_fraction", handled=("default_value",), ignored=("runtime_key",))
        dv = rf.default_value
        num = dv.numerator
        den = _DENOMINATORS[enum_name(dv, "denominator", f"{path}.runtime_fraction.default_value")]
    return MirrorPolicy(cluster, num, den, not pb.disable_shadow_host_suffix_append)


def _hash_policies(pbs: Iterable[rc_pb2.RouteAction.HashPolicy], path: str) -> tuple[HashPolicy, ...]:
    """RouteAction.hash_policy (evaluated by routing/hash_policy.py).  Refused: header regex_rewrite,
    filter_state."""
    out = []
    for i, hp in enumerate(pbs):
        p = f"{path}[{i}]"
        check_fields(
            hp, p, handled=("header", "cookie", "connection_properties", "query_parameter", "terminal")
        )
        kind = hp.WhichOneof("policy_specifier")
        if kind == "header":
            check_fields(hp.header, f"{p}.header", handled=("header_name",))
            name = m.ascii_lower(header_text(hp.header.header_name, f"{p}.header.header_name", min_len=1))
            out.append(HashPolicy(HashPolicyKind.HEADER, name, hp.terminal))
        elif kind == "cookie":
            out.append(_cookie_policy(hp.cookie, f"{p}.cookie", hp.terminal))
        elif kind == "connection_properties":
            # source_ip false: Envoy adds no hash method at all (and `terminal` goes with it).
            if hp.connection_properties.source_ip:
                out.append(HashPolicy(HashPolicyKind.SOURCE_IP, "", hp.terminal))
        elif kind == "query_parameter":
            name = header_text(hp.query_parameter.name, f"{p}.query_parameter.name", min_len=1)
            out.append(HashPolicy(HashPolicyKind.QUERY_PARAMETER, name, hp.terminal))
        else:
            raise ConfigError(p, 'field: "policy_specifier", reason: is required')
    return tuple(out)


def _cookie_policy(pb: rc_pb2.RouteAction.HashPolicy.Cookie, path: str, terminal: bool) -> HashPolicy:
    """A cookie hash policy.  With `ttl`, Envoy generates a missing cookie (Router's
    addDownstreamSetCookie); it keeps whole seconds of the ttl (std::chrono::seconds(ttl.seconds())).
    path and attributes only shape that generated cookie, so without a ttl they are not kept."""
    check_fields(pb, path, handled=("name", "ttl", "path", "attributes"))
    name = header_text(pb.name, f"{path}.name", min_len=1)
    if not pb.HasField("ttl"):
        return HashPolicy(HashPolicyKind.COOKIE, name, terminal)
    attributes = []
    for i, a in enumerate(pb.attributes):
        ap = f"{path}.attributes[{i}]"
        check_fields(a, ap, handled=("name", "value"))
        attributes.append((header_text(a.name, f"{ap}.name", min_len=1), header_text(a.value, f"{ap}.value")))
    return HashPolicy(
        HashPolicyKind.COOKIE,
        name,
        terminal,
        ttl=pb.ttl.seconds,
        path=header_text(pb.path, f"{path}.path"),
        attributes=tuple(attributes),
    )


def translate_redirect_action(pb: rc_pb2.RedirectAction, path: str) -> RedirectAction:
    check_fields(pb, path, handled=[f.name for f in pb.DESCRIPTOR.fields])
    kw: dict[str, Any] = {}
    if pb.WhichOneof("scheme_rewrite_specifier") == "https_redirect":
        kw["scheme"] = "https" if pb.https_redirect else ""
    else:
        kw["scheme"] = header_text(pb.scheme_redirect, f"{path}.scheme_redirect")
    kw["host"] = header_text(pb.host_redirect, f"{path}.host_redirect")
    kw["port"] = pb.port_redirect
    which = pb.WhichOneof("path_rewrite_specifier")
    if which == "path_redirect":
        kw["path"] = header_text(pb.path_redirect, f"{path}.path_redirect")
    elif which == "prefix_rewrite":
        kw["prefix_rewrite"] = header_text(pb.prefix_rewrite, f"{path}.prefix_rewrite")
    elif which == "regex_rewrite":
        kw["regex_rewrite"] = regex_rewrite(pb.regex_rewrite, f"{path}.regex_rewrite")
    kw["response_code"] = _REDIRECT_CODES[enum_name(pb, "response_code", path)]
    kw["strip_query"] = pb.strip_query
    return RedirectAction(**kw)


def _data_source(pb: base_pb2.DataSource, path: str) -> bytes:
    check_fields(pb, path, handled=("filename", "inline_bytes", "inline_string", "environment_variable"))
    which = pb.WhichOneof("specifier")
    if which == "inline_bytes":
        return bytes(pb.inline_bytes)
    if which == "inline_string":
        return str(pb.inline_string).encode()
    if which == "filename":
        name = header_text(pb.filename, f"{path}.filename", min_len=1)
        try:
            with open(name, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ConfigError(f"{path}.filename", f"cannot read {name}: {exc.strerror}") from None
    if which == "environment_variable":
        value = os.environ.get(pb.environment_variable)
        if value is None:
            raise ConfigError(
                f"{path}.environment_variable",
                f"Environment variable doesn't exist: {pb.environment_variable}",
            )
        return value.encode()
    return b""


def translate_direct_response(
    pb: rc_pb2.DirectResponseAction, path: str, max_body: int
) -> DirectResponseAction:
    check_fields(pb, path, handled=("status", "body"))
    if not 200 <= pb.status < 600:
        raise ConfigError(f"{path}.status", "value must be inside range [200, 600)")
    body = None
    if pb.HasField("body"):
        body = _data_source(pb.body, f"{path}.body")
        if len(body) > max_body:
            raise ConfigError(
                f"{path}.body", f"response body size is {len(body)} bytes; maximum is {max_body}"
            )
    return DirectResponseAction(status=pb.status, body=body)


# --- route, virtual host, route configuration ---------------------------------------------------


def translate_route(pb: rc_pb2.Route, path: str, max_body: int = _DEFAULT_MAX_BODY) -> Route:
    check_fields(
        pb,
        path,
        handled=(
            "name",
            "match",
            "route",
            "redirect",
            "direct_response",
            "typed_per_filter_config",
            "decorator",
            *_MUTATION_FIELDS,
        ),
        # Route metadata is read by nothing here (no metadata matchers or formatters).
        ignored=("metadata",),
    )
    if not pb.HasField("match"):
        raise ConfigError(f"{path}.match", "value is required")
    match, matched = translate_route_match(pb.match, f"{path}.match")
    which = pb.WhichOneof("action")
    action: Any
    if which == "route":
        action = translate_route_action(pb.route, f"{path}.route")
    elif which == "redirect":
        action = translate_redirect_action(pb.redirect, f"{path}.redirect")
    elif which == "direct_response":
        action = translate_direct_response(pb.direct_response, f"{path}.direct_response", max_body)
    else:
        raise ConfigError(path, 'field: "action", reason: is required')
    per_filter = tuple(
        (k, per_filter_config(k, pb.typed_per_filter_config[k], f"{path}.typed_per_filter_config[{k}]"))
        for k in sorted(pb.typed_per_filter_config)
    )
    return Route(
        match=match,
        action=action,
        name=pb.name,
        mutations=maybe_mutations(pb, path),
        match_prefix=matched,
        typed_per_filter_config=per_filter,
        **_decorator(pb, path),
    )


def _decorator(pb: rc_pb2.Route, path: str) -> dict[str, Any]:
    """Route.decorator: names the tracing span only (no tracer here, nothing on the wire)."""
    if not pb.HasField("decorator"):
        return {}
    d = pb.decorator
    check_fields(d, f"{path}.decorator", handled=("operation", "propagate"))
    if not d.operation:
        raise ConfigError(f"{path}.decorator.operation", "value length must be at least 1 characters")
    return {"decorator_operation": d.operation, "decorator_propagate": bool_value(d, "propagate", True)}


def translate_virtual_host(
    pb: rc_pb2.VirtualHost, path: str, max_body: int = _DEFAULT_MAX_BODY
) -> VirtualHost:
    check_fields(
        pb,
        path,
        handled=(
            "name",
            "domains",
            "routes",
            "require_tls",
            "include_request_attempt_count",
            "include_attempt_count_in_response",
            "retry_policy",
            *_MUTATION_FIELDS,
        ),
        ignored=("metadata",),
    )
    vh_retry = (
        translate_retry_policy(pb.retry_policy, f"{path}.retry_policy")
        if pb.HasField("retry_policy")
        else None
    )
    name = header_text(pb.name, f"{path}.name", min_len=1)
    if not pb.domains:
        raise ConfigError(f"{path}.domains", "value must contain at least 1 item(s)")
    domains = tuple(header_text(d, f"{path}.domains[{i}]") for i, d in enumerate(pb.domains))
    routes = tuple(translate_route(r, f"{path}.routes[{i}]", max_body) for i, r in enumerate(pb.routes))
    if vh_retry is not None:
        # A route without its own retry_policy uses the virtual host's (Envoy: no merging of fields).
        routes = tuple(_with_vhost_retry(r, vh_retry) for r in routes)
    return VirtualHost(
        name=name,
        domains=domains,
        routes=routes,
        mutations=maybe_mutations(pb, path),
        require_tls=RequireTls[enum_name(pb, "require_tls", path)],
        include_request_attempt_count=pb.include_request_attempt_count,
        include_attempt_count_in_response=pb.include_attempt_count_in_response,
        retry_policy=vh_retry,
    )


def _with_vhost_retry(route: Route, policy: RetryPolicy) -> Route:
    action = route.action
    if isinstance(action, RouteAction) and action.retry_policy is None:
        return dataclasses.replace(route, action=dataclasses.replace(action, retry_policy=policy))
    return route


def translate_route_configuration(pb: route_pb2.RouteConfiguration, path: str) -> RouteConfiguration:
    """The model of `pb`, its RouteTable built; ConfigError(field path, reason) when Envoy would
    refuse it or when it uses a field sidecar does not implement."""
    check_fields(
        pb,
        path,
        handled=(
            "name",
            "virtual_hosts",
            "internal_only_headers",
            "most_specific_header_mutations_wins",
            "max_direct_response_body_size_bytes",
            "ignore_port_in_host_matching",
            *_MUTATION_FIELDS,
        ),
        # validate_clusters is enforced by translate/lds.py, which knows the clusters.
        ignored=("validate_clusters", "metadata"),
    )
    max_body = opt_uint(pb, "max_direct_response_body_size_bytes", _DEFAULT_MAX_BODY)
    vhosts = tuple(
        translate_virtual_host(v, f"{path}.virtual_hosts[{i}]", max_body)
        for i, v in enumerate(pb.virtual_hosts)
    )
    internal_only = tuple(
        m.ascii_lower(header_text(h, f"{path}.internal_only_headers[{i}]")).encode()
        for i, h in enumerate(pb.internal_only_headers)
    )
    try:
        table = RouteTable.build(vhosts, pb.ignore_port_in_host_matching)
    except DuplicateDomainError as exc:
        where = f"{path}.virtual_hosts[{exc.vhost_index}].domains[{exc.domain_index}]"
        raise ConfigError(where, f"{exc} in route {pb.name}") from None
    return RouteConfiguration(
        name=pb.name,
        virtual_hosts=vhosts,
        mutations=maybe_mutations(pb, path),
        internal_only_headers=internal_only,
        ignore_port_in_host_matching=pb.ignore_port_in_host_matching,
        most_specific_header_mutations_wins=pb.most_specific_header_mutations_wins,
        table=table,
    )

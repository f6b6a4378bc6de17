"""RouteConfiguration (envoy.config.route.v3) -> model.route, with Envoy's validation.

Owns the refusal of every route field we do not implement (check_fields), the proto-validate rules
Envoy applies to the fields we do (lengths, ranges, header-name charsets) and the checks of
config_impl.cc / header_parser.cc (one action per route, regexes that compile within RE2's program
size, no :-prefixed or host header mutations, unique domains).  Matchers and the RouteTable are
compiled here, once per config.  Errors name the field path, e.g.
`...route_config.virtual_hosts[0].routes[2].match.safe_regex.regex`."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf.duration_pb2 import Duration

from sidecar.model.retry import RetryPolicy
from sidecar.model.route import (
    NO_MUTATIONS,
    AppendAction,
    ClusterWeight,
    DirectResponseAction,
    HashPolicy,
    HashPolicyKind,
    HeaderMutations,
    HeaderValueOption,
    MaxStreamDuration,
    MirrorPolicy,
    RedirectAction,
    RegexRewrite,
    RequestMatcher,
    RequireTls,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from sidecar.routing import matchers as m
from sidecar.routing.table import DuplicateDomainError, RouteTable
from sidecar.translate.common import bool_value, enum_name
from sidecar.translate.errors import ConfigError
from sidecar.translate.fault import per_filter_config
from sidecar.translate.fields import check_fields, opt_uint
from sidecar.translate.retry import translate_retry_policy

# %COMMAND% forms of header values that http/header_mutation.py expands; others are refused.
SUPPORTED_HEADER_COMMANDS = frozenset(
    {
        "DOWNSTREAM_REMOTE_ADDRESS",
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_LOCAL_ADDRESS",
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        "PROTOCOL",
    }
)
# Envoy's substitution format command: %NAME%, %NAME(args)%, with an optional :max_length.
_COMMAND = re.compile(rb"%([A-Z0-9_]+)(\([^)]*\))?(:[0-9]+)?%")
_CTL = re.compile(r"[\x00\n\r]")
_MAX_HEADER_BYTES = 16384
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
T = TypeVar("T")


# --- small validators (proto-validate rules of the fields we handle) -----------------------------


def _text(value: str, path: str, *, min_len: int = 0, max_bytes: int = _MAX_HEADER_BYTES) -> str:
    """Non-strict HTTP_HEADER_NAME/VALUE: no NUL, CR or LF; and the field's length bounds."""
    if len(value) < min_len:
        raise ConfigError(path, f"value length must be at least {min_len} characters")
    if len(value.encode()) > max_bytes:
        raise ConfigError(path, f"value length must be at most {max_bytes} bytes")
    if _CTL.search(value):
        raise ConfigError(path, "value must not contain NUL, CR or LF")
    return value


def _milliseconds(d: Duration, path: str) -> float:
    """A Duration in seconds at Envoy's millisecond precision (DurationUtil::durationToMilliseconds)."""
    if d.seconds < 0 or d.nanos < 0 or d.seconds > 315_576_000_000:
        raise ConfigError(path, "Duration out-of-range")
    return (d.seconds * 1000 + d.nanos // 1_000_000) / 1000


def _compiled(build: Callable[[], T], path: str) -> T:
    try:
        return build()
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None


def _regex(pb: regex_pb2.RegexMatcher, path: str) -> tuple[str, int]:
    """The regex text and the RE2 program size limit of a RegexMatcher."""
    check_fields(pb, path, handled=("regex", "google_re2"))
    limit = m.DEFAULT_MAX_PROGRAM_SIZE
    if pb.HasField("google_re2"):
        check_fields(pb.google_re2, f"{path}.google_re2", handled=("max_program_size",))
        limit = opt_uint(pb.google_re2, "max_program_size", limit)
    if not pb.regex:
        raise ConfigError(f"{path}.regex", "value length must be at least 1 characters")
    _compiled(lambda: m.compile_regex(pb.regex, limit), f"{path}.regex")
    return pb.regex, limit


def _regex_rewrite(pb: regex_pb2.RegexMatchAndSubstitute, path: str) -> RegexRewrite:
    check_fields(pb, path, handled=("pattern", "substitution"))
    if not pb.HasField("pattern"):
        raise ConfigError(f"{path}.pattern", "value is required")
    regex, limit = _regex(pb.pattern, f"{path}.pattern")
    substitution = _text(pb.substitution, f"{path}.substitution")
    return RegexRewrite(pattern=m.compile_regex(regex, limit), substitution=substitution)


# --- matchers ---------------------------------------------------------------------------------------


def _affix(kind: str, text: str, ignore_case: bool, path: str) -> m.ValueMatcher:
    if not text:
        raise ConfigError(path, "value length must be at least 1 characters")
    if kind == "prefix":
        return m.PrefixMatcher(text, ignore_case)
    if kind == "suffix":
        return m.SuffixMatcher(text, ignore_case)
    return m.ContainsMatcher(text, ignore_case)


def translate_string_matcher(pb: string_pb2.StringMatcher, path: str) -> m.ValueMatcher:
    """type.matcher.v3.StringMatcher (all but `custom`)."""
    check_fields(pb, path, handled=("exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"))
    which = pb.WhichOneof("match_pattern")
    ic = pb.ignore_case
    if which == "exact":
        return m.ExactMatcher(pb.exact, ic)
    if which == "safe_regex":
        if ic:
            raise ConfigError(f"{path}.ignore_case", "ignore_case has no effect for safe_regex.")
        regex, limit = _regex(pb.safe_regex, f"{path}.safe_regex")
        return m.RegexMatcher(regex, limit)
    if which in ("prefix", "suffix", "contains"):
        return _affix(which, getattr(pb, which), ic, f"{path}.{which}")
    raise ConfigError(path, 'field: "match_pattern", reason: is required')


def translate_header_matcher(pb: rc_pb2.HeaderMatcher, path: str) -> m.HeaderMatcher:
    check_fields(
        pb,
        path,
        handled=[f.name for f in pb.DESCRIPTOR.fields],
    )
    name = m.ascii_lower(_text(pb.name, f"{path}.name", min_len=1))
    # Envoy's header map answers "host" with :authority.
    name = ":authority" if name == "host" else name
    which = pb.WhichOneof("header_match_specifier")
    value: m.ValueMatcher | None = None
    present = True
    if which == "exact_match":
        # The deprecated exact_match "" matches any value (HeaderDataExactMatch).
        value = m.ExactMatcher(pb.exact_match) if pb.exact_match else m.AnyValueMatcher()
    elif which == "safe_regex_match":
        regex, limit = _regex(pb.safe_regex_match, f"{path}.safe_regex_match")
        value = m.RegexMatcher(regex, limit)
    elif which == "range_match":
        check_fields(pb.range_match, f"{path}.range_match", handled=("start", "end"))
        value = m.RangeMatcher(pb.range_match.start, pb.range_match.end)
    elif which == "present_match":
        present = pb.present_match
    elif which in ("prefix_match", "suffix_match", "contains_match"):
        value = _affix(which[:-6], getattr(pb, which), False, f"{path}.{which}")
    elif which == "string_match":
        value = translate_string_matcher(pb.string_match, f"{path}.string_match")
    # No specifier at all: a presence check (HEADER_MATCH_SPECIFIER_NOT_SET).
    return m.HeaderMatcher(name, value, present, pb.invert_match, pb.treat_missing_header_as_empty)


def translate_query_parameter_matcher(pb: rc_pb2.QueryParameterMatcher, path: str) -> m.QueryParameterMatcher:
    check_fields(pb, path, handled=("name", "string_match", "present_match"))
    name = _text(pb.name, f"{path}.name", min_len=1, max_bytes=1024)
    which = pb.WhichOneof("query_parameter_match_specifier")
    if which == "string_match":
        return m.QueryParameterMatcher(
            name, translate_string_matcher(pb.string_match, f"{path}.string_match")
        )
    if which == "present_match":
        return m.QueryParameterMatcher(name, present_match=pb.present_match)
    return m.QueryParameterMatcher(name)


def translate_route_match(pb: rc_pb2.RouteMatch, path: str) -> tuple[RouteMatch, str]:
    """The RouteMatch and the text prefix_rewrite replaces (prefix, path or path_separated_prefix)."""
    check_fields(
        pb,
        path,
        handled=(
            "prefix",
            "path",
            "safe_regex",
            "path_separated_prefix",
            "case_sensitive",
            "headers",
            "query_parameters",
            "grpc",
        ),
    )
    cs = bool_value(pb, "case_sensitive", True)
    which = pb.WhichOneof("path_specifier")
    matcher: Any
    matched = ""
    if which == "prefix":
        matcher, matched = m.PrefixPathMatcher(pb.prefix, cs), pb.prefix
    elif which == "path":
        matcher, matched = m.ExactPathMatcher(pb.path, cs), pb.path
    elif which == "path_separated_prefix":
        value = pb.path_separated_prefix
        if not re.fullmatch(r"[^?#]+[^?#/]", value, re.DOTALL):
            raise ConfigError(
                f"{path}.path_separated_prefix", 'value does not match regex pattern "^[^?#]+[^?#/]$"'
            )
        matcher, matched = m.SeparatedPrefixPathMatcher(value, cs), value
    elif which == "safe_regex":
        regex, limit = _regex(pb.safe_regex, f"{path}.safe_regex")
        matcher = m.RegexPathMatcher(regex, limit)
    else:
        raise ConfigError(path, 'field: "path_specifier", reason: is required')
    requirements: list[RequestMatcher] = [
        translate_header_matcher(h, f"{path}.headers[{i}]") for i, h in enumerate(pb.headers)
    ]
    requirements += [
        translate_query_parameter_matcher(q, f"{path}.query_parameters[{i}]")
        for i, q in enumerate(pb.query_parameters)
    ]
    if pb.HasField("grpc"):
        check_fields(pb.grpc, f"{path}.grpc", handled=())
        requirements.append(m.GrpcMatcher())
    return RouteMatch(path=matcher, requirements=tuple(requirements)), matched


# --- header mutations -----------------------------------------------------------------------------


def _header_value(raw: bytes, path: str) -> tuple[bytes, bool]:
    """(value, dynamic): a value with a %COMMAND% is kept as written for http/header_mutation.py;
    a literal one has its '%%' escapes undone.  Malformed or unsupported commands are refused."""
    dynamic = False
    i = raw.find(b"%")
    while i >= 0:
        if raw[i + 1 : i + 2] == b"%":
            i = raw.find(b"%", i + 2)
            continue
        cmd = _COMMAND.match(raw, i)
        if cmd is None:
            text = raw.decode("utf-8", "replace")
            raise ConfigError(
                path, f"Incorrect configuration: {text}. Couldn't find valid command at position {i}"
            )
        name, args, limit = (g.decode() if g else "" for g in cmd.groups())
        supported = name in SUPPORTED_HEADER_COMMANDS and not args
        if name == "REQ":
            supported = bool(args) and "?" not in args
        if not supported or limit:
            raise ConfigError(path, f"format command {cmd.group(0).decode()} is not supported by sidecar yet")
        dynamic = True
        i = raw.find(b"%", cmd.end())
    return (raw if dynamic else raw.replace(b"%%", b"%")), dynamic


def translate_header_value_option(pb: base_pb2.HeaderValueOption, path: str) -> HeaderValueOption:
    check_fields(pb, path, handled=("header", "append", "append_action", "keep_empty_value"))
    if not pb.HasField("header"):
        raise ConfigError(f"{path}.header", "value is required")
    hv, hp = pb.header, f"{path}.header"
    check_fields(hv, hp, handled=("key", "value", "raw_value"))
    key = _text(hv.key, f"{hp}.key", min_len=1)
    # HeaderUtility::isModifiableHeader: :path etc. have their own RouteAction fields.
    if key.startswith(":") or m.ascii_lower(key) == "host":
        raise ConfigError(f"{hp}.key", ":-prefixed or host headers may not be modified")
    if hv.value and hv.raw_value:
        raise ConfigError(hp, "only one of value or raw_value may be set")
    if hv.raw_value:
        raw, vp = hv.raw_value, f"{hp}.raw_value"
        if len(raw) > _MAX_HEADER_BYTES or re.search(rb"[\x00\n\r]", raw):
            raise ConfigError(vp, "value must be at most 16384 bytes without NUL, CR or LF")
    else:
        raw, vp = _text(hv.value, f"{hp}.value").encode(), f"{hp}.value"
    value, dynamic = _header_value(raw, vp)
    action_name = enum_name(pb, "append_action", path)
    if pb.HasField("append"):
        if action_name != "APPEND_IF_EXISTS_OR_ADD":
            raise ConfigError(path, "Both append and append_action are set and it's not allowed")
        action_name = "APPEND_IF_EXISTS_OR_ADD" if pb.append.value else "OVERWRITE_IF_EXISTS_OR_ADD"
    return HeaderValueOption(
        name=m.ascii_lower(key).encode(),
        value=value,
        append_action=AppendAction[action_name],
        keep_empty_value=pb.keep_empty_value,
        dynamic=dynamic,
    )


def _removals(names: Iterable[str], path: str) -> tuple[bytes, ...]:
    out = []
    for i, name in enumerate(names):
        p = f"{path}[{i}]"
        _text(name, p, min_len=1)
        if name.startswith(":") or m.ascii_lower(name) == "host":
            raise ConfigError(p, ":-prefixed or host headers may not be removed")
        out.append(m.ascii_lower(name).encode())
    return tuple(out)


def translate_mutations(pb: Any, path: str) -> HeaderMutations:
    """The four *_headers_to_add/_remove fields of a route config, virtual host, route or cluster."""
    adds = {}
    for f in ("request_headers_to_add", "response_headers_to_add"):
        items = getattr(pb, f)
        if len(items) > 1000:
            raise ConfigError(f"{path}.{f}", "value must contain no more than 1000 item(s)")
        adds[f] = tuple(translate_header_value_option(h, f"{path}.{f}[{i}]") for i, h in enumerate(items))
    return HeaderMutations(
        request_headers_to_add=adds["request_headers_to_add"],
        request_headers_to_remove=_removals(
            pb.request_headers_to_remove, f"{path}.request_headers_to_remove"
        ),
        response_headers_to_add=adds["response_headers_to_add"],
        response_headers_to_remove=_removals(
            pb.response_headers_to_remove, f"{path}.response_headers_to_remove"
        ),
    )


def _maybe_mutations(pb: Any, path: str) -> HeaderMutations:
    """As translate_mutations, but the shared NO_MUTATIONS when there are none (callers test `is`)."""
    mutations = translate_mutations(pb, path)
    return NO_MUTATIONS if mutations.empty else mutations


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
                mutations=_maybe_mutations(c, cp),
                host_rewrite_literal=_text(c.host_rewrite_literal, f"{cp}.host_rewrite_literal"),
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
        ),
    )
    kw: dict[str, Any] = {}
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
        kw["cluster"] = _text(pb.cluster, f"{path}.cluster", min_len=1)
    elif which == "cluster_header":
        kw["cluster_header"] = m.ascii_lower(_text(pb.cluster_header, f"{path}.cluster_header", min_len=1))
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
    kw["prefix_rewrite"] = _text(pb.prefix_rewrite, f"{path}.prefix_rewrite")
    if pb.HasField("regex_rewrite"):
        kw["regex_rewrite"] = _regex_rewrite(pb.regex_rewrite, f"{path}.regex_rewrite")
    host = pb.WhichOneof("host_rewrite_specifier")
    if host == "host_rewrite_literal":
        kw["host_rewrite_literal"] = _text(pb.host_rewrite_literal, f"{path}.host_rewrite_literal")
    elif host == "auto_host_rewrite":
        kw["auto_host_rewrite"] = pb.auto_host_rewrite.value
    elif host == "host_rewrite_header":
        header = _text(pb.host_rewrite_header, f"{path}.host_rewrite_header")
        kw["host_rewrite_header"] = m.ascii_lower(header)
    kw["append_x_forwarded_host"] = pb.append_x_forwarded_host
    if pb.HasField("timeout"):
        kw["timeout"] = _milliseconds(pb.timeout, f"{path}.timeout")
    if pb.HasField("idle_timeout"):
        # The connection manager's stream idle timer for this route (0 switches it off).
        kw["idle_timeout"] = _milliseconds(pb.idle_timeout, f"{path}.idle_timeout")
    if pb.HasField("max_stream_duration"):
        kw["max_stream_duration"] = _max_stream_duration(pb.max_stream_duration, f"{path}.max_stream_duration")
    return RouteAction(**kw)


def _max_stream_duration(pb: rc_pb2.RouteAction.MaxStreamDuration, path: str) -> MaxStreamDuration:
    """RouteAction.MaxStreamDuration: each Duration at millisecond precision, None when unset."""
    check_fields(
        pb, path, handled=("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset")
    )
    out: dict[str, Any] = {}
    for name in ("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset"):
        if pb.HasField(name):
            out[name] = _milliseconds(getattr(pb, name), f"{path}.{name}")
    return MaxStreamDuration(**out)


_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


def _mirror_policy(pb: rc_pb2.RouteAction.RequestMirrorPolicy, path: str) -> MirrorPolicy:
    check_fields(
        pb,
        path,
        handled=("cluster", "runtime_fraction", "disable_shadow_host_suffix_append"),
    )
    cluster = _text(pb.cluster, f"{path}.cluster", min_len=1)
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
        check_fields(hp, p, handled=("header", "cookie", "connection_properties", "query_parameter", "terminal"))
        kind = hp.WhichOneof("policy_specifier")
        if kind == "header":
            check_fields(hp.header, f"{p}.header", handled=("header_name",))
            name = m.ascii_lower(_text(hp.header.header_name, f"{p}.header.header_name", min_len=1))
            out.append(HashPolicy(HashPolicyKind.HEADER, name, hp.terminal))
        elif kind == "cookie":
            out.append(_cookie_policy(hp.cookie, f"{p}.cookie", hp.terminal))
        elif kind == "connection_properties":
            # source_ip false: Envoy adds no hash method at all (and `terminal` goes with it).
            if hp.connection_properties.source_ip:
                out.append(HashPolicy(HashPolicyKind.SOURCE_IP, "", hp.terminal))
        elif kind == "query_parameter":
            name = _text(hp.query_parameter.name, f"{p}.query_parameter.name", min_len=1)
            out.append(HashPolicy(HashPolicyKind.QUERY_PARAMETER, name, hp.terminal))
        else:
            raise ConfigError(p, 'field: "policy_specifier", reason: is required')
    return tuple(out)


def _cookie_policy(pb: rc_pb2.RouteAction.HashPolicy.Cookie, path: str, terminal: bool) -> HashPolicy:
    """A cookie hash policy.  With `ttl`, Envoy generates a missing cookie (Router's
    addDownstreamSetCookie); it keeps whole seconds of the ttl (std::chrono::seconds(ttl.seconds())).
    path and attributes only shape that generated cookie, so without a ttl they are not kept."""
    check_fields(pb, path, handled=("name", "ttl", "path", "attributes"))
    name = _text(pb.name, f"{path}.name", min_len=1)
    if not pb.HasField("ttl"):
        return HashPolicy(HashPolicyKind.COOKIE, name, terminal)
    attributes = []
    for i, a in enumerate(pb.attributes):
        ap = f"{path}.attributes[{i}]"
        check_fields(a, ap, handled=("name", "value"))
        attributes.append((_text(a.name, f"{ap}.name", min_len=1), _text(a.value, f"{ap}.value")))
    return HashPolicy(
        HashPolicyKind.COOKIE,
        name,
        terminal,
        ttl=pb.ttl.seconds,
        path=_text(pb.path, f"{path}.path"),
        attributes=tuple(attributes),
    )


def translate_redirect_action(pb: rc_pb2.RedirectAction, path: str) -> RedirectAction:
    check_fields(pb, path, handled=[f.name for f in pb.DESCRIPTOR.fields])
    kw: dict[str, Any] = {}
    if pb.WhichOneof("scheme_rewrite_specifier") == "https_redirect":
        kw["scheme"] = "https" if pb.https_redirect else ""
    else:
        kw["scheme"] = _text(pb.scheme_redirect, f"{path}.scheme_redirect")
    kw["host"] = _text(pb.host_redirect, f"{path}.host_redirect")
    kw["port"] = pb.port_redirect
    which = pb.WhichOneof("path_rewrite_specifier")
    if which == "path_redirect":
        kw["path"] = _text(pb.path_redirect, f"{path}.path_redirect")
    elif which == "prefix_rewrite":
        kw["prefix_rewrite"] = _text(pb.prefix_rewrite, f"{path}.prefix_rewrite")
    elif which == "regex_rewrite":
        kw["regex_rewrite"] = _regex_rewrite(pb.regex_rewrite, f"{path}.regex_rewrite")
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
        name = _text(pb.filename, f"{path}.filename", min_len=1)
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
        mutations=_maybe_mutations(pb, path),
        match_prefix=matched,
        typed_per_filter_config=per_filter,
    )


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
    vh_retry = translate_retry_policy(pb.retry_policy, f"{path}.retry_policy") if pb.HasField("retry_policy") else None
    name = _text(pb.name, f"{path}.name", min_len=1)
    if not pb.domains:
        raise ConfigError(f"{path}.domains", "value must contain at least 1 item(s)")
    domains = tuple(_text(d, f"{path}.domains[{i}]") for i, d in enumerate(pb.domains))
    routes = tuple(translate_route(r, f"{path}.routes[{i}]", max_body) for i, r in enumerate(pb.routes))
    if vh_retry is not None:
        # A route without its own retry_policy uses the virtual host's (Envoy: no merging of fields).
        routes = tuple(_with_vhost_retry(r, vh_retry) for r in routes)
    return VirtualHost(
        name=name,
        domains=domains,
        routes=routes,
        mutations=_maybe_mutations(pb, path),
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
        m.ascii_lower(_text(h, f"{path}.internal_only_headers[{i}]")).encode()
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
        mutations=_maybe_mutations(pb, path),
        internal_only_headers=internal_only,
        ignore_port_in_host_matching=pb.ignore_port_in_host_matching,
        most_specific_header_mutations_wins=pb.most_specific_header_mutations_wins,
        table=table,
    )

"""Route matchers of envoy.config.route.v3 (RouteMatch, HeaderMatcher, QueryParameterMatcher) and
type.matcher.v3.StringMatcher -> routing.matchers, with the proto-validate rules Envoy applies
(lengths, header-name charsets, RE2 program size).  Also the small field validators the route,
header and cluster translators share.  Split out of rds.py; rbac, fault, retry and health-check
translation use the same matchers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf.duration_pb2 import Duration

from sidecar.model.route import RegexRewrite, RequestMatcher, RouteMatch
from sidecar.routing import matchers as m
from sidecar.translate.common import bool_value
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields, opt_uint

_CTL = re.compile(r"[\x00\n\r]")
MAX_HEADER_BYTES = 16384
T = TypeVar("T")


# --- small validators (proto-validate rules of the fields we handle) -----------------------------


def header_text(value: str, path: str, *, min_len: int = 0, max_bytes: int = MAX_HEADER_BYTES) -> str:
    """Non-strict HTTP_HEADER_NAME/VALUE: no NUL, CR or LF; and the field's length bounds."""
    if len(value) < min_len:
        raise ConfigError(path, f"value length must be at least {min_len} characters")
    if len(value.encode()) > max_bytes:
        raise ConfigError(path, f"value length must be at most {max_bytes} bytes")
    if _CTL.search(value):
        raise ConfigError(path, "value must not contain NUL, CR or LF")
    return value


def milliseconds(d: Duration, path: str) -> float:
    """A Duration in seconds at Envoy's millisecond precision (DurationUtil::durationToMilliseconds)."""
    if d.seconds < 0 or d.nanos < 0 or d.seconds > 315_576_000_000:
        raise ConfigError(path, "Duration out-of-range")
    return (d.seconds * 1000 + d.nanos // 1_000_000) / 1000


def compiled(build: Callable[[], T], path: str) -> T:
    try:
        return build()
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None


def regex_matcher(pb: regex_pb2.RegexMatcher, path: str) -> tuple[str, int]:
    """The regex text and the RE2 program size limit of a RegexMatcher."""
    check_fields(pb, path, handled=("regex", "google_re2"))
    limit = m.DEFAULT_MAX_PROGRAM_SIZE
    if pb.HasField("google_re2"):
        check_fields(pb.google_re2, f"{path}.google_re2", handled=("max_program_size",))
        limit = opt_uint(pb.google_re2, "max_program_size", limit)
    if not pb.regex:
        raise ConfigError(f"{path}.regex", "value length must be at least 1 characters")
    compiled(lambda: m.compile_regex(pb.regex, limit), f"{path}.regex")
    return pb.regex, limit


def regex_rewrite(pb: regex_pb2.RegexMatchAndSubstitute, path: str) -> RegexRewrite:
    check_fields(pb, path, handled=("pattern", "substitution"))
    if not pb.HasField("pattern"):
        raise ConfigError(f"{path}.pattern", "value is required")
    regex, limit = regex_matcher(pb.pattern, f"{path}.pattern")
    substitution = header_text(pb.substitution, f"{path}.substitution")
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
        regex, limit = regex_matcher(pb.safe_regex, f"{path}.safe_regex")
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
    name = m.ascii_lower(header_text(pb.name, f"{path}.name", min_len=1))
    # Envoy's header map answers "host" with :authority.
    name = ":authority" if name == "host" else name
    which = pb.WhichOneof("header_match_specifier")
    value: m.ValueMatcher | None = None
    present = True
    if which == "exact_match":
        # The deprecated exact_match "" matches any value (HeaderDataExactMatch).
        value = m.ExactMatcher(pb.exact_match) if pb.exact_match else m.AnyValueMatcher()
    elif which == "safe_regex_match":
        regex, limit = regex_matcher(pb.safe_regex_match, f"{path}.safe_regex_match")
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
    name = header_text(pb.name, f"{path}.name", min_len=1, max_bytes=1024)
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
        regex, limit = regex_matcher(pb.safe_regex, f"{path}.safe_regex")
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

"""Compiled request matchers: paths, strings, headers, query parameters (Envoy's route matching).

Owns the per-request predicates that `RouteTable.select` runs: the path matchers of RouteMatch
(prefix, path, safe_regex, path_separated_prefix), type.matcher.v3.StringMatcher, and the header,
query-parameter and gRPC requirements.  Everything is built once by translate/rds.py; `matches`
allocates nothing it can avoid (lowercased patterns are precomputed).  Must not know protobuf.

Semantics were checked against Envoy 1.40 (source/common/common/matchers.cc,
source/common/http/header_utility.cc, source/common/router/config_utility.cc) and its binary."""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import re2

from sidecar.model.route import RequestView

# Envoy's RE2 "error level" program size threshold (runtime re2.max_program_size.error_level).
DEFAULT_MAX_PROGRAM_SIZE = 100

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
try:  # google-re2's extension module; see full_matcher
    from re2 import _re2 as _re2_ext

    _ANCHOR_BOTH: Any = _re2_ext.RE2.Anchor.ANCHOR_BOTH
except (ImportError, AttributeError):  # pragma: no cover - another google-re2 layout
    _ANCHOR_BOTH = None


def ascii_lower(s: str) -> str:
    """absl::AsciiStrToLower: only A-Z fold (str.lower would also fold e.g. the Kelvin sign)."""
    return s.lower() if s.isascii() else s.translate(_ASCII_LOWER)


def path_end(path: str) -> int:
    """Index where the query or fragment starts (Http::PathUtil::removeQueryAndFragment)."""
    q = path.find("?")
    h = path.find("#")
    if q < 0:
        return len(path) if h < 0 else h
    return q if h < 0 or q < h else h


def compile_regex(regex: str, max_program_size: int = DEFAULT_MAX_PROGRAM_SIZE) -> Any:
    """An RE2 program, refused (ValueError) when it does not parse or is too big, as Envoy does."""
    try:
        compiled = re2.compile(regex, _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else b"invalid regex"
        raise ValueError(detail.decode() if isinstance(detail, bytes) else str(detail)) from None
    size = compiled.programsize
    if size > max_program_size:
        raise ValueError(
            f"regex '{regex}' RE2 program size of {size} > max program size of {max_program_size}"
        )
    return compiled


def full_matcher(compiled: Any) -> Callable[[str], bool]:
    """RE2::FullMatch(text, compiled) as a function.  google-re2's public `fullmatch` spends ~3 us
    per call mapping byte offsets back to str offsets for the match object; a yes/no answer needs
    none of that, so call the extension's Match directly (~0.9 us) when it is there."""
    raw = getattr(compiled, "_regexp", None)
    if raw is None or _ANCHOR_BOTH is None:  # pragma: no cover - another google-re2 layout
        return lambda text: compiled.fullmatch(text) is not None
    match = raw.Match
    anchor = _ANCHOR_BOTH

    def full(text: str) -> bool:
        data = text.encode("utf-8", "surrogatepass")
        return bool(match(anchor, data, 0, len(data))[0][0] >= 0)

    return full


class ValueMatcher(Protocol):
    def match(self, value: str) -> bool: ...


class MultiValueRequestView(RequestView, Protocol):
    """A RequestView that can also give the values of a repeated header one by one.  Envoy 1.40
    matches a header that occurs several times value by value (any may match; invert_match then
    negates that), which the joined `header()` cannot express when a value holds a comma.
    HeaderMatcher uses this method when the request has it."""

    def header_values(self, name: str) -> Sequence[str] | None: ...


# --- path matchers: RouteMatch.path_specifier, on the path without query and fragment -----------


@dataclass(frozen=True, slots=True)
class PrefixPathMatcher:
    prefix: str
    case_sensitive: bool = True
    _lower: str = field(init=False, repr=False, compare=False)
    # A '?' or '#' in the prefix can never occur in a query-stripped path.
    _never: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lower", ascii_lower(self.prefix))
        object.__setattr__(self, "_never", "?" in self.prefix or "#" in self.prefix)

    def matches(self, path: str) -> bool:
        # Without '?'/'#' in the prefix, startswith on the full path equals startswith on the
        # stripped path, so nothing is sliced in the common case.
        if self._never:
            return False
        if self.case_sensitive:
            return path.startswith(self.prefix)
        n = len(self._lower)
        return len(path) >= n and ascii_lower(path[:n]) == self._lower


@dataclass(frozen=True, slots=True)
class ExactPathMatcher:
    path: str
    case_sensitive: bool = True
    _lower: str = field(init=False, repr=False, compare=False)
    _never: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lower", ascii_lower(self.path))
        object.__setattr__(self, "_never", "?" in self.path or "#" in self.path)

    def matches(self, path: str) -> bool:
        if self._never:
            return False
        n = len(self.path)
        # The query-stripped path must have exactly n characters.
        if len(path) > n and path[n] not in "?#":
            return False
        if self.case_sensitive:
            return path.startswith(self.path)
        return len(path) >= n and ascii_lower(path[:n]) == self._lower


@dataclass(frozen=True, slots=True)
class SeparatedPrefixPathMatcher:
    """path_separated_prefix: the prefix, then end of path or '/' (proto forbids '?', '#', a final '/')."""

    prefix: str
    case_sensitive: bool = True
    _inner: PrefixPathMatcher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inner", PrefixPathMatcher(self.prefix, self.case_sensitive))

    def matches(self, path: str) -> bool:
        if not self._inner.matches(path):
            return False
        n = len(self.prefix)
        return len(path) == n or path[n] in "/?#"


@dataclass(frozen=True, slots=True)
class RegexPathMatcher:
    """safe_regex path: RE2 full match.  Envoy ignores case_sensitive for regex routes."""

    regex: str
    max_program_size: int = DEFAULT_MAX_PROGRAM_SIZE
    _full: Callable[[str], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = compile_regex(self.regex, self.max_program_size)
        object.__setattr__(self, "_full", full_matcher(compiled))

    def matches(self, path: str) -> bool:
        end = path_end(path)
        return self._full(path if end == len(path) else path[:end])


# --- value matchers: type.matcher.v3.StringMatcher and the HeaderMatcher specifiers -------------


@dataclass(frozen=True, slots=True)
class ExactMatcher:
    exact: str
    ignore_case: bool = False
    _lower: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lower", ascii_lower(self.exact))

    def match(self, value: str) -> bool:
        if not self.ignore_case:
            return value == self.exact
        return len(value) == len(self._lower) and ascii_lower(value) == self._lower


@dataclass(frozen=True, slots=True)
class PrefixMatcher:
    prefix: str
    ignore_case: bool = False
    _lower: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lower", ascii_lower(self.prefix))

    def match(self, value: str) -> bool:
        if not self.ignore_case:
            return value.startswith(self.prefix)
        n = len(self._lower)
        return len(value) >= n and ascii_lower(value[:n]) == self._lower


@dataclass(frozen=True, slots=True)
class SuffixMatcher:
    suffix: str
    ignore_case: bool = False
    _lower: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lower", ascii_lower(self.suffix))

    def match(self, value: str) -> bool:
        if not self.ignore_case:
            return value.endswith(self.suffix)
        n = len(self._lower)
        return len(value) >= n and ascii_lower(value[len(value) - n :]) == self._lower


@dataclass(frozen=True, slots=True)
class ContainsMatcher:
    contains: str
    ignore_case: bool = False
    _lower: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lower", ascii_lower(self.contains))

    def match(self, value: str) -> bool:
        if not self.ignore_case:
            return self.contains in value
        return self._lower in ascii_lower(value)


@dataclass(frozen=True, slots=True)
class RegexMatcher:
    """safe_regex: RE2 full match (ignore_case is refused at translate time, as Envoy does)."""

    regex: str
    max_program_size: int = DEFAULT_MAX_PROGRAM_SIZE
    _full: Callable[[str], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = compile_regex(self.regex, self.max_program_size)
        object.__setattr__(self, "_full", full_matcher(compiled))

    def match(self, value: str) -> bool:
        return self._full(value)


@dataclass(frozen=True, slots=True)
class AnyValueMatcher:
    """The deprecated exact_match "" of HeaderMatcher: any value of a present header matches."""

    def match(self, value: str) -> bool:
        return True


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_ASCII_SPACE = " \t\n\v\f\r"


def parse_int64(value: str) -> int | None:
    """absl::SimpleAtoi into int64: ASCII whitespace around, optional sign, decimal digits."""
    s = value.strip(_ASCII_SPACE)
    digits = s[1:] if s[:1] in ("+", "-") else s
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    n = int(s)
    return n if _INT64_MIN <= n <= _INT64_MAX else None


@dataclass(frozen=True, slots=True)
class RangeMatcher:
    """range_match: the value parses as an int64 in [start, end)."""

    start: int
    end: int

    def match(self, value: str) -> bool:
        n = parse_int64(value)
        return n is not None and self.start <= n < self.end


# --- request matchers (model.route.RequestMatcher) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderMatcher:
    """config.route.v3.HeaderMatcher.  `value` None means present_match with `present`.

    As Envoy's matchHeaders: a missing header (without treat_missing_header_as_empty) fails every
    value specifier whatever invert_match says; for present_match the answer is
    `(header is present) == present`, then inverted.  treat_missing_header_as_empty makes a missing
    header an empty (and present) one.  A repeated header matches when any of its values does
    (see MultiValueRequestView).  `name` is lowercase; "host" is looked up as :authority."""

    name: str
    value: ValueMatcher | None = None
    present: bool = True
    invert: bool = False
    treat_missing_as_empty: bool = False
    _if_missing: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        missing = self.value is None and (not self.present) != self.invert
        object.__setattr__(self, "_if_missing", missing)

    def matches(self, request: RequestView, path: str) -> bool:
        value = request.header(self.name)
        if value is None:
            if not self.treat_missing_as_empty:
                return self._if_missing
            value = ""
        if self.value is None:
            return self.present != self.invert
        # Values of a repeated header are joined with ',', so only then can there be several.
        if "," in value:
            values = getattr(request, "header_values", None)
            entries = values(self.name) if values is not None else None
            if entries is not None and len(entries) > 1:
                matched = False
                for entry in entries:
                    if self.value.match(entry):
                        matched = True
                        break
                return matched != self.invert
        return self.value.match(value) != self.invert


def first_query_value(path: str, name: str) -> str | None:
    """First value of `name` in the query of `path`, undecoded, as QueryParamsMulti::parseQueryString:
    split on '&' from the first '?' to the end (a fragment is not cut off); "k" alone has value ""."""
    start = path.find("?")
    if start < 0:
        return None
    start += 1
    size = len(path)
    n = len(name)
    while start < size:
        end = path.find("&", start)
        if end < 0:
            end = size
        eq = path.find("=", start, end)
        key_end = end if eq < 0 else eq
        if key_end - start == n and path.startswith(name, start):
            return "" if eq < 0 else path[eq + 1 : end]
        start = end + 1
    return None


@dataclass(frozen=True, slots=True)
class QueryParameterMatcher:
    """config.route.v3.QueryParameterMatcher on the first value of the parameter.

    present_match (when given) answers `(parameter is present) == present_match` (Envoy 1.40's
    default enable_new_query_param_present_match_behavior); with neither specifier the parameter
    only has to be present."""

    name: str
    value: ValueMatcher | None = None
    present_match: bool | None = None

    def matches(self, request: RequestView, path: str) -> bool:
        value = first_query_value(path, self.name)
        if self.present_match is not None:
            return (value is not None) == self.present_match
        if value is None:
            return False
        return self.value is None or self.value.match(value)


_GRPC = "application/grpc"


@dataclass(frozen=True, slots=True)
class GrpcMatcher:
    """RouteMatch.grpc: content-type is exactly application/grpc or starts application/grpc+
    (Grpc::Common::hasGrpcContentType; application/grpc-web is not gRPC)."""

    def matches(self, request: RequestView, path: str) -> bool:
        ct = request.header("content-type")
        if ct is None or not ct.startswith(_GRPC):
            return False
        return len(ct) == len(_GRPC) or ct[len(_GRPC)] == "+"

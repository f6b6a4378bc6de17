"""Route matching within a virtual host (Envoy's RouteEntryImplBase::matchRoute): path, prefix,
safe_regex (RE2, full match), path_separated_prefix, case_sensitive; header matchers (string_match
forms, present_match, invert_match, treat_missing_header_as_empty, pseudo-headers); query_parameters.
The first route that matches wins; the query string is not part of the path being matched."""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential
from tests.support.http1 import Header, request

pytestmark = pytest.mark.differential
BOOTSTRAP = "routes.yaml"
UPSTREAMS = ()
NO_ROUTE = None


def _check(diff: Differential, raw: bytes, route: str | None) -> None:
    obs = diff.exchange(raw)
    if route is NO_ROUTE:
        assert (obs.status, obs.body) == (404, b"")
    else:
        assert (obs.status, obs.body) == (200, route.encode())


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/exact", "path"),
        ("/exact?x=1", "path"),
        ("/exact/", NO_ROUTE),
        ("/EXACT", NO_ROUTE),
        ("/nocasepath", "path-nocase"),
        ("/NOCASEPATH?q", "path-nocase"),
        ("/pre/", "prefix"),
        ("/pre/x/y", "prefix"),
        ("/pre", NO_ROUTE),
        ("/PRE/x", NO_ROUTE),
        ("/nocase/x", "prefix-nocase"),
        ("/NOCASE/X", "prefix-nocase"),
        ("/re/123", "regex"),
        ("/re/123?q=1", "regex"),
        ("/re/123/x", NO_ROUTE),  # RE2 full match, not search
        ("/re/abc", NO_ROUTE),
        ("/sep", "separated"),
        ("/sep/", "separated"),
        ("/sep/x", "separated"),
        ("/sep?x=1", "separated"),
        ("/sepx", NO_ROUTE),
        ("/SEP", NO_ROUTE),
        ("/order/specific", "order-first"),  # first match wins
    ],
)
def test_path_matchers(diff: Differential, path: str, route: str | None) -> None:
    _check(diff, request("GET", path), route)


H = "x-a"


@pytest.mark.parametrize(
    ("path", "headers", "route"),
    [
        ("/h/exact", [(H, "v1")], "h-exact"),
        ("/h/exact", [(H, "V1")], "h-fallthrough"),
        ("/h/exact", [], "h-fallthrough"),
        ("/h/exact-nocase", [(H, "V1")], "h-exact-nocase"),
        ("/h/exact-nocase", [(H, "v1")], "h-exact"),  # "/h/exact" is a prefix of the path: first wins
        ("/h/prefix", [(H, "abcdef")], "h-prefix"),
        ("/h/prefix", [(H, "xabc")], "h-fallthrough"),
        ("/h/suffix", [(H, "123xyz")], "h-suffix"),
        ("/h/suffix", [(H, "xyz1")], "h-fallthrough"),
        ("/h/contains", [(H, "amidb")], "h-contains"),
        ("/h/regex", [(H, "v12")], "h-regex"),
        ("/h/regex", [(H, "v12x")], "h-fallthrough"),
        ("/h/present", [(H, "anything")], "h-present"),
        ("/h/present", [(H, "")], "h-present"),
        ("/h/present", [], "h-fallthrough"),
        ("/h/absent", [], "h-present-false"),
        ("/h/absent", [(H, "x")], "h-fallthrough"),
        ("/h/invert", [(H, "v2")], "h-invert"),
        ("/h/invert", [(H, "v1")], "h-fallthrough"),
        ("/h/invert", [], "h-fallthrough"),  # a missing header matches nothing, inverted or not
        ("/h/invempty", [], "h-invert-missing-as-empty"),  # ... unless treated as empty
        ("/h/invempty", [(H, "v")], "h-fallthrough"),
        ("/h/invpresent", [], "h-invert-present"),
        ("/h/invpresent", [(H, "x")], "h-fallthrough"),
        ("/h/empty", [], "h-missing-as-empty"),
        ("/h/empty", [(H, "")], "h-missing-as-empty"),
        ("/h/empty", [(H, "v")], "h-fallthrough"),
        ("/h/strictempty", [], "h-fallthrough"),
        ("/h/strictempty", [(H, "")], "h-empty-strict"),
        ("/h/two", [("x-a", "1"), ("x-b", "2")], "h-two"),
        ("/h/two", [("x-a", "1")], "h-fallthrough"),
        # Several values of one header are matched one by one (any value may match), not joined.
        ("/h/multi", [("x-m", "a"), ("x-m", "b")], "h-fallthrough"),
        ("/h/multi", [("x-m", "a,b")], "h-multi"),
        ("/h/multi", [("X-M", "a")], "h-fallthrough"),
        ("/h/anyvalue", [("x-m", "a"), ("x-m", "b")], "h-any-value"),
        ("/h/anyvalue", [("x-m", "a"), ("X-M", "b")], "h-any-value"),
        ("/h/anyvalue", [("x-m", "a,b")], "h-fallthrough"),
        ("/h/invmulti", [("x-m", "a"), ("x-m", "b")], "h-fallthrough"),  # inverted: no value may match
        ("/h/invmulti", [("x-m", "b"), ("x-m", "c")], "h-invert-multi"),
        ("/h/path?needle=1", [], "h-path"),  # :path includes the query
        ("/h/scheme", [], "h-scheme"),
    ],
)
def test_header_matchers(diff: Differential, path: str, headers: list[Header], route: str) -> None:
    _check(diff, request("GET", path, headers=headers), route)


@pytest.mark.parametrize(
    ("method", "route"), [("POST", "h-method"), ("GET", "h-fallthrough"), ("post", NO_ROUTE)]
)
def test_method_pseudo_header(diff: Differential, method: str, route: str | None) -> None:
    obs = diff.exchange(request(method, "/h/method", body=b""))
    if route is NO_ROUTE:
        assert obs.status == 400  # "post" is not a method Envoy's codec accepts
    else:
        assert (obs.status, obs.body) == (200, route.encode())


@pytest.mark.parametrize(
    ("host", "route"),
    [
        ("a.special.test", "h-authority"),
        ("special.test", "h-fallthrough"),
        ("A.SPECIAL.TEST", "h-fallthrough"),
    ],
)
def test_authority_pseudo_header(diff: Differential, host: str, route: str) -> None:
    _check(diff, request("GET", "/h/authority", host=host), route)


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/q/exact?a=1", "q-exact"),
        ("/q/exact?a=2", "q-fallthrough"),
        ("/q/exact?b=1&a=1", "q-exact"),
        ("/q/exact?a=1&a=2", "q-exact"),  # the first value counts
        ("/q/exact?a=%31", "q-fallthrough"),  # values are not percent-decoded
        ("/q/exact", "q-fallthrough"),
        ("/q/prefix?a=abc", "q-prefix"),
        ("/q/nocase?a=VAL", "q-nocase"),
        ("/q/regex?a=123", "q-regex"),
        ("/q/regex?a=12a", "q-fallthrough"),
        ("/q/present?flag", "q-present"),
        ("/q/present?flag=", "q-present"),
        ("/q/present?x=1", "q-fallthrough"),
        ("/q/two?a=1&b=2", "q-two"),
        ("/q/two?a=1", "q-fallthrough"),
    ],
)
def test_query_parameters(diff: Differential, path: str, route: str) -> None:
    _check(diff, request("GET", path), route)

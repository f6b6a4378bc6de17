"""Path rewrites and redirect locations, checked against Envoy 1.40's answers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.model.route import (
    DirectResponseAction,
    RedirectAction,
    RegexRewrite,
    Route,
    RouteAction,
    RouteMatch,
)
from sidecar.routing import matchers as m
from sidecar.routing.rewrite import redirect_location, replace_all, rewrite_path, rewritten_path


def rx(regex: str, substitution: str) -> RegexRewrite:
    return RegexRewrite(m.compile_regex(regex), substitution)


def prefix_route(prefix: str, case_sensitive: bool = True) -> Route:
    return Route(
        RouteMatch(m.PrefixPathMatcher(prefix, case_sensitive)),
        DirectResponseAction(200),
        match_prefix=prefix,
    )


def regex_route(regex: str) -> Route:
    return Route(RouteMatch(m.RegexPathMatcher(regex)), DirectResponseAction(200))


# (pattern, substitution, text, result), the last column as Envoy rewrote "/abxd", "/a/b", "/b".
REPLACE_CASES = [
    ("/(a)", "/\\2", ["/abxd", "/a/b", "/b"]),  # unknown group: nothing replaced
    ("/(a)", "/x\\ny", ["/xbxd", "/x/b", "/b"]),  # bad escape: RE2 stops writing there
    ("/(a)", "/x\\\\y", ["/x\\ybxd", "/x\\y/b", "/b"]),
    ("/(a)", "[\\0]", ["[/a]bxd", "[/a]/b", "/b"]),
    ("x*", "-", ["-/-a-b-d-", "-/-a-/-b-", "-/-b-"]),  # RE2's empty-match rule, not re.sub's
    ("/(a)", "/$1", ["/$1bxd", "/$1/b", "/b"]),
    ("/(a)|/(b)", "[\\2]", ["[]bxd", "[][b]", "[b]"]),
    ("^/", "Z", ["Zabxd", "Za/b", "Zb"]),
]


@pytest.mark.parametrize(("pattern", "substitution", "expected"), REPLACE_CASES)
def test_replace_all_as_envoy(pattern: str, substitution: str, expected: list[str]) -> None:
    compiled = m.compile_regex(pattern)
    assert [replace_all(compiled, t, substitution) for t in ["/abxd", "/a/b", "/b"]] == expected


@given(literal=st.text(alphabet="ab/", min_size=1, max_size=3), text=st.text(alphabet="ab/", max_size=12))
def test_replace_all_of_a_literal_is_str_replace(literal: str, text: str) -> None:
    assert replace_all(m.compile_regex(re.escape(literal)), text, "<\\0>") == text.replace(
        literal, f"<{literal}>"
    )


def test_rewrite_path() -> None:
    assert (
        rewrite_path(prefix_route("/PFX/", False), RouteAction(prefix_rewrite="/new/"), "/pfx/a?q=1")
        == "/new/a?q=1"
    )
    exact = Route(
        RouteMatch(m.ExactPathMatcher("/exactp")), DirectResponseAction(200), match_prefix="/exactp"
    )
    assert rewrite_path(exact, RouteAction(prefix_rewrite="/ep"), "/exactp?k=v") == "/ep?k=v"
    # On a regex route prefix_rewrite replaces the whole path before the query.
    assert rewrite_path(regex_route("/rp/.*"), RouteAction(prefix_rewrite="/Q"), "/rp/abc?x") == "/Q?x"
    # An empty prefix route: everything is kept after the new prefix.
    assert rewrite_path(prefix_route(""), RouteAction(prefix_rewrite="/v2"), "/a?b") == "/v2/a?b"
    action = RouteAction(regex_rewrite=rx("a", "b"))
    assert rewrite_path(prefix_route("/"), action, "/rxpart/aa?a=a") == "/rxpbrt/bb?a=a"
    path = "/rxnomatch/a?b"
    # A regex that matches nothing still counts as a rewrite (Envoy sets x-envoy-original-path).
    assert rewritten_path(prefix_route("/"), RouteAction(regex_rewrite=rx("zzz", "y")), path) == path
    # An empty substitution result and no rewrite configured are no rewrite.
    assert rewritten_path(prefix_route("/"), RouteAction(regex_rewrite=rx(".*", "")), path) is None
    assert rewritten_path(prefix_route("/"), RouteAction(), path) is None
    assert rewrite_path(prefix_route("/"), RouteAction(regex_rewrite=rx(".*", "")), path) is path


H80 = "h.com:80"
# (action, path, authority, x-forwarded-proto, Location Envoy 1.40 sent)
REDIRECT_CASES = [
    (RedirectAction(scheme="https"), "/a?q=1", H80, None, "https://h.com/a?q=1"),
    (RedirectAction(scheme="http"), "/a?q=1", H80, None, "http://h.com:80/a?q=1"),
    (RedirectAction(scheme="HTTPS"), "/a?q=1", H80, None, "HTTPS://h.com/a?q=1"),
    (RedirectAction(port=8443), "/a?q=1", H80, None, "http://h.com:8443/a?q=1"),
    (RedirectAction(host="new.example"), "/a?q=1", H80, None, "http://new.example/a?q=1"),
    (RedirectAction(host="new.example", port=99), "/a?q=1", H80, None, "http://new.example:99/a?q=1"),
    (RedirectAction(scheme="https", port=8443), "/a?q=1", H80, None, "https://h.com:8443/a?q=1"),
    (RedirectAction(path="/np"), "/a?q=1", H80, None, "http://h.com:80/np?q=1"),
    (RedirectAction(path="/np?z=1", strip_query=True), "/a?q=1", H80, None, "http://h.com:80/np?z=1"),
    (RedirectAction(path="np"), "/a?q=1", H80, None, "http://h.com:80/np?q=1"),
    (RedirectAction(strip_query=True), "/a?q=1", H80, None, "http://h.com:80/a"),
    (RedirectAction(), "/a?q=1", H80, None, "http://h.com:80/a?q=1"),
    (RedirectAction(scheme="https"), "/a", H80, "https", "https://h.com:80/a"),
    (RedirectAction(scheme="https"), "/a", "h.com:443", "http", "https://h.com:443/a"),
    (RedirectAction(scheme="https"), "/a", "h.com:443", "https", "https://h.com:443/a"),
    (RedirectAction(scheme="http"), "/a", "h.com:443", "https", "http://h.com/a"),
    (RedirectAction(port=8443), "/a", "h.com", None, "http://h.com:8443/a"),
    (RedirectAction(port=8443), "/a", "[::1]:80", None, "http://[::1]:8443/a"),
    (RedirectAction(scheme="https"), "/a", "[::1]:80", None, "https://[::1]/a"),
    (RedirectAction(scheme="https"), "/a", "[::1]", None, "https://[::1]/a"),
    (RedirectAction(scheme="https"), "/a", "h.com:8080", None, "https://h.com:8080/a"),
]


@pytest.mark.parametrize(("action", "path", "authority", "xfp", "location"), REDIRECT_CASES)
def test_redirect_location_as_envoy(
    action: RedirectAction, path: str, authority: str, xfp: str | None, location: str
) -> None:
    assert redirect_location(action, "http", authority, path, forwarded_proto=xfp) == location


@pytest.mark.parametrize(
    ("route", "action", "path", "location"),
    [
        (
            prefix_route("/PFX/", False),
            RedirectAction(prefix_rewrite="/new/"),
            "/PfX/a",
            "http://h.com/new/a",
        ),
        (prefix_route("/psp"), RedirectAction(prefix_rewrite="/X"), "/psp", "http://h.com/X"),
        (
            regex_route("/rx/([a-z]+)"),
            RedirectAction(regex_rewrite=rx("/rx/([a-z]+)", "/got/\\1")),
            "/rx/abc?x=1",
            "http://h.com/got/abc?x=1",
        ),
        (regex_route("/rp/.*"), RedirectAction(prefix_rewrite="/Q"), "/rp/abc?x", "http://h.com/Q?x"),
        (
            prefix_route("/"),
            RedirectAction(regex_rewrite=rx(".*", "")),
            "/rxempty/a?b",
            "http://h.com/rxempty/a?b",
        ),
        (prefix_route("/"), RedirectAction(regex_rewrite=rx("x*", "-")), "/abxd", "http://h.com/-/-a-b-d-"),
    ],
)
def test_redirect_with_path_rewrite_as_envoy(
    route: Route, action: RedirectAction, path: str, location: str
) -> None:
    assert redirect_location(action, "http", "h.com", path, route=route) == location

"""RouteTable: virtual host choice by authority (checked against Envoy 1.40) and first-match-wins."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.model.route import DirectResponseAction, RequireTls, Route, RouteMatch, VirtualHost
from sidecar.routing import matchers as m
from sidecar.routing.rewrite import SSL_REDIRECT_ACTION, redirect_location
from sidecar.routing.table import SSL_REDIRECT_ROUTE, DuplicateDomainError, RouteTable, port_start
from tests.unit.routing.request import Req


def vhost(
    name: str, *domains: str, routes: tuple[Route, ...] = (), tls: RequireTls = RequireTls.NONE
) -> VirtualHost:
    if not routes:
        routes = (Route(RouteMatch(m.PrefixPathMatcher("/")), DirectResponseAction(200), name=name),)
    return VirtualHost(name=name, domains=domains, routes=routes, require_tls=tls)


VHOSTS = [
    vhost("exact_port", "foo.com:8080"),
    vhost("exact", "foo.com"),
    vhost("suffix", "*.com"),
    vhost("suffix_long", "*-bar.com"),
    vhost("prefix", "bar.*"),
    vhost("default", "*"),
]
# authority -> (chosen vhost, chosen with ignore_port_in_host_matching), as Envoy 1.40 answered.
AUTHORITIES = {
    "foo.com:8080": ("exact_port", "exact"),
    "FOO.com:8080": ("exact_port", "exact"),
    "foo.com:9090": ("default", "exact"),
    "foo.com": ("exact", "exact"),
    "x.com": ("suffix", "suffix"),
    "x.com:80": ("default", "suffix"),
    "x-bar.com": ("suffix_long", "suffix_long"),
    "-bar.com": ("suffix", "suffix"),  # a wildcard needs one character of its own
    ".com": ("default", "default"),
    "bar.x": ("prefix", "prefix"),
    "bar.x:80": ("prefix", "prefix"),
    "bar.": ("default", "default"),
    "zzz": ("default", "default"),
    "[::1]:80": ("default", "default"),
    "foo.com.": ("default", "default"),
    "foo.com:": ("default", "exact"),
}


@pytest.mark.parametrize("authority", sorted(AUTHORITIES))
@pytest.mark.parametrize("ignore_port", [False, True])
def test_virtual_host_choice_as_envoy(authority: str, ignore_port: bool) -> None:
    table = RouteTable.build(VHOSTS, ignore_port_in_host_matching=ignore_port)
    chosen = table.find_virtual_host(authority)
    assert chosen is not None
    assert chosen.name == AUTHORITIES[authority][ignore_port]
    selected = table.select(authority, "/", Req())
    assert selected is not None and selected[0] is chosen


def test_no_default_means_no_virtual_host() -> None:
    table = RouteTable.build([vhost("a", "a.com")])
    assert table.find_virtual_host("b.com") is None
    assert table.select("b.com", "/", Req()) is None


def test_only_default_skips_the_authority() -> None:
    table = RouteTable.build([vhost("d", "*")])
    assert table.find_virtual_host("") is not None
    assert table.find_virtual_host("[weird") is not None


def test_duplicate_domains_refused() -> None:
    with pytest.raises(DuplicateDomainError) as info:
        RouteTable.build([vhost("a", "x.com"), vhost("b", "y.com", "X.COM")])
    assert (info.value.vhost_index, info.value.domain_index) == (1, 1)
    assert "Duplicate entry of domain x.com" in str(info.value)
    with pytest.raises(DuplicateDomainError, match="single wildcard"):
        RouteTable.build([vhost("a", "*"), vhost("b", "*")])
    with pytest.raises(DuplicateDomainError):
        RouteTable.build([vhost("a", "*.x"), vhost("b", "*.X")])
    # The same text as suffix and prefix wildcard are different domains.
    RouteTable.build([vhost("a", "*x"), vhost("b", "x*")])


def test_port_start() -> None:
    assert [port_start(h) for h in ("a", "a:1", "a:", "[::1]", "[::1]:8", "::1")] == [-1, 1, 1, -1, 5, 1]


_label = st.text(alphabet="ab", min_size=1, max_size=3)


@given(labels=st.lists(_label, min_size=2, max_size=4))
def test_exact_beats_wildcards_and_longest_wildcard_wins(labels: list[str]) -> None:
    host = ".".join(labels)
    table = RouteTable.build(
        [
            vhost("exact", host),
            vhost("suffix", "*" + host[1:]),
            vhost("prefix", host[:-1] + "*"),
            vhost("any", "*"),
        ]
    )
    assert table.find_virtual_host(host.upper()).name == "exact"  # type: ignore[union-attr]
    suffixes = [vhost(f"s{i}", "*" + host[i:]) for i in range(1, len(host))]
    table = RouteTable.build([*suffixes, vhost("any", "*")])
    longest = table.find_virtual_host(host)
    assert longest is not None
    assert longest.name == "s1"


def _route(name: str, prefix: str, header: str | None = None) -> Route:
    reqs = () if header is None else (m.HeaderMatcher(header, None),)
    return Route(RouteMatch(m.PrefixPathMatcher(prefix), reqs), DirectResponseAction(200), name=name)


@given(
    routes=st.lists(
        st.tuples(st.sampled_from(["", "/", "/a", "/a/b", "/b"]), st.sampled_from([None, "x-1", "x-2"])),
        max_size=6,
    ),
    path=st.sampled_from(["/", "/a", "/a/b/c", "/b?a", "/c"]),
    headers=st.sets(st.sampled_from(["x-1", "x-2"])),
)
def test_first_match_wins(routes: list[tuple[str, str | None]], path: str, headers: set[str]) -> None:
    built = tuple(_route(str(i), p, h) for i, (p, h) in enumerate(routes))
    table = RouteTable.build([VirtualHost("v", ("*",), built)])
    req = Req(dict.fromkeys(headers, "1"))
    expected = next(
        (
            r
            for r, (p, h) in zip(built, routes, strict=True)
            if path.startswith(p) and (h is None or h in headers)
        ),
        None,
    )
    got = table.select("host", path, req)
    assert (got[1] if got else None) is expected


def test_requirements_all_must_match() -> None:
    both = Route(
        RouteMatch(
            m.PrefixPathMatcher("/"),
            (m.HeaderMatcher("x-user", m.ExactMatcher("jason")), m.QueryParameterMatcher("debug")),
        ),
        DirectResponseAction(200),
        name="both",
    )
    table = RouteTable.build([VirtualHost("v", ("*",), (both, _route("fallback", "/")))])
    assert table.select("h", "/?debug", Req({"x-user": "jason"}))[1].name == "both"  # type: ignore[index]
    assert table.select("h", "/", Req({"x-user": "jason"}))[1].name == "fallback"  # type: ignore[index]
    assert table.select("h", "/?debug", Req())[1].name == "fallback"  # type: ignore[index]


@pytest.mark.parametrize(
    ("tls", "headers", "redirect"),
    [
        (RequireTls.ALL, {"x-forwarded-proto": "http"}, True),
        (RequireTls.ALL, {"x-forwarded-proto": "https"}, False),
        (RequireTls.ALL, {"x-forwarded-proto": "http", "x-envoy-internal": "true"}, True),
        (RequireTls.EXTERNAL_ONLY, {"x-forwarded-proto": "http"}, True),
        (RequireTls.EXTERNAL_ONLY, {"x-forwarded-proto": "http", "x-envoy-internal": "true"}, False),
        (RequireTls.NONE, {"x-forwarded-proto": "http"}, False),
    ],
)
def test_require_tls(tls: RequireTls, headers: dict[str, str], redirect: bool) -> None:
    # No route at all: the TLS redirect comes before route matching, as in Envoy.
    table = RouteTable.build([VirtualHost("v", ("*",), (_route("r", "/only"),), require_tls=tls)])
    got = table.select("h:80", "/x?y", Req(headers))
    if redirect:
        assert got is not None and got[1] is SSL_REDIRECT_ROUTE
        assert got[1].action is SSL_REDIRECT_ACTION
        assert redirect_location(SSL_REDIRECT_ACTION, "http", "h:80", "/x?y") == "https://h:80/x?y"
    else:
        assert got is None


def test_require_tls_without_forwarded_proto_routes_nothing() -> None:
    table = RouteTable.build([VirtualHost("v", ("*",), (_route("r", "/"),), require_tls=RequireTls.ALL)])
    assert table.select("h", "/", Req()) is None


def test_repr_lists_domains() -> None:
    assert repr(RouteTable.build(VHOSTS)) == (
        "RouteTable(['foo.com:8080', 'foo.com', '*-bar.com', '*.com', 'bar.*', '*'])"
    )


@given(
    routes=st.lists(
        st.tuples(st.sampled_from(["", "/", "/a", "/a/b", "/b"]), st.sampled_from([None, "x-1"])),
        min_size=1,
        max_size=5,
    ),
    calls=st.lists(
        st.tuples(
            st.sampled_from(sorted(AUTHORITIES)),
            st.sampled_from(["/", "/a", "/a/b/c", "/b?a", "/c"]),
            st.sets(st.sampled_from(["x-1"])),
        ),
        max_size=12,
    ),
)
def test_select_cached_answers_as_select(
    routes: list[tuple[str, str | None]], calls: list[tuple[str, str, set[str]]]
) -> None:
    # Repeated (authority, path) pairs, headers varying: the cache may only answer when no route
    # reads a header, and then must answer exactly what select does.
    built = tuple(_route(str(i), p, h) for i, (p, h) in enumerate(routes))
    table = RouteTable.build([*VHOSTS[:-1], VirtualHost("v", ("*",), built)])
    assert table.cacheable == all(h is None for _, h in routes)
    for authority, path, headers in calls * 2:
        req = Req(dict.fromkeys(headers, "1"))
        assert table.select_cached(authority.encode(), path.encode(), req) == table.select(authority, path, req)


def test_require_tls_tables_are_not_cached() -> None:
    table = RouteTable.build([vhost("tls", "*", tls=RequireTls.ALL)])
    assert not table.cacheable
    plain = Req({})
    assert table.select_cached(b"x", b"/", plain) == table.select("x", "/", plain)

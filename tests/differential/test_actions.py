"""Route actions (Envoy's RouteEntryImplBase and the router filter): cluster, weighted_clusters
(weight 0 never picked), prefix_rewrite and regex_rewrite (x-envoy-original-path), host_rewrite_literal,
auto_host_rewrite, redirect forms, direct_response, and the route timeout (504 `upstream request timeout`,
x-envoy-expected-rq-timeout-ms)."""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential, Observation
from tests.support.http1 import request
from tests.support.upstream import Behaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "actions.yaml"


@pytest.fixture(autouse=True)
def serving(diff: Differential) -> None:
    for name in ("service1", "service2"):
        diff.ups[name].behave(Behaviour(headers=(("x-served-by", name),), body=f"from {name}".encode()))


def _proxied(obs: Observation, upstream: str, target: str) -> None:
    assert (obs.status, obs.body) == (200, f"from {upstream}".encode())
    up = obs.only_upstream
    assert (up.upstream, up.method, up.target) == (upstream, "GET", target)


def test_cluster(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/s1/x?y=1"))
    _proxied(obs, "service1", "/s1/x?y=1")
    up = obs.only_upstream
    assert up.header_names == ["host", "x-forwarded-proto", "x-request-id", "x-envoy-expected-rq-timeout-ms"]
    assert (
        up.header("host"),
        up.header("x-forwarded-proto"),
        up.header("x-envoy-expected-rq-timeout-ms"),
    ) == ("example.com", "http", "15000")
    assert [k for k, _ in obs.response.headers] == [
        "x-served-by",
        "content-length",
        "x-envoy-upstream-service-time",
        "date",
        "server",
    ]
    assert obs.header("server") == "envoy"
    assert obs.header("x-envoy-upstream-service-time").isdigit()  # type: ignore[union-attr]
    obs = diff.exchange(request("GET", "/s2"))
    _proxied(obs, "service2", "/s2")


@pytest.mark.parametrize(("path", "chosen"), [("/weighted-a", "service2"), ("/weighted-b", "service1")])
def test_weighted_clusters_never_pick_weight_zero(diff: Differential, path: str, chosen: str) -> None:
    for i in range(8):
        _proxied(diff.exchange(request("GET", f"{path}/{i}")), chosen, f"{path}/{i}")


@pytest.mark.parametrize(
    ("path", "rewritten"),
    [
        ("/old/x?q=1", "/new/x?q=1"),
        ("/old/", "/new/"),
        ("/strip-me/a", "//a"),  # prefix "/strip-me" -> "/" keeps the rest, slash included
        ("/rx/abc/def/g", "/def/g/abc"),
        ("/rx/a/b?q=1", "/b/a?q=1"),  # the query is not part of what regex_rewrite sees
        ("/rxall/foo", "/rxall/f00"),  # every match is substituted
    ],
)
def test_path_rewrites_set_original_path(diff: Differential, path: str, rewritten: str) -> None:
    obs = diff.exchange(request("GET", path))
    _proxied(obs, "service1", rewritten)
    assert obs.only_upstream.header("x-envoy-original-path") == path


def test_host_rewrite_literal(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/hostlit", host="orig.test"))
    _proxied(obs, "service1", "/hostlit")
    assert obs.only_upstream.header_all("host") == ["rewritten.test"]
    assert obs.only_upstream.header_all("x-envoy-original-host") == ["orig.test"]
    assert obs.only_upstream.header("x-forwarded-host") is None


@pytest.mark.parametrize(
    ("path", "host"), [("/autohost-named", "service1.internal"), ("/autohost-plain", "orig.test")]
)
def test_auto_host_rewrite_uses_endpoint_hostname(diff: Differential, path: str, host: str) -> None:
    obs = diff.exchange(request("GET", path, host="orig.test"))
    _proxied(obs, "service1", path)
    assert obs.only_upstream.header_all("host") == [host]
    rewritten = host != "orig.test"
    assert obs.only_upstream.header_all("x-envoy-original-host") == (["orig.test"] if rewritten else [])


@pytest.mark.parametrize(
    ("path", "status", "location"),
    [
        ("/https", 301, "https://redirect.test/https"),
        ("/host", 301, "http://other.test/host"),
        ("/port", 301, "http://redirect.test:8443/port"),
        ("/path?x=1", 301, "http://redirect.test/newpath?x=1"),
        ("/pathq?x=1", 301, "http://redirect.test/newpath?fixed=1"),
        ("/prefix/a/b?q", 301, "http://redirect.test/np/a/b?q"),
        ("/regex/abc", 301, "http://redirect.test/r/abc"),
        ("/found", 302, "http://redirect.test/f"),
        ("/seeother", 303, "http://redirect.test/s"),
        ("/temporary", 307, "http://redirect.test/t"),
        ("/permanent", 308, "http://redirect.test/p"),
        ("/strip?x=1", 301, "http://other.test/strip"),
        ("/scheme", 301, "ftp://redirect.test:2121/scheme"),
        ("/all", 301, "https://secure.test:443/x"),  # an explicit port_redirect stays, even the default
    ],
)
def test_redirects(diff: Differential, path: str, status: int, location: str) -> None:
    obs = diff.exchange(request("GET", path, host="redirect.test"))
    assert (obs.status, obs.header("location"), obs.body) == (status, location, b"")
    assert obs.header("content-length") == "0"
    assert obs.upstream == []


@pytest.mark.parametrize(
    ("path", "status", "body", "content_type"),
    [
        ("/direct-body", 200, b"hello direct", "text/plain"),
        ("/direct-nobody", 503, b"", None),
        ("/direct-teapot", 418, b"short and stout", "text/plain"),
    ],
)
def test_direct_response(
    diff: Differential, path: str, status: int, body: bytes, content_type: str | None
) -> None:
    obs = diff.exchange(request("GET", path))
    assert (obs.status, obs.body, obs.header("content-type")) == (status, body, content_type)
    if status == 418:
        assert obs.response.reason == "Unknown"  # Envoy's HTTP/1 codec has no phrase for 418
    assert obs.header("content-length") == str(len(body))
    assert obs.header("x-envoy-upstream-service-time") is None
    assert obs.upstream == []


def test_route_timeout_is_504(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(delay=2.0, body=b"too late"))
    obs = diff.exchange(request("GET", "/slow"))
    assert (obs.status, obs.body) == (504, b"upstream request timeout")
    assert obs.header("content-type") == "text/plain"
    assert obs.only_upstream.header("x-envoy-expected-rq-timeout-ms") == "300"


def test_timeout_zero_sends_no_expected_timeout(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/notimeout"))
    _proxied(obs, "service1", "/notimeout")
    assert obs.only_upstream.header("x-envoy-expected-rq-timeout-ms") is None


@pytest.mark.parametrize("xff", [None, "10.0.0.1"])
def test_external_control_headers_are_stripped_and_ignored(diff: Differential, xff: str | None) -> None:
    """Envoy 1.40 treats no address as internal by default (internal_address_config is empty), so this
    request is external whatever x-forwarded-for says: Envoy drops its x-envoy-* control headers such as
    x-envoy-upstream-rq-timeout-ms and x-envoy-internal instead of obeying them."""
    diff.ups["service1"].behave(Behaviour(delay=0.5, body=b"slow but fine"))
    headers = [("x-envoy-upstream-rq-timeout-ms", "100"), ("x-envoy-internal", "true")]
    headers += [("x-forwarded-for", xff)] if xff else []
    obs = diff.exchange(request("GET", "/s1", headers=headers))
    assert (obs.status, obs.body) == (200, b"slow but fine")
    up = obs.only_upstream
    assert up.header("x-envoy-expected-rq-timeout-ms") == "15000"
    assert up.header("x-envoy-upstream-rq-timeout-ms") is None
    assert up.header("x-envoy-internal") is None
    assert up.header("x-forwarded-for") == xff

"""Virtual host selection by authority (Envoy's RouteMatcher::findVirtualHost): exact domains first,
then the longest `*.suffix`, then the longest `prefix.*`, then `*`; matching ignores case; the port is
part of the authority unless route_config.ignore_port_in_host_matching is set."""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential
from tests.support.http1 import request

pytestmark = pytest.mark.differential
BOOTSTRAP = "vhosts.yaml"
UPSTREAMS = ()


@pytest.mark.parametrize(
    ("host", "vhost"),
    [
        ("exact.test", "exact"),
        ("EXACT.Test", "exact"),
        ("other-exact.test", "exact"),
        ("exact.test:8080", "catchall"),  # the port is part of the authority
        ("withport.test:8080", "withport-8080"),
        ("withport.test", "catchall"),
        ("withport.test:9090", "catchall"),
        ("a.suffix.test", "suffix"),
        ("a.b.suffix.test", "suffix"),
        ("x.deep.suffix.test", "deep-suffix"),  # the longest suffix wins
        ("suffix.test", "catchall"),  # "*." needs at least one character before the suffix
        ("exact.suffix.test", "exact-suffix-overlap"),  # exact beats wildcard
        ("a.suffix.test:8080", "catchall"),
        ("prefix.anything", "prefix"),
        ("prefix.longer.x", "longer-prefix"),  # the longest prefix wins
        ("prefix.x.suffix.test", "suffix"),  # suffix wildcards beat prefix wildcards
        ("prefix.foo:8080", "prefix"),
        ("unknown.test", "catchall"),
        ("[::1]:80", "catchall"),
    ],
)
def test_default_listener(diff: Differential, host: str, vhost: str) -> None:
    obs = diff.exchange(request("GET", "/", host=host))
    assert (obs.status, obs.body) == (200, vhost.encode())


@pytest.mark.parametrize(
    ("host", "vhost"),
    [
        ("exact.test:8080", "exact"),
        ("exact.test", "exact"),
        ("withport.test:8080", "catchall"),  # the request's port is ignored, the domain's is not
        ("a.suffix.test:8080", "suffix"),
        ("prefix.foo:8080", "prefix"),
        ("[::1]:80", "catchall"),
    ],
)
def test_ignore_port_in_host_matching(diff: Differential, host: str, vhost: str) -> None:
    obs = diff.exchange(request("GET", "/", host=host), listener="ignoreport_port")
    assert (obs.status, obs.body) == (200, vhost.encode())


@pytest.mark.parametrize(
    ("host", "status"), [("only.test", 200), ("ONLY.test", 200), ("other.test", 404), ("only.test:80", 404)]
)
def test_no_matching_virtual_host_is_404(diff: Differential, host: str, status: int) -> None:
    obs = diff.exchange(request("GET", "/", host=host), listener="nocatchall_port")
    assert obs.status == status
    if status == 404:
        assert obs.body == b""
        assert obs.header("content-length") == "0"
        assert obs.header("server") == "envoy"

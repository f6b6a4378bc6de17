"""HCM `via` (appended to requests and responses), `normalize_path` and `merge_slashes` (before routing)."""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential
from tests.support.http1 import request
from tests.support.upstream import Behaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "via.yaml"
UPSTREAMS = ("service1",)


def test_via_on_request_and_response(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(headers=(("via", "1.0 app"),)))
    obs = diff.exchange(request("GET", "/a/b", host="v.test", headers=[("Via", "1.1 client")]))
    assert obs.only_upstream.header("via") == "1.1 client, 1.1 sidecar-test"
    assert obs.header("via") == "1.0 app, 1.1 sidecar-test"


def test_via_on_a_local_reply(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/direct", host="v.test"))
    assert (obs.status, obs.header("via")) == (200, "1.1 sidecar-test")


def test_merge_slashes_before_routing(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "//a///b?x=//y", host="v.test"))
    assert obs.status == 200
    assert obs.only_upstream.target == "/a/b?x=//y"


@pytest.mark.parametrize(
    ("sent", "seen"),
    [
        ("/n/a/./b", "/n/a/b"),
        ("/n/a/../b", "/n/b"),
        ("/n/a/%2e%2e/b", "/n/b"),
        ("/n/a/.%2E/b", "/n/b"),
        ("/n/a%2Fb", "/n/a%2Fb"),
        ("/n/a%41b%7e", "/n/aAb~"),
        ("/n/%zz%2", "/n/%zz%2"),
        ("/n/a\\b", "/n/a/b"),
        ("/n/a/b/..", "/n/a/"),
        ("/n/a/b/.?q=/../x", "/n/a/b/?q=/../x"),
        ("/n/x/../../n/c", "/n/c"),
        ("/n/a%3fb/.hidden/..b", "/n/a%3fb/.hidden/..b"),
    ],
)
def test_normalize_path_before_routing(diff: Differential, sent: str, seen: str) -> None:
    obs = diff.exchange(request("GET", sent, host="v.test"))
    assert obs.status == 200
    assert obs.only_upstream.target == seen

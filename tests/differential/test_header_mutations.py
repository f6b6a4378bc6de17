"""Header mutations from route configuration (Envoy's HeaderParser): request_headers_to_add/remove and
response_headers_to_add/remove at route, virtual host and route configuration level; each append_action;
keep_empty_value; the legacy `append` flag; format-string values; and that direct responses get them too."""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential
from tests.support.http1 import request
from tests.support.upstream import Behaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "headers.yaml"
UPSTREAMS = ("service1",)

CLIENT_HEADERS = [
    ("x-append", "client"),
    ("x-if-absent", "client"),
    ("x-overwrite", "client"),
    ("x-overwrite-if", "client"),
    ("x-level", "client"),
    ("x-levels", "client"),
    ("x-legacy-append", "client"),
    ("x-legacy-replace", "client"),
    ("x-remove-rt", "1"),
    ("x-remove-vh", "1"),
    ("x-remove-rc", "1"),
    ("x-src", "abc"),
]
UPSTREAM_HEADERS = (
    ("x-append", "up"),
    ("x-if-absent", "up"),
    ("x-overwrite", "up"),
    ("x-overwrite-if", "up"),
    ("x-level", "up"),
    ("x-levels", "up"),
    ("x-up-remove-rt", "1"),
    ("x-up-remove-vh", "1"),
    ("x-up-remove-rc", "1"),
)


def test_request_mutations_when_client_sent_the_headers(diff: Differential) -> None:
    up = diff.exchange(request("GET", "/mutate", headers=CLIENT_HEADERS)).only_upstream
    got = {name: up.header_all(name) for name in {k.lower() for k, _ in up.headers}}
    expected = {
        "x-rt-req": ["rt"],
        "x-vh-req": ["vh"],
        "x-rc-req": ["rc"],
        "x-append": ["client", "route"],
        "x-if-absent": ["client"],
        "x-overwrite": ["route"],
        "x-overwrite-if": ["route"],
        "x-level": ["rc"],  # the most general level is applied last and wins
        "x-levels": ["client", "rt", "vh", "rc"],
        "x-empty-kept": [""],  # x-empty (no keep_empty_value) is not added
        "x-dyn-addr": ["127.0.0.1"],
        "x-dyn-req": ["from-abc"],
        "x-legacy-append": ["client", "route"],
        "x-legacy-replace": ["route"],
        "x-src": ["abc"],
    }
    for name, values in expected.items():
        assert got.pop(name) == values, name
    assert set(got) == {"host", "x-forwarded-proto", "x-request-id", "x-envoy-expected-rq-timeout-ms"}


def test_request_mutations_when_client_sent_nothing(diff: Differential) -> None:
    up = diff.exchange(request("GET", "/mutate")).only_upstream
    assert up.header_all("x-append") == ["route"]
    assert up.header_all("x-if-absent") == ["route"]
    assert up.header_all("x-overwrite") == ["route"]
    assert up.header_all("x-overwrite-if") == []  # OVERWRITE_IF_EXISTS does not add
    assert up.header_all("x-levels") == ["rt", "vh", "rc"]
    assert up.header_all("x-dyn-req") == ["from-"]  # %REQ(x)% of a missing header is empty


def test_response_mutations(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(headers=UPSTREAM_HEADERS, body=b"ok"))
    obs = diff.exchange(request("GET", "/mutate"))
    assert (obs.status, obs.body) == (200, b"ok")
    r = obs.response
    assert [r.header_all(n) for n in ("x-rt-resp", "x-vh-resp", "x-rc-resp")] == [["rt"], ["vh"], ["rc"]]
    assert r.header_all("x-append") == ["up", "route"]
    assert r.header_all("x-if-absent") == ["up"]
    assert r.header_all("x-overwrite") == ["route"]
    assert r.header_all("x-overwrite-if") == ["route"]
    assert r.header_all("x-level") == ["rc"]
    assert r.header_all("x-levels") == ["up", "rt", "vh", "rc"]
    assert [r.has(f"x-up-remove-{lvl}") for lvl in ("rt", "vh", "rc")] == [False, False, False]


def test_response_mutations_apply_to_direct_responses(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/direct"))
    assert (obs.status, obs.body) == (200, b"direct")
    r = obs.response
    assert [r.header_all(n) for n in ("x-rt-resp", "x-vh-resp", "x-rc-resp")] == [["rt"], ["vh"], ["rc"]]
    assert r.header_all("x-level") == ["rc"]
    assert r.header_all("x-levels") == ["vh", "rc"]


def test_route_without_mutations_still_gets_outer_levels(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(headers=UPSTREAM_HEADERS))
    obs = diff.exchange(request("GET", "/plain", headers=[("x-remove-rt", "1"), ("x-remove-vh", "1")]))
    up = obs.only_upstream
    assert (up.header("x-rt-req"), up.header("x-vh-req"), up.header("x-rc-req")) == (None, "vh", "rc")
    assert (up.header("x-remove-rt"), up.header("x-remove-vh")) == ("1", None)
    r = obs.response
    assert (r.header("x-rt-resp"), r.header("x-vh-resp"), r.header("x-rc-resp")) == (None, "vh", "rc")
    assert r.header_all("x-up-remove-rt") == ["1"]
    assert r.header_all("x-levels") == ["up", "vh", "rc"]

"""Generated requests against the route table of routes.yaml: hypothesis draws paths, query strings,
headers and methods from the pieces the routes care about, and the sidecar must pick the same route as
Envoy for every one.  On envoy alone the test only checks that the answer is a known route or a 404."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.differential.harness import BOOTSTRAPS, Differential
from tests.support.http1 import request

pytestmark = pytest.mark.differential
BOOTSTRAP = "routes.yaml"
UPSTREAMS = ()
ROUTE_NAMES = set(re.findall(r'inline_string: "([^"]+)"', Path(BOOTSTRAPS / BOOTSTRAP).read_text()))

segments = st.sampled_from(
    [
        "exact",
        "EXACT",
        "NoCasePath",
        "pre",
        "PRE",
        "nocase",
        "re",
        "123",
        "abc",
        "sep",
        "sepx",
        "h",
        "q",
        "order",
        "specific",
        "exact-nocase",
        "prefix",
        "present",
        "absent",
        "invert",
        "empty",
        "strictempty",
        "multi",
        "anyvalue",
        "method",
        "two",
        "regex",
        "",
    ]
)
query = st.lists(
    st.sampled_from(["a=1", "a=2", "a=ab", "a=VAL", "a=123", "flag", "flag=", "b=2", "a=%31"]), max_size=3
).map(lambda qs: ("?" + "&".join(qs)) if qs else "")
header_values = st.sampled_from(
    ["v1", "V1", "abcdef", "123xyz", "amidb", "v12", "", "a", "b", "a,b", "1", "2"]
)
headers = st.lists(st.tuples(st.sampled_from(["x-a", "x-b", "x-m", "X-M"]), header_values), max_size=3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.lists(segments, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s)),
    slash=st.booleans(),
    query=query,
    headers=headers,
    method=st.sampled_from(["GET", "POST"]),
)
def test_generated_requests_pick_the_same_route(
    diff: Differential, path: str, slash: bool, query: str, headers: list[tuple[str, str]], method: str
) -> None:
    raw = request(
        method, path + ("/" if slash else "") + query, headers=headers, body=b"" if method == "POST" else None
    )
    obs = diff.exchange(raw)
    assert (obs.status, obs.body) == (404, b"") or (obs.status == 200 and obs.body.decode() in ROUTE_NAMES)

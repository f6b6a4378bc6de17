"""request_mirror_policies: a shadow copy of the request goes to another cluster (host + "-shadow"),
its response is thrown away, and the client only ever sees the primary's answer."""

from __future__ import annotations

import time

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import request
from tests.support.upstream import Behaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "mirror.yaml"
UPSTREAMS = ("service1", "service2")


def _mirrored(t: Target, raw: bytes, expect_shadow: bool) -> dict[str, object]:
    t.ups.clear()
    obs = t.exchange(raw)
    shadow = t.ups["service2"].wait_for(1, timeout=3.0) if expect_shadow else []
    time.sleep(0.0 if expect_shadow else 0.3)
    seen = t.ups["service2"].requests
    return {
        "status": obs.status,
        "body": obs.body,
        "primary": [(r.target, r.header("host"), r.body) for r in t.ups["service1"].requests],
        "shadow": [
            (r.target, r.header("host"), r.body, r.header("x-forwarded-proto") is not None) for r in seen
        ],
        "waited": len(shadow),
    }


def test_shadow_gets_a_copy_with_the_host_suffix_and_its_answer_is_dropped(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(body=b"primary"))
    diff.ups["service2"].behave(Behaviour(status=500, body=b"shadow"))
    got = diff.run(lambda t: _mirrored(t, request("POST", "/always", host="m.test", body=b"payload"), True))
    assert (got["status"], got["body"]) == (200, b"primary")
    assert got["primary"] == [("/always", "m.test", b"payload")]
    assert got["shadow"] == [("/always", "m.test-shadow", b"payload", True)]


def test_zero_fraction_never_mirrors(diff: Differential) -> None:
    got = diff.run(lambda t: _mirrored(t, request("GET", "/never", host="m.test"), False))
    assert got["shadow"] == []


def test_suffix_can_be_disabled(diff: Differential) -> None:
    got = diff.run(lambda t: _mirrored(t, request("GET", "/nosuffix", host="m.test"), True))
    assert got["shadow"] == [("/nosuffix", "m.test", b"", True)]


def test_shadow_suffix_with_a_port(diff: Differential) -> None:
    got = diff.run(lambda t: _mirrored(t, request("GET", "/always", host="m.test:8080"), True))
    assert got["shadow"] == [("/always", "m.test-shadow:8080", b"", True)]

"""Route and virtual-host retry_policy: which outcomes are retried, how many times, what the client
gets when retries run out, and the attempt-count headers."""

from __future__ import annotations

import time

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import request
from tests.support.upstream import Behaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "retry.yaml"
UPSTREAMS = ("service1", "service2")
RESET = "upstream connect error or disconnect/reset before headers. "


def _seen(t: Target, raw: bytes) -> dict[str, object]:
    """What the client and the upstreams saw, except the timeout a retry announces: Envoy sends what
    is left of the route timeout (e.g. 14999 ms), which depends on the clock."""
    obs = t.exchange(raw)
    attempts = []
    for i, r in enumerate(obs.upstream):
        hs = sorted((k, v) for k, v in r.headers if k != "x-request-id")
        if i > 0:
            left = [int(v) for k, v in hs if k == "x-envoy-expected-rq-timeout-ms"]
            assert all(0 <= v <= 15000 for v in left)
            hs = [(k, v) for k, v in hs if k != "x-envoy-expected-rq-timeout-ms"]
        attempts.append((r.target, hs, r.body))
    headers = sorted((k, v) for k, v in obs.response.headers if k not in ("date", "x-envoy-upstream-service-time"))
    return {"status": obs.status, "body": obs.body, "headers": headers, "attempts": attempts}


def _attempts(diff: Differential, path: str, behaviour: Behaviour, host: str = "r.test") -> tuple[int, bytes, int]:
    diff.ups["service1"].behave(behaviour)
    got = diff.run(lambda t: _seen(t, request("GET", path, host=host)))
    return got["status"], got["body"], len(got["attempts"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "status", "retried"),
    [
        ("/5xx", 503, True),
        ("/5xx", 500, True),
        ("/5xx", 404, False),
        ("/gw", 503, True),
        ("/gw", 500, False),
        ("/4xx", 409, True),
        ("/4xx", 403, False),
        ("/codes", 418, True),
        ("/codes", 503, False),
        ("/none", 503, False),
    ],
)
def test_status_conditions(diff: Differential, path: str, status: int, retried: bool) -> None:
    status_seen, body, n = _attempts(diff, path, Behaviour(status=status, body=b"from upstream"))
    # Exhausted retries return the last upstream response itself.
    assert (status_seen, body) == (status, b"from upstream")
    expected = {"/5xx": 3, "/gw": 3, "/4xx": 2, "/codes": 2}.get(path, 1) if retried else 1
    assert n == expected


def test_default_num_retries_is_one(diff: Differential) -> None:
    assert _attempts(diff, "/default", Behaviour(status=503))[2] == 2


def test_grpc_status_condition(diff: Differential) -> None:
    grpc = Behaviour(status=200, headers=(("content-type", "application/grpc"), ("grpc-status", "14")))
    status, _, n = _attempts(diff, "/grpc", grpc)
    assert (status, n) == (200, 2)


def test_reset_before_headers_is_retried_then_a_local_reply(diff: Differential) -> None:
    status, body, n = _attempts(diff, "/reset", Behaviour(before_headers="close"))
    assert status == 503 and n == 3
    assert body == (RESET + "retried and the latest reset reason: connection termination").encode()


def test_connect_failure_is_retried_then_a_local_reply(diff: Differential) -> None:
    status, body, n = _attempts(diff, "/connect", Behaviour())
    assert (status, n) == (503, 0)
    assert body == (RESET + "retried and the latest reset reason: remote connection failure").encode()


def test_per_try_timeout_is_retried_then_504(diff: Differential) -> None:
    status, body, n = _attempts(diff, "/pertry", Behaviour(delay=1.0, body=b"late"))
    assert (status, body, n) == (504, b"upstream request timeout", 2)


def test_attempt_count_headers(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(status=503))
    got = diff.run(lambda t: _seen(t, request("GET", "/x", host="counted.test")))
    counts = [dict(hs).get("x-envoy-attempt-count") for _, hs, _ in got["attempts"]]  # type: ignore[attr-defined]
    assert counts == ["1", "2", "3"]
    assert ("x-envoy-attempt-count", "3") in got["headers"]  # type: ignore[operator]


def test_post_body_is_replayed(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(status=503))
    got = diff.run(lambda t: _seen(t, request("POST", "/post", host="r.test", body=b"payload")))
    assert [body for _, _, body in got["attempts"]] == [b"payload", b"payload"]  # type: ignore[attr-defined]


def test_previous_hosts_moves_the_retry_to_the_other_host(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(status=503))
    diff.ups["service2"].behave(Behaviour(status=200, body=b"two"))

    def scenario(t: Target) -> list[tuple[int, bytes]]:
        # Which host goes first depends on the round-robin start; the answer must not.
        return [(o.status, o.body) for o in (t.exchange(request("GET", "/pair", host="r.test")) for _ in range(6))]

    assert diff.run(scenario) == [(200, b"two")] * 6


@pytest.mark.parametrize(("value", "attempts"), [("yes", 2), ("no", 1)])
def test_retriable_headers(diff: Differential, value: str, attempts: int) -> None:
    _, _, n = _attempts(diff, "/hdr", Behaviour(status=200, headers=(("x-upstream-retry", value),)))
    assert n == attempts


def test_a_retry_on_a_hashing_cluster_keeps_the_host(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(status=503))
    diff.ups["service2"].behave(Behaviour(status=503))

    def scenario(t: Target) -> list[list[str]]:
        out = []
        for key in ("a", "b", "c", "d"):
            obs = t.exchange(request("GET", "/ring", host="r.test", headers=[("x-key", key)]))
            out.append([r.upstream for r in obs.upstream])
        return out

    got = diff.run(scenario)
    assert all(len(hosts) == 2 and hosts[0] == hosts[1] for hosts in got)


def test_rate_limited_back_off_waits_as_the_upstream_asks(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(status=429, headers=(("retry-after", "1"),), body=b"slow down"))

    def scenario(t: Target) -> tuple[int, int, bool]:
        start = time.monotonic()
        obs = t.exchange(request("GET", "/limited", host="r.test"))
        waited = time.monotonic() - start
        return obs.status, len(obs.upstream), waited >= 0.95  # a lower bound only: the reset header's 1 s

    assert diff.run(scenario) == (429, 2, True)

"""RouteAction.max_grpc_timeout / grpc_timeout_offset against Envoy 1.40 (istiod sets
max_grpc_timeout 0s on every outbound route): a gRPC request's grpc-timeout (minus the offset,
capped unless the max is 0; absent means infinite, or the cap) replaces the route timeout, and the
upstream is told the result in grpc-timeout and x-envoy-expected-rq-timeout-ms; a request that is
not gRPC keeps the route timeout; under max_stream_duration the field is ignored.  The same on a
listener whose requests are internal (internal_address_config), where the x-envoy-* timeout headers
then override that base (finalTimeout's order) and grpc-timeout follows them."""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import PeerClosed, request
from tests.support.upstream import Behaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "istio_standard.yaml"
UPSTREAMS = ("service1",)
GRPC = ("content-type", "application/grpc")
INTERNAL = ("x-forwarded-for", "10.1.2.3")  # grpc_internal_port trusts 10.0.0.0/8


def _probe(t: Target, raw: bytes, listener: str = "listener_port") -> dict[str, object]:
    t.ups.clear()
    with t.client(listener, timeout=5.0) as c:
        c.send(raw)
        try:
            resp = c.read_response(timeout=4.0)
        except PeerClosed:
            return {"status": None}
    attempts = []
    for i, r in enumerate(t.ups.requests()):
        expected = r.header("x-envoy-expected-rq-timeout-ms")
        attempts.append((r.header("grpc-timeout"), expected if i == 0 or expected is None else "present"))
    return {
        "status": resp.status,
        "grpc-status": resp.header("grpc-status"),
        "grpc-message": resp.header("grpc-message"),
        "body": resp.body,
        "attempts": attempts,
    }


CASES = [
    # (path, request headers, upstream delay, attempts (grpc-timeout, expected), status, grpc-status)
    ("/capped", [GRPC, ("grpc-timeout", "2S")], 0.8, [("500m", "500")], 200, "14"),  # capped
    ("/capped", [GRPC, ("grpc-timeout", "300m")], 0.8, [("200m", "200")], 200, "14"),  # minus the offset
    ("/capped", [GRPC], 0.8, [("500m", "500")], 200, "14"),  # none: the cap
    ("/capped", [GRPC, ("grpc-timeout", "50m")], 0.0, [("50m", "50")], 200, None),  # offset not below
    ("/capped", [("grpc-timeout", "2S")], 0.0, [("2S", "5000")], 200, None),  # not gRPC: route timeout
    ("/uncapped", [GRPC], 0.5, [(None, None)], 200, None),  # 0 and no header: no timeout at all
    ("/uncapped", [GRPC, ("grpc-timeout", "400m")], 0.8, [("400m", "400")], 200, "14"),
    ("/uncapped", [GRPC, ("grpc-timeout", "bogus")], 0.5, [("bogus", None)], 200, None),
    ("/pertry", [GRPC, ("grpc-timeout", "1S")], 0.8, [("250m", "250"), ("250m", "present")], 200, "14"),
    ("/msd", [GRPC, ("grpc-timeout", "100m")], 0.8, [("400m", None)], 200, "4"),  # ignored under msd
    ("/", [GRPC, ("grpc-timeout", "5S")], 0.8, [("5S", "300")], 200, "14"),  # no max_grpc_timeout
]


@pytest.mark.parametrize("listener", ["listener_port", "grpc_internal_port"], ids=["external", "internal"])
@pytest.mark.parametrize(
    ("path", "headers", "delay", "attempts", "status", "grpc_status"),
    CASES,
    ids=[
        "capped",
        "offset",
        "no-header-cap",
        "offset-too-big",
        "not-grpc",
        "uncapped-infinite",
        "uncapped-header",
        "malformed",
        "per-try",
        "ignored-under-msd",
        "no-max",
    ],
)
def test_max_grpc_timeout(
    diff: Differential,
    listener: str,
    path: str,
    headers: list[tuple[str, str]],
    delay: float,
    attempts: list[tuple[str | None, str | None]],
    status: int,
    grpc_status: str | None,
) -> None:
    diff.ups["service1"].behave(Behaviour(delay=delay, body=b"answer"))
    if listener == "grpc_internal_port":
        headers = [*headers, INTERNAL]
    raw = request("POST", path, host="t.test", headers=headers, body=b"")
    got = diff.run(lambda t: _probe(t, raw, listener))
    assert got["attempts"] == attempts
    assert (got["status"], got["grpc-status"]) == (status, grpc_status)
    if grpc_status is None:
        assert got["body"] == b"answer"
    else:
        assert got["grpc-message"] == (
            "downstream duration timeout" if path == "/msd" else "upstream request timeout"
        )


@pytest.mark.parametrize(
    ("headers", "attempts", "status", "grpc_status"),
    [
        # The grpc-timeout (capped 500 ms) is the base; x-envoy-upstream-rq-timeout-ms overrides it.
        ([("x-envoy-upstream-rq-timeout-ms", "300")], [("300m", "300")], 200, "14"),
        ([("x-envoy-upstream-rq-timeout-ms", "0")], [("2S", None)], 200, None),  # 0: none, header kept
        (
            [("x-envoy-upstream-rq-per-try-timeout-ms", "200")],
            [("200m", "200"), ("200m", "present")],
            200,
            "14",
        ),
    ],
    ids=["rq-timeout", "rq-timeout-zero", "per-try"],
)
def test_internal_steering_headers_override_the_grpc_timeout(
    diff: Differential,
    headers: list[tuple[str, str]],
    attempts: list[tuple[str | None, str | None]],
    status: int,
    grpc_status: str | None,
) -> None:
    diff.ups["service1"].behave(Behaviour(delay=0.7, body=b"answer"))
    all_headers = [GRPC, ("grpc-timeout", "2S"), ("x-envoy-retry-on", "5xx"), INTERNAL, *headers]
    raw = request("POST", "/capped", host="t.test", headers=all_headers, body=b"")
    got = diff.run(lambda t: _probe(t, raw, "grpc_internal_port"))
    assert got["attempts"] == attempts
    assert (got["status"], got["grpc-status"]) == (status, grpc_status)


@pytest.mark.parametrize("listener", ["listener_port", "grpc_internal_port"], ids=["external", "internal"])
def test_a_retry_announces_what_is_left(diff: Differential, listener: str) -> None:
    """Envoy's doRetry calls setTimeoutHeaders again with the time elapsed since the request
    completed: the retry's grpc-timeout and x-envoy-expected-rq-timeout-ms are what is left of the
    global timeout (2 s here, the first attempt took about 0.3 s)."""
    diff.ups["service1"].behave(Behaviour(status=503, delay=0.3, body=b"busy"))
    headers = [GRPC, ("grpc-timeout", "2S")] + ([INTERNAL] if listener == "grpc_internal_port" else [])
    raw = request("POST", "/retry-left", host="t.test", headers=headers, body=b"")

    def probe(t: Target) -> dict[str, object]:
        got = _probe(t, raw, listener)
        reqs = t.ups.requests()
        firsts = [(r.header("grpc-timeout"), r.header("x-envoy-expected-rq-timeout-ms")) for r in reqs]
        left = []
        for grpc_timeout, expected in firsts[1:]:
            assert grpc_timeout is not None and grpc_timeout.endswith("m"), grpc_timeout
            assert expected is not None
            # What is left: below the first attempt's 2000 ms by at least the upstream's delay.
            left.append((int(grpc_timeout[:-1]) <= 1750, int(expected) <= 1750, grpc_timeout[:-1] == expected))
        return {"status": got["status"], "first": firsts[:1], "retries": left}

    got = diff.run(probe)
    assert got["first"] == [("2000m", "2000")]
    assert got["retries"] == [(True, True, True)]

"""Fault injection (envoy.filters.http.fault): aborts with their exact local reply, delays (only lower
bounds on time), header-controlled faults only when configured, per-route typed_per_filter_config,
and percentages checked statistically with generous bounds."""

from __future__ import annotations

import time

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import request

pytestmark = pytest.mark.differential
BOOTSTRAP = "fault.yaml"
UPSTREAMS = ("service1", "service2")
HOST = "fault.test"
GRPC = [("content-type", "application/grpc"), ("te", "trailers")]


def _reply(obs: object) -> tuple[int, bytes, list[str]]:
    r = obs.response  # type: ignore[attr-defined]
    return r.status, r.body, sorted(k.lower() for k, _ in r.headers)


def test_abort_100_percent_is_fault_filter_abort(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/a", host=HOST))
    assert (obs.status, obs.body) == (503, b"fault filter abort")
    assert [k for k, _ in obs.response.headers] == ["content-length", "content-type", "date", "server"]
    assert obs.header("content-type") == "text/plain"
    assert obs.upstream == []


def test_abort_without_percentage_never_fires(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/a", host=HOST), listener="nopct_port")
    assert obs.status == 200
    assert obs.only_upstream.target == "/a"


def test_abort_from_typed_per_filter_config(diff: Differential) -> None:
    faulted = diff.exchange(request("GET", "/faulted", host=HOST), listener="perroute_port")
    assert (faulted.status, faulted.body) == (429, b"fault filter abort")
    assert faulted.upstream == []
    clean = diff.exchange(request("GET", "/clean", host=HOST), listener="perroute_port")
    assert clean.status == 200


def test_route_config_overrides_filter_config(diff: Differential) -> None:
    # The abort listener aborts with 503, but the route's own config (429) wins whole.
    obs = diff.exchange(request("GET", "/faulted", host=HOST))
    assert (obs.status, obs.body) == (429, b"fault filter abort")


@pytest.mark.parametrize("grpc", [True, False], ids=["grpc-request", "http-request"])
def test_grpc_abort(diff: Differential, grpc: bool) -> None:
    obs = diff.exchange(
        request("POST", "/svc/Method", host=HOST, headers=GRPC if grpc else [], body=b""),
        listener="grpc_port",
    )
    assert obs.status == 200
    assert obs.upstream == []
    if grpc:
        assert obs.header("grpc-status") == "14"
        assert obs.header("grpc-message") == "fault filter abort"
        assert obs.header("content-type") == "application/grpc"
    else:
        assert obs.body == b"fault filter abort"


def _timed(t: Target, listener: str, raw: bytes) -> tuple[int, bytes, bool]:
    start = time.monotonic()
    obs = t.exchange(raw, listener)
    took = time.monotonic() - start
    return obs.status, obs.body, took >= 0.28


def test_delay_100_percent(diff: Differential) -> None:
    got = diff.run(lambda t: _timed(t, "delay_port", request("GET", "/d", host=HOST)))
    assert got[0] == 200
    assert got[2], "the response came before the configured delay"


def test_delay_then_abort(diff: Differential) -> None:
    got = diff.run(lambda t: _timed(t, "delayabort_port", request("GET", "/d", host=HOST)))
    assert got == (502, b"fault filter abort", True)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([("x-envoy-fault-abort-request", "418")], 418),
        ([("x-envoy-fault-abort-request", "700")], 200),
        ([("x-envoy-fault-abort-request", "nope")], 200),
        ([("x-envoy-fault-abort-request", "418"), ("x-envoy-fault-abort-request-percentage", "0")], 200),
        ([("x-envoy-fault-abort-request", "418"), ("x-envoy-fault-abort-request-percentage", "100")], 418),
        ([], 200),
    ],
    ids=["abort", "out-of-range", "garbage", "percent-0", "percent-100", "none"],
)
def test_header_abort_when_configured(diff: Differential, headers: list[tuple[str, str]], status: int) -> None:
    obs = diff.exchange(request("GET", "/h", host=HOST, headers=headers), listener="header_port")
    assert obs.status == status
    if status != 200:
        assert obs.body == b"fault filter abort"


def test_header_grpc_abort_when_configured(diff: Differential) -> None:
    raw = request("POST", "/h", host=HOST, headers=[*GRPC, ("x-envoy-fault-abort-grpc-request", "5")], body=b"")
    obs = diff.exchange(raw, listener="header_port")
    assert (obs.status, obs.header("grpc-status")) == (200, "5")


def test_header_delay_when_configured(diff: Differential) -> None:
    raw = request("GET", "/h", host=HOST, headers=[("x-envoy-fault-delay-request", "300")])
    got = diff.run(lambda t: _timed(t, "header_port", raw))
    assert got[0] == 200 and got[2]


def test_fault_headers_ignored_when_not_configured(diff: Differential) -> None:
    raw = request(
        "GET",
        "/h",
        host=HOST,
        headers=[("x-envoy-fault-abort-request", "418"), ("x-envoy-fault-abort-request-percentage", "100")],
    )
    obs = diff.exchange(raw, listener="fixed_port")
    assert obs.status == 200


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/m", [("x-fault", "yes")], 503),
        ("/m", [("x-fault", "no")], 200),
        ("/m", [], 200),
        ("/other", [("x-fault", "yes")], 200),  # routed to service2, not the fault's upstream_cluster
    ],
    ids=["match", "mismatch", "missing", "other-cluster"],
)
def test_headers_and_upstream_cluster_restrict_faults(
    diff: Differential, path: str, headers: list[tuple[str, str]], status: int
) -> None:
    obs = diff.exchange(request("GET", path, host=HOST, headers=headers), listener="matched_port")
    assert obs.status == status


def _count_aborts(t: Target, listener: str, n: int) -> int:
    aborted = 0
    with t.client(listener) as c:
        for i in range(n):
            resp = c.exchange(request("GET", f"/p{i}", host=HOST))
            aborted += resp.status == 503
    return aborted


def test_zero_percent_never_faults(diff: Differential) -> None:
    assert diff.run(lambda t: _count_aborts(t, "zero_port", 50)) == 0


def test_half_percent_is_about_half(diff: Differential) -> None:
    # 200 draws at p=0.5: 60..140 is more than 5 standard deviations each side.
    got = diff.run(lambda t: 60 <= _count_aborts(t, "half_port", 200) <= 140)
    assert got


STATS_FILTER = r"^http\.(abort|delay)\.fault\."


def _fault_stats(t: Target) -> dict[str, int]:
    with t.client("admin_port") as c:
        resp = c.exchange(request("GET", f"/stats?filter={STATS_FILTER}", host="admin"))
    assert resp.status == 200
    out = {}
    for line in resp.body.decode().splitlines():
        name, _, value = line.partition(": ")
        out[name] = int(value)
    return out


def _stats_scenario(t: Target) -> dict[str, int]:
    before = _fault_stats(t)
    for _ in range(2):
        assert t.exchange(request("GET", "/s", host=HOST)).status == 503
    assert t.exchange(request("GET", "/s", host=HOST), "delay_port").status == 200
    deadline = time.monotonic() + 5.0
    while True:  # the sidecar's workers publish their counters every 0.5 s
        after = _fault_stats(t)
        delta = {k: v - before.get(k, 0) for k, v in after.items() if not k.endswith("active_faults")}
        if delta.get("http.abort.fault.aborts_injected") == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    gauges = {k: v for k, v in after.items() if k.endswith("active_faults")}
    return {**delta, **gauges}


def test_fault_stats(diff: Differential) -> None:
    got = diff.run(_stats_scenario)
    assert got["http.abort.fault.aborts_injected"] == 2
    assert got["http.delay.fault.delays_injected"] == 1
    assert got["http.abort.fault.active_faults"] == 0
    assert set(got) == {
        f"http.{p}.fault.{s}"
        for p in ("abort", "delay")
        for s in ("aborts_injected", "delays_injected", "faults_overflow", "response_rl_injected", "active_faults")
    }


def test_delayed_request_body_reaches_the_upstream(diff: Differential) -> None:
    raw = request("POST", "/d", host=HOST, body=b"held while delayed")
    obs = diff.exchange(raw, listener="delay_port")
    assert obs.status == 200
    assert obs.only_upstream.body == b"held while delayed"


def _limited(t: Target) -> tuple[int, int, int, int]:
    before = t.stat("http.limited.fault.faults_overflow")
    with t.client("limited_port") as first, t.client("limited_port") as second:
        first.send(request("GET", "/one", host=HOST))
        time.sleep(0.2)  # the first request is now the one active fault
        second.send(request("GET", "/two", host=HOST))
        two = second.read_response()
        one = first.read_response()
    deadline = time.monotonic() + 5.0
    while True:  # the sidecar's workers publish their counters every 0.5 s
        overflowed = t.stat("http.limited.fault.faults_overflow") - before
        if overflowed or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return one.status, two.status, overflowed, t.stat("http.limited.fault.active_faults")




def test_max_active_faults_lets_the_overflow_through(diff: Differential) -> None:
    assert diff.run(_limited) == (200, 200, 1, 0)


@pytest.mark.parametrize(
    ("node", "status"),
    [
        pytest.param("node-a", 503, id="listed"),
        pytest.param("node-b", 200, id="other"),
        pytest.param(None, 200, id="missing"),
    ],
)
def test_downstream_nodes(diff: Differential, node: str | None, status: int) -> None:
    headers = [("x-envoy-downstream-service-node", node)] if node else []
    obs = diff.exchange(request("GET", "/n", host=HOST, headers=headers), listener="nodes_port")
    assert obs.status == status

"""Priorities, health and localities against Envoy: EDS health_status failover between priorities,
excluded (DRAINING) and degraded hosts, the panic threshold, locality weights, and active HTTP health
checks moving traffic to P1 and back, with the health_check stats.

Distributions are statistical: each scenario returns whether the observed share lies within bounds
(about four standard deviations around Envoy's documented share), which both proxies must meet."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import Client, request
from tests.support.upstream import Behaviour, RecordedRequest

pytestmark = pytest.mark.differential
BOOTSTRAP = "priority.yaml"
UPSTREAMS = ("a", "b", "c", "d", "e", "x", "y", "z")
# {closed_port} (in the bootstrap) gets a free port that nothing listens on.


def spread(t: Target, prefix: str, n: int) -> tuple[Counter[str], Counter[int]]:
    """(upstream -> requests served, status -> count) for n requests on one connection."""
    t.ups.clear()
    statuses: Counter[int] = Counter()
    with t.client() as c:
        for _ in range(n):
            statuses[c.exchange(request("GET", prefix, host="prio.test")).status] += 1
    served = Counter(r.upstream for r in t.ups.requests() if r.target != "/healthz")
    return served, statuses


def near(count: int, n: int, share: float) -> bool:
    """count / n within four standard deviations of `share` (and of at least 0.03)."""
    sd = max((share * (1 - share) / n) ** 0.5, 0.0075)
    return abs(count / n - share) <= 4 * sd


def test_health_status_spills_over_to_p1(diff: Differential) -> None:
    def scenario(t: Target) -> tuple[list[str], bool, int]:
        before = t.stat("cluster.status.lb_healthy_panic")
        served, _ = spread(t, "/status", 300)
        return (
            sorted(served),
            near(served["a"], 300, 0.46),
            t.stat("cluster.status.lb_healthy_panic") - before,
        )

    assert diff.run(scenario) == (["a", "d", "e"], True, 0)


def test_draining_hosts_are_excluded(diff: Differential) -> None:
    def scenario(t: Target) -> tuple[list[str], int, int]:
        served, _ = spread(t, "/drain", 40)
        return (
            sorted(served),
            t.stat("cluster.drain.membership_excluded"),
            t.stat("cluster.drain.membership_healthy"),
        )

    assert diff.run(scenario) == (["a"], 2, 3)


def test_degraded_hosts_take_what_healthy_ones_leave(diff: Differential) -> None:
    def scenario(t: Target) -> tuple[list[str], bool, int]:
        served, _ = spread(t, "/degraded", 300)
        return sorted(served), near(served["c"], 300, 0.30), t.stat("cluster.degraded.membership_degraded")

    assert diff.run(scenario) == (["c", "e"], True, 1)


def test_panic_threshold(diff: Differential) -> None:
    def scenario(t: Target) -> dict[str, object]:
        before = t.stat("cluster.panic.lb_healthy_panic")
        panic, _ = spread(t, "/panic", 60)
        low, _ = spread(t, "/lowthreshold", 30)
        nothing, statuses = spread(t, "/nopanic", 3)
        with t.client() as c:
            body = c.exchange(request("GET", "/nopanic", host="prio.test")).body
        failing, fail_statuses = spread(t, "/failtraffic", 3)
        return {
            "panic": sorted(panic),
            "panic_count": t.stat("cluster.panic.lb_healthy_panic") - before,
            "threshold_30": sorted(low),
            "threshold_0": (sorted(nothing), dict(statuses), body),
            "fail_traffic_on_panic": (sorted(failing), dict(fail_statuses)),
        }

    got = diff.run(scenario)
    assert got["panic"] == ["a", "b", "c", "d", "e"] and got["panic_count"] == 60
    assert got["threshold_30"] == ["a", "b"]
    assert got["threshold_0"] == ([], {503: 3}, b"no healthy upstream")
    assert got["fail_traffic_on_panic"] == ([], {503: 3})


def test_locality_weights(diff: Differential) -> None:
    def scenario(t: Target) -> tuple[list[str], bool, bool]:
        served, _ = spread(t, "/locality", 400)
        return sorted(served), near(served["a"], 400, 0.25), near(served["b"], 400, 0.375)

    assert diff.run(scenario) == (["a", "b", "c"], True, True)


def until(t: Target, cond: Callable[[Counter[str]], bool], timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(400):
        served, _ = spread(t, "/hc", 10)
        if cond(served):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return False


def _names(t: Target, prefix: str) -> list[str]:
    with Client(t.port("admin_port")) as c:
        c.send(request("GET", f"/stats?filter=^{prefix}", host="admin"))
        text = c.read_response().text
    return sorted(line.partition(": ")[0] for line in text.splitlines() if line.startswith(prefix))


def test_active_health_checks_fail_over_to_p1_and_back(diff: Differential) -> None:
    hc = "cluster.hc.health_check"

    def scenario(t: Target) -> dict[str, object]:
        for name in ("x", "y"):
            t.ups[name].reset()
        start = until(t, lambda s: set(s) == {"x", "y"})
        t.ups.clear()
        probes: list[RecordedRequest] = []
        for _ in range(100):  # interval 0.1 s: a probe within a few rounds
            probes = [r for r in t.ups.requests() if r.target == "/healthz"]
            if probes:
                break
            time.sleep(0.02)
        probe = probes[0] if probes else None
        for name in ("x", "y"):
            t.ups[name].on("/healthz", Behaviour(status=503))
        failed_over = until(t, lambda s: set(s) == {"z"})
        healthy_during = t.stat(f"{hc}.healthy")
        for name in ("x", "y"):
            t.ups[name].reset()
        back = until(t, lambda s: set(s) == {"x", "y"})
        return {
            "start": start,
            "failed_over": failed_over,
            "healthy_during": healthy_during,
            "back": back,
            "healthy_after": t.stat(f"{hc}.healthy"),
            "failures": t.stat(f"{hc}.failure") >= 2,
            "network_failures": t.stat(f"{hc}.network_failure"),
            "names": _names(t, f"{hc}."),
            "probe": None if probe is None else (probe.request_line, probe.headers),
        }

    got = diff.run(scenario)
    assert (got["start"], got["failed_over"], got["back"]) == (True, True, True)
    assert (got["healthy_during"], got["healthy_after"], got["failures"], got["network_failures"]) == (
        1,
        3,
        True,
        0,
    )
    assert got["names"] == [
        f"{hc}.{n}"
        for n in (
            "attempt",
            "degraded",
            "failure",
            "healthy",
            "network_failure",
            "passive_failure",
            "success",
            "verify_cluster",
        )
    ]


def test_ring_hash_picks_the_priority_from_the_hash(diff: Differential) -> None:
    """RING_HASH chooses the priority with the request's hash (h % 100 + 1 against the loads), then
    the host on that priority's ring: the same upstream as Envoy for every key."""

    def scenario(t: Target) -> dict[str, str]:
        out = {}
        with t.client() as c:
            for i in range(60):
                t.ups.clear()
                key = f"user-{i}"
                assert (
                    c.exchange(request("GET", "/ringprio", host="prio.test", headers=[("x-key", key)])).status
                    == 200
                )
                # Only this request: the `hc` cluster's health-check probes reach other upstreams
                # at any moment and would otherwise be taken for it.
                ours = [r for r in t.ups.requests() if r.target == "/ringprio"]
                assert len(ours) == 1, ours
                out[key] = ours[0].upstream
        return out

    got = diff.run(scenario)
    assert set(got.values()) == {"b", "c", "d"}


def test_tcp_health_check_against_a_closed_port(diff: Differential) -> None:
    def scenario(t: Target) -> tuple[list[str], int, bool]:
        served, _ = spread(t, "/tcp", 20)
        failures = t.stat("cluster.tcp.health_check.network_failure") >= 1
        return sorted(served), t.stat("cluster.tcp.health_check.healthy"), failures

    assert diff.run(scenario) == (["e"], 1, True)

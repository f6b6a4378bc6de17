"""circuit_breakers thresholds: overflow is a 503 with x-envoy-overloaded, counted in the stats."""

from __future__ import annotations

import threading
import time

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import request
from tests.support.upstream import Behaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "breakers.yaml"
UPSTREAMS = ("service1",)
OVERFLOW = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"


def _concurrent(t: Target, path: str, n: int) -> list[tuple[int, bytes, str | None]]:
    """`n` overlapping requests on separate connections, started one after the other (each once the
    first has reached the upstream, so the breaker sees them in a fixed order); (status, body,
    x-envoy-overloaded), sorted."""
    results: list[tuple[int, bytes, str | None]] = []
    lock = threading.Lock()

    def one() -> None:
        with t.client() as c:
            c.send(request("GET", path, host="cb.test"))
            r = c.read_response(timeout=10)
            with lock:
                results.append((r.status, r.body, r.header("x-envoy-overloaded")))

    threads = [threading.Thread(target=one) for _ in range(n)]
    t.ups.clear()
    threads[0].start()
    t.ups["service1"].wait_for(1, timeout=5.0)
    for th in threads[1:]:
        th.start()
        time.sleep(0.1)
    for th in threads:
        th.join(15)
    return sorted(results)




def test_max_requests_overflow(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(delay=1.0, body=b"slow"))

    def scenario(t: Target) -> list[tuple[int, bytes, str | None]]:
        return _concurrent(t, "/rq", 3)

    got = diff.run(scenario)
    assert got == [(200, b"slow", None), (503, OVERFLOW, "true"), (503, OVERFLOW, "true")]


def test_max_connections_and_pending_overflow(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(delay=1.0, body=b"slow"))

    def scenario(t: Target) -> tuple[list[tuple[int, bytes, str | None]], int]:
        before = t.stat("cluster.one_connection.upstream_rq_pending_overflow")
        got = _concurrent(t, "/cx", 3)
        return got, t.stat("cluster.one_connection.upstream_rq_pending_overflow") - before

    got, overflows = diff.run(scenario)
    # One request on the one connection, one waiting for it, the third over max_pending_requests.
    assert got == [(200, b"slow", None), (200, b"slow", None), (503, OVERFLOW, "true")]
    assert overflows == 1


def test_max_retries_zero_means_no_retry(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(status=503, body=b"no"))

    def scenario(t: Target) -> tuple[int, int]:
        before = t.stat("cluster.no_retries.upstream_rq_retry_overflow")
        obs = t.exchange(request("GET", "/retry", host="cb.test"))
        return obs.status, t.stat("cluster.no_retries.upstream_rq_retry_overflow") - before

    assert diff.run(scenario) == (503, 1)


def test_an_empty_retry_budget_replaces_max_retries(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(status=503, body=b"no"))

    def scenario(t: Target) -> tuple[int, int, int]:
        before = t.stat("cluster.no_budget.upstream_rq_retry_overflow")
        obs = t.exchange(request("GET", "/budget", host="cb.test"))
        return obs.status, len(obs.upstream), t.stat("cluster.no_budget.upstream_rq_retry_overflow") - before

    assert diff.run(scenario) == (503, 1, 1)

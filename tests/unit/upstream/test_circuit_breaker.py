"""Breaker accounting: limits, Envoy's defaults and the open flags."""

from hypothesis import given
from hypothesis import strategies as st

from sidecar.upstream.circuit_breaker import Breaker, Thresholds


def test_envoy_defaults() -> None:
    t = Thresholds()
    assert (t.max_connections, t.max_pending_requests, t.max_requests, t.max_retries) == (1024, 1024, 1024, 3)


@given(st.integers(0, 20), st.integers(0, 20))
def test_requests_allowed_exactly_up_to_the_limit(limit: int, active: int) -> None:
    b = Breaker(Thresholds(max_requests=limit))
    b.requests = active
    assert b.can_request() is (active < limit)
    assert b.open_flags()["rq_open"] == int(active >= limit)


def test_each_resource_is_separate() -> None:
    b = Breaker(Thresholds(max_connections=1, max_pending_requests=2, max_retries=0))
    b.connections = 1
    assert not b.can_connect() and b.can_queue() and b.can_request() and not b.can_retry()


def test_retry_budget_replaces_max_retries() -> None:
    b = Breaker(Thresholds(max_retries=0, retry_budget_percent=20.0, min_retry_concurrency=3))
    b.requests = 10
    assert b.retry_limit() == 3  # 20% of 10 is 2: the floor of 3 wins
    b.requests, b.pending = 40, 10
    assert b.retry_limit() == 10
    b.retries = 10
    assert not b.can_retry()

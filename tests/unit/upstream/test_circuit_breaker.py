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

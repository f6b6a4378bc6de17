"""The retry decision (upstream/retry.py): conditions, limits and the jittered back-off bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.model.retry import RetryPolicy
from sidecar.upstream.retry import Outcome, Refused, backoff, decide_retry, retriable

NO_RESPONSE = (Outcome.CONNECT_FAILURE, Outcome.RESET, Outcome.TIMEOUT)


def policy(on: str, **kw: object) -> RetryPolicy:
    return RetryPolicy(retry_on=frozenset(on.split(",")), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("on", "status", "expected"),
    [
        ("5xx", 500, True),
        ("5xx", 503, True),
        ("5xx", 499, False),
        ("gateway-error", 502, True),
        ("gateway-error", 504, True),
        ("gateway-error", 500, False),
        ("retriable-4xx", 409, True),
        ("retriable-4xx", 404, False),
        ("reset", 503, False),
        ("connect-failure", 503, False),
    ],
)
def test_status_conditions(on: str, status: int, expected: bool) -> None:
    assert retriable(policy(on), Outcome.RESPONSE, status) is expected


def test_retriable_status_codes_need_the_condition() -> None:
    codes = frozenset({418})
    assert retriable(policy("retriable-status-codes", retriable_status_codes=codes), Outcome.RESPONSE, 418)
    assert not retriable(policy("5xx", retriable_status_codes=codes), Outcome.RESPONSE, 418)


@pytest.mark.parametrize("outcome", NO_RESPONSE)
@pytest.mark.parametrize("on", ["5xx", "gateway-error", "reset"])
def test_no_response_is_retried_by_5xx_gateway_error_and_reset(on: str, outcome: Outcome) -> None:
    assert retriable(policy(on), outcome)


def test_connect_failure_only_covers_connect_failures() -> None:
    p = policy("connect-failure")
    assert retriable(p, Outcome.CONNECT_FAILURE)
    assert not retriable(p, Outcome.RESET)
    assert not retriable(p, Outcome.TIMEOUT)


def test_grpc_conditions_read_grpc_status() -> None:
    p = policy("unavailable,cancelled")
    assert retriable(p, Outcome.RESPONSE, 200, grpc_status=14)
    assert retriable(p, Outcome.RESPONSE, 200, grpc_status=1)
    assert not retriable(p, Outcome.RESPONSE, 200, grpc_status=13)
    assert not retriable(p, Outcome.RESPONSE, 200, grpc_status=None)


def test_limit_and_overflow_are_refusals_not_silence() -> None:
    p = policy("5xx", num_retries=2)
    assert decide_retry(p, 2, Outcome.RESPONSE, 503, None, False, True, 0.5) is Refused.LIMIT
    assert decide_retry(p, 0, Outcome.RESPONSE, 503, None, False, False, 0.5) is Refused.OVERFLOW
    assert decide_retry(p, 0, Outcome.RESPONSE, 200, None, False, True, 0.5) is None


@given(st.integers(min_value=1, max_value=40), st.floats(min_value=0, max_value=0.999999))
def test_backoff_is_fully_jittered_and_capped(n: int, rand: float) -> None:
    p = RetryPolicy(retry_on=frozenset({"5xx"}), base_interval=0.025, max_interval=0.25)
    d = backoff(p, n, rand)
    assert 0 <= d <= min((2**n - 1) * 0.025, 0.25) + 1e-12
    assert backoff(p, n, 0.0) == 0.0


def test_reset_header_delay_seconds_and_timestamp_capped() -> None:
    from sidecar.upstream.retry import reset_delay

    p = RetryPolicy(
        retry_on=frozenset({"5xx"}),
        reset_headers=((b"retry-after", "SECONDS"), (b"x-ratelimit-reset", "UNIX_TIMESTAMP")),
        reset_max_interval=10.0,
    )
    hdrs = {b"x-ratelimit-reset": b"1005"}
    assert reset_delay(p, hdrs.get, 1000.0) == 5.0
    assert reset_delay(p, {b"retry-after": b"3"}.get, 1000.0) == 3.0
    assert reset_delay(p, {b"retry-after": b"soon"}.get, 1000.0) is None
    assert decide_retry(p, 0, Outcome.RESPONSE, 503, None, False, True, 0.5, reset_after=60.0) == 10.0

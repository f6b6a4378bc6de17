"""Should a failed attempt be retried, and after how long?  (Envoy's RetryStateImpl, pure.)

`decide_retry` keeps "not wanted" (None) apart from "wanted but refused" (a `Refused` reason), as
Envoy's RetryStatus does, so that refusals are counted.  Conditions (Envoy's router docs):
- 5xx: any 5xx response, or no response at all (connect failure, reset, per-try timeout);
- gateway-error: 502/503/504, or no response at all;
- reset: no response (reset/disconnect/per-try timeout); reset-before-request: a reset before the
  request was sent; connect-failure: the connection could not be made;
- retriable-4xx: 409; retriable-status-codes: the policy's codes; envoy-ratelimited: a response
  carrying x-envoy-ratelimited; retriable-headers: a response matching any of retriable_headers;
- gRPC (cancelled, deadline-exceeded, internal, resource-exhausted, unavailable): the grpc-status of a
  response's headers.
Back-off (RFC-free, Envoy's JitteredExponentialBackOffStrategy): attempt N waits a uniformly random
time in [0, min((2^N - 1) * base, max)].

`steer` merges the request headers that steer retries (internal requests only: the connection
manager strips them from external ones) into the route's policy, as RetryStateImpl does."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import Enum

from sidecar.http.timeouts import parse_int
from sidecar.model.retry import GRPC_CONDITIONS, HTTP_CONDITIONS, RetryPolicy
from sidecar.routing.matchers import HeaderMatcher

_UINT32 = 0xFFFFFFFF


class Outcome(Enum):
    RESPONSE = "response"  # response headers arrived: look at status / grpc-status / headers
    CONNECT_FAILURE = "connect-failure"
    RESET_BEFORE_REQUEST = "reset-before-request"  # the connection broke before the request was sent
    RESET = "reset"  # the connection broke after the request was sent, before response headers
    TIMEOUT = "per-try-timeout"


class Refused(Enum):
    OVERFLOW = "overflow"  # the cluster's max_retries circuit breaker is full
    LIMIT = "limit"  # num_retries used up


def retriable(
    p: RetryPolicy,
    outcome: Outcome,
    status: int = 0,
    grpc_status: int | None = None,
    ratelimited: bool = False,
    headers_match: bool = False,
) -> bool:
    on = p.retry_on
    if outcome is Outcome.RESPONSE:
        if headers_match and "retriable-headers" in on:
            return True
        if status >= 500 and "5xx" in on:
            return True
        if status in (502, 503, 504) and "gateway-error" in on:
            return True
        if status == 409 and "retriable-4xx" in on:
            return True
        if status in p.retriable_status_codes and "retriable-status-codes" in on:
            return True
        if ratelimited and "envoy-ratelimited" in on:
            return True
        if grpc_status is not None:
            for name, code in GRPC_CONDITIONS.items():
                if code == grpc_status and name in on:
                    return True
        return False
    # No response at all.
    if "5xx" in on or "gateway-error" in on or "reset" in on:
        return True
    if outcome is Outcome.CONNECT_FAILURE:
        return "connect-failure" in on or "reset-before-request" in on
    if outcome is Outcome.RESET_BEFORE_REQUEST:
        return "reset-before-request" in on
    return False


def backoff(p: RetryPolicy, retry_number: int, rand: float) -> float:
    """Seconds before retry number `retry_number` (1-based); `rand` uniform in [0, 1)."""
    ceiling = min(((1 << min(retry_number, 30)) - 1) * p.base_interval, p.max_interval)
    return rand * ceiling


def decide_retry(
    p: RetryPolicy,
    retries_done: int,
    outcome: Outcome,
    status: int,
    grpc_status: int | None,
    ratelimited: bool,
    budget_left: bool,
    rand: float,
    headers_match: bool = False,
    reset_after: float | None = None,
) -> float | Refused | None:
    """Seconds to wait before the next attempt; Refused if retriable but not allowed; None if this
    outcome is final (not retriable)."""
    if not retriable(p, outcome, status, grpc_status, ratelimited, headers_match):
        return None
    if retries_done >= p.num_retries:
        return Refused.LIMIT
    if not budget_left:
        return Refused.OVERFLOW
    if reset_after is not None:
        # rate_limited_retry_back_off: the upstream said how long to wait (capped).
        return max(0.0, min(reset_after, p.reset_max_interval))
    return backoff(p, retries_done + 1, rand)


def reset_delay(p: RetryPolicy, header: Callable[[bytes], bytes | None], now_epoch: float) -> float | None:
    """Seconds a rate-limited response asks to wait, from the first configured reset header that
    parses (SECONDS: a delay; UNIX_TIMESTAMP: an instant), else None (the normal back-off)."""
    for name, fmt in p.reset_headers:
        raw = header(name)
        if raw is None:
            continue
        try:
            value = float(raw.strip())
        except ValueError:
            continue
        if fmt == "UNIX_TIMESTAMP":
            value -= now_epoch
        if value >= 0:
            return value
    return None


def _tokens(raw: bytes, known: frozenset[str] | dict[str, int]) -> set[str]:
    """StringUtil::splitToken(value, ",", keep_empty=false, trim_whitespace=true), unknown names
    dropped (Envoy's parseRetryOn / parseRetryGrpcOn keep the valid ones)."""
    out = set()
    for part in raw.split(b","):
        name = part.strip(b" \t").decode("latin-1")
        if name in known:
            out.add(name)
    return out


def steer(
    policy: RetryPolicy | None,
    retry_on: bytes | None = None,
    retry_grpc_on: bytes | None = None,
    max_retries: bytes | None = None,
    status_codes: bytes | None = None,
    header_names: bytes | None = None,
) -> RetryPolicy | None:
    """The retry policy of one request: the route's (or virtual host's) `policy` with the request's
    x-envoy-retry-on (HTTP conditions), x-envoy-retry-grpc-on (gRPC ones), x-envoy-max-retries (wins
    over num_retries, once any condition is on; Envoy keeps it in 32 bits),
    x-envoy-retriable-status-codes and x-envoy-retriable-header-names (names only: a response having
    the header matches) added, as RetryStateImpl's constructor does.  A route without a policy gets
    Envoy's default one (num_retries 1).  None when no condition is on: the request is not retried."""
    if retry_on is None and retry_grpc_on is None and (policy is None or not policy.retry_on):
        return None
    base = policy if policy is not None else RetryPolicy(retry_on=frozenset())
    on = set(base.retry_on)
    if retry_on is not None:
        on |= _tokens(retry_on, HTTP_CONDITIONS)
    if retry_grpc_on is not None:
        on |= _tokens(retry_grpc_on, GRPC_CONDITIONS)
    if not on:
        return None
    num = base.num_retries
    if max_retries is not None:
        value = parse_int(max_retries)
        if value is not None:
            num = value & _UINT32  # assigned to Envoy's uint32_t retries_remaining_
    codes = base.retriable_status_codes
    if status_codes is not None:
        parsed = (parse_int(code, _UINT32) for code in status_codes.split(b","))
        codes = codes | {c for c in parsed if c is not None}
    matchers = base.retriable_headers
    if header_names is not None:
        names = (n.strip(b" \t\n\v\f\r").decode("latin-1").lower() for n in header_names.split(b","))
        matchers = (*matchers, *(HeaderMatcher(n) for n in names if n))
    return dataclasses.replace(
        base, retry_on=frozenset(on), num_retries=num, retriable_status_codes=codes, retriable_headers=matchers
    )

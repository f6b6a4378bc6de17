"""The health check core (upstream/health_check.py): state machine transcripts with a fixed random
source, intervals and jitter, the HTTP request and answer rules, payload matching."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sidecar.model.health_check import HealthCheck, HttpCheck, TcpCheck
from sidecar.model.route import AppendAction, HeaderValueOption
from sidecar.routing.matchers import PrefixMatcher
from sidecar.upstream.health_check import (
    Failure,
    HealthChecker,
    HttpResult,
    Transition,
    http_request,
    http_result,
    payload_match,
    tcp_connect_only,
    tcp_passed,
)

CHANGED, PENDING, SAME = Transition.CHANGED, Transition.CHANGE_PENDING, Transition.UNCHANGED


def zero() -> int:
    return 0


def cfg(**kw: Any) -> HealthCheck:
    base: dict[str, Any] = dict(
        timeout=1.0, interval=5.0, unhealthy_threshold=2, healthy_threshold=3, tcp=TcpCheck()
    )
    base.update(kw)
    return HealthCheck(**base)


def run(
    checker: HealthChecker, steps: list[str], traffic: bool = True, pending: bool = False
) -> list[tuple[str, float, bool]]:
    """Feed results ("ok", "degraded", "net", "timeout", "http", "retriable") to one host; returns
    (transition, next interval, failed flag) per step."""
    hh = checker.new_host(pending)
    out = []
    for step in steps:
        checker.on_attempt()
        if step == "ok":
            change, delay = checker.on_success(hh, False, traffic, zero)
        elif step == "degraded":
            change, delay = checker.on_success(hh, True, traffic, zero)
        else:
            kind = {"net": Failure.NETWORK, "timeout": Failure.NETWORK_TIMEOUT}.get(step, Failure.ACTIVE)
            change, delay = checker.on_failure(hh, kind, step != "http", traffic, zero)
        out.append((change.name, delay, hh.failed))
    return out


def test_first_result_decides_at_once_then_thresholds_apply() -> None:
    c = HealthChecker(cfg(unhealthy_interval=7.0, unhealthy_edge_interval=2.0, healthy_edge_interval=3.0))
    got = run(c, ["ok", "net", "net", "ok", "ok", "ok", "ok"])
    assert got == [
        ("CHANGED", 5.0, False),  # first check: healthy at once, whatever healthy_threshold says
        ("CHANGE_PENDING", 2.0, False),  # 1 of unhealthy_threshold 2: unhealthy_edge_interval
        ("CHANGED", 7.0, True),  # 2 of 2: unhealthy, unhealthy_interval
        ("CHANGE_PENDING", 3.0, True),  # 1 of healthy_threshold 3: healthy_edge_interval
        ("CHANGE_PENDING", 3.0, True),
        ("CHANGED", 5.0, False),
        ("UNCHANGED", 5.0, False),
    ]
    st = c.stats
    assert (st.attempt, st.success, st.failure, st.network_failure, st.healthy) == (7, 5, 2, 2, 1)


def test_first_failure_keeps_the_host_failed_and_unchanged() -> None:
    c = HealthChecker(cfg())
    assert run(c, ["net", "ok"]) == [("UNCHANGED", 5.0, True), ("CHANGE_PENDING", 5.0, True)]
    assert c.stats.healthy == 0


def test_a_non_retriable_http_failure_fails_a_healthy_host_at_once() -> None:
    c = HealthChecker(cfg(unhealthy_threshold=5))
    assert run(c, ["ok", "http"])[-1] == ("CHANGED", 5.0, True)
    c = HealthChecker(cfg(unhealthy_threshold=2))
    assert [t for t, _, _ in run(c, ["ok", "retriable", "retriable"])] == [
        "CHANGED",
        "CHANGE_PENDING",
        "CHANGED",
    ]
    assert c.stats.network_failure == 0 and c.stats.failure == 2


def test_a_success_resets_the_failure_count() -> None:
    c = HealthChecker(cfg(unhealthy_threshold=2))
    assert [f for _, _, f in run(c, ["ok", "net", "ok", "net", "ok"])] == [False] * 5


def test_timeouts_are_network_failures_and_set_the_timeout_flag() -> None:
    c = HealthChecker(cfg(unhealthy_threshold=1))
    hh = c.new_host()
    c.on_success(hh, False, True, zero)
    change, _ = c.on_failure(hh, Failure.NETWORK_TIMEOUT, True, True, zero)
    assert change is CHANGED and hh.failed and hh.timeout
    c.on_failure(hh, Failure.NETWORK, True, True, zero)
    assert not hh.timeout  # toggles with the latest failure's kind
    assert c.stats.network_failure == 2


def test_no_traffic_intervals() -> None:
    c = HealthChecker(cfg(no_traffic_interval=60.0, no_traffic_healthy_interval=30.0))
    assert run(c, ["ok", "net", "net"], traffic=False) == [
        ("CHANGED", 30.0, False),  # healthy, nothing pending: no_traffic_healthy_interval
        ("CHANGE_PENDING", 60.0, False),
        ("CHANGED", 60.0, True),
    ]
    # no_traffic_healthy_interval defaults to no_traffic_interval.
    assert run(HealthChecker(cfg(no_traffic_interval=9.0)), ["ok"], traffic=False)[0][1] == 9.0


def test_pending_hosts_change_on_their_first_result() -> None:
    c = HealthChecker(cfg())
    hh = c.new_host(pending=True)
    change, _ = c.on_failure(hh, Failure.NETWORK, True, True, zero)
    assert change is CHANGED and not hh.pending and hh.failed


def test_degraded_and_immediate_flags() -> None:
    c = HealthChecker(cfg())
    hh = c.new_host()
    assert c.on_success(hh, True, True, zero)[0] is CHANGED
    assert hh.degraded and c.stats.degraded == 1
    assert c.on_success(hh, True, True, zero)[0] is SAME
    assert c.on_success(hh, False, True, zero)[0] is CHANGED
    assert c.stats.degraded == 0
    c.on_failure(hh, Failure.ACTIVE, False, True, zero, immediate=True)
    assert hh.failed and hh.excluded
    for _ in range(3):
        c.on_success(hh, False, True, zero)
    assert not hh.failed and not hh.excluded
    c.forget(hh)
    assert c.stats.healthy == 0


def test_jitter_in_whole_milliseconds() -> None:
    draws = iter([123, 4567])

    def rand() -> int:
        return next(draws)

    c = HealthChecker(cfg(interval=1.0, interval_jitter_percent=10, interval_jitter=0.5))
    hh = c.new_host()
    # 1000 ms + 123 % 100 + 4567 % 500.
    assert c.on_success(hh, False, True, rand)[1] == pytest.approx((1000 + 23 + 67) / 1000)
    c = HealthChecker(cfg(initial_jitter=0.2))
    assert c.first_delay(lambda: 1234) == pytest.approx(0.034)
    assert HealthChecker(cfg()).first_delay(zero) == 0.0
    # At least one millisecond.
    assert HealthChecker(cfg(interval=0.0001)).interval(True, SAME, True, zero) == 0.001


def opt(
    name: bytes, value: bytes, action: AppendAction = AppendAction.APPEND_IF_EXISTS_OR_ADD
) -> HeaderValueOption:
    return HeaderValueOption(name, value, action)


def test_http_request_bytes() -> None:
    http = HttpCheck(path="/healthz", request_headers_to_add=(opt(b"x-hc", b"yes"),))
    assert http_request(http, "svc") == (
        b"GET /healthz HTTP/1.1\r\nhost: svc\r\nuser-agent: Envoy/HC\r\nx-hc: yes\r\n\r\n"
    )
    http = HttpCheck(
        path="/p",
        method="POST",
        send=b"ping",
        request_headers_to_remove=(b"user-agent",),
        request_headers_to_add=(
            opt(b"host", b"no", AppendAction.ADD_IF_ABSENT),
            opt(b"x", b"1", AppendAction.OVERWRITE_IF_EXISTS),
        ),
    )
    assert http_request(http, "h") == b"POST /p HTTP/1.1\r\nhost: h\r\ncontent-length: 4\r\n\r\nping"


Check = Callable[..., tuple[HttpResult, bool]]


def result(
    http: HttpCheck, status: int, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b""
) -> tuple[HttpResult, bool]:
    from sidecar.upstream.health_check import HealthCheckStats

    return http_result(http, HealthCheckStats(), status, headers or [], body)


def test_http_answers() -> None:
    http = HttpCheck(path="/")
    assert result(http, 200) == (HttpResult.SUCCEEDED, False)
    assert result(http, 204) == (HttpResult.FAILED, False)  # default: 200 only
    assert result(http, 503, [(b"x-envoy-immediate-health-check-fail", b"")]) == (HttpResult.FAILED, True)
    assert result(http, 200, [(b"x-envoy-degraded", b"")]) == (HttpResult.DEGRADED, False)
    ranged = HttpCheck(path="/", expected_statuses=((200, 300),), retriable_statuses=((503, 504),))
    assert result(ranged, 204)[0] is HttpResult.SUCCEEDED
    assert result(ranged, 503)[0] is HttpResult.RETRIABLE
    assert result(ranged, 500)[0] is HttpResult.FAILED
    body = HttpCheck(path="/", receive=(b"ok", b"!"))
    assert result(body, 200, body=b"all ok!")[0] is HttpResult.SUCCEEDED
    assert result(body, 200, body=b"!ok")[0] is HttpResult.FAILED


def test_service_name_matcher_counts_verify_cluster() -> None:
    from sidecar.upstream.health_check import HealthCheckStats

    http = HttpCheck(path="/", service_name_matcher=PrefixMatcher("locations"))
    st = HealthCheckStats()
    good = [(b"x-envoy-upstream-healthchecked-cluster", b"locations-prod")]
    assert http_result(http, st, 200, good, b"")[0] is HttpResult.SUCCEEDED
    assert http_result(http, st, 200, [], b"")[0] is HttpResult.FAILED
    assert http_result(http, st, 500, [], b"")[0] is HttpResult.FAILED  # status first: not counted
    assert st.verify_cluster == 2


def test_payloads() -> None:
    assert payload_match([], b"")
    assert payload_match([b"ab", b"cd"], b"xxabyycd")
    assert not payload_match([b"cd", b"ab"], b"abcd")
    assert not payload_match([b"abab"], b"aba")
    assert tcp_connect_only(TcpCheck(send=b"x"))
    assert not tcp_passed(TcpCheck(receive=(b"PONG",)), b"PON")
    assert tcp_passed(TcpCheck(receive=(b"PONG",)), b"+PONG\r\n")

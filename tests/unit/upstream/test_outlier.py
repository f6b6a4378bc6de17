"""Outlier detection (upstream/outlier.py) with a fake clock: ejection rules, duration, return.

Most cases set max_ejection_percent=100: with Envoy's default of 10 % no host of a cluster smaller
than ten may be ejected (100 x (0 + 1) / n must be <= 10) unless always_eject_one_host."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.model.outlier import OutlierDetection
from sidecar.upstream.outlier import LOCAL_ORIGIN_FAILURE, OutlierDetector


def test_five_consecutive_5xx_eject_and_a_success_resets_the_count() -> None:
    d = OutlierDetector(OutlierDetection(max_ejection_percent=100), ["a", "b", "c"])
    for _ in range(4):
        assert not d.report("a", 503, 0.0, 0.0)
    d.report("a", 200, 0.0, 0.0)
    for _ in range(4):
        d.report("a", 500, 0.0, 0.0)
    assert not d.ejected("a")
    assert d.report("a", 500, 0.0, 0.0)
    assert d.ejected("a")


def test_local_origin_failures_count_as_5xx_unless_split() -> None:
    d = OutlierDetector(OutlierDetection(max_ejection_percent=100), ["a", "b"])
    for _ in range(5):
        d.report("a", LOCAL_ORIGIN_FAILURE, 0.0, 0.0)
    assert d.ejected("a")
    split = OutlierDetector(
        OutlierDetection(
            split_external_local_origin_errors=True,
            consecutive_local_origin_failure=3,
            max_ejection_percent=100,
        ),
        ["a", "b"],
    )
    for _ in range(3):
        split.report("a", LOCAL_ORIGIN_FAILURE, 0.0, 0.0)
    assert split.ejected("a")


def test_gateway_failures_are_not_enforced_by_default() -> None:
    cfg = OutlierDetection(consecutive_5xx=100, max_ejection_percent=100)
    d = OutlierDetector(cfg, ["a", "b"])
    for _ in range(10):
        d.report("a", 502, 0.0, 0.0)
    assert not d.ejected("a")
    d2 = OutlierDetector(
        OutlierDetection(
            consecutive_5xx=100, enforcing_consecutive_gateway_failure=100, max_ejection_percent=100
        ),
        ["a", "b"],
    )
    for _ in range(5):
        d2.report("a", 504, 0.0, 0.0)
    assert d2.ejected("a")


def test_ejection_grows_with_each_ejection_and_the_host_returns() -> None:
    cfg = OutlierDetection(base_ejection_time=30.0, interval=10.0, max_ejection_percent=100)
    d = OutlierDetector(cfg, ["a", "b"])
    for _ in range(5):
        d.report("a", 503, 0.0, 0.0)
    assert d.tick(29.0, 0.5) == ([], [])
    assert d.tick(30.0, 0.5) == ([], ["a"])
    for _ in range(5):
        d.report("a", 503, 31.0, 0.0)
    assert d.ejected("a")
    assert d.tick(90.0, 0.5)[1] == []  # second ejection lasts 60 s
    assert d.tick(91.0, 0.5)[1] == ["a"]


def test_max_ejection_percent_counts_the_host_to_eject() -> None:
    # Envoy's ejectHost: allowed while 100 * (ejected + 1) / hosts <= max_ejection_percent.
    d = OutlierDetector(OutlierDetection(max_ejection_percent=10), ["a", "b", "c"])
    for _ in range(5):
        d.report("a", 503, 0.0, 0.0)
    assert not d.ejected("a")
    # The gateway-failure detection overflows too (checked before its 0 % enforcement).
    assert d.stats.ejections_overflow == 2 and d.stats.ejections_detected_consecutive_5xx == 1
    d = OutlierDetector(OutlierDetection(max_ejection_percent=50), ["a", "b", "c", "d"])
    for h in ("a", "b", "c"):
        for _ in range(5):
            d.report(h, 503, 0.0, 0.0)
    assert [d.ejected(h) for h in "abc"] == [True, True, False]
    assert d.stats.ejections_active == 2 and d.stats.ejections_enforced_consecutive_5xx == 2


def test_always_eject_one_host() -> None:
    d = OutlierDetector(
        OutlierDetection(max_ejection_percent=10, always_eject_one_host=True), ["a", "b", "c"]
    )
    for h in ("a", "b"):
        for _ in range(5):
            d.report(h, 503, 0.0, 0.0)
    assert d.ejected("a") and not d.ejected("b")


def test_unenforced_detection_restarts_the_count() -> None:
    # Envoy detects when the count reaches the threshold (==), then resets it enforced or not.
    d = OutlierDetector(OutlierDetection(max_ejection_percent=100, enforcing_consecutive_5xx=50), ["a", "b"])
    for _ in range(5):
        d.report("a", 500, 0.0, 0.9)  # 90 >= 50: not enforced
    assert not d.ejected("a") and d.stats.ejections_detected_consecutive_5xx == 1
    for _ in range(4):
        assert not d.report("a", 500, 0.0, 0.1)
    assert d.report("a", 500, 0.0, 0.1)
    assert d.stats.ejections_detected_consecutive_5xx == 2 and d.stats.ejections_enforced_total == 1


def test_backoff_shrinks_after_healthy_intervals_and_max_ejection_time_caps() -> None:
    cfg = OutlierDetection(
        base_ejection_time=10.0, max_ejection_time=15.0, interval=1.0, max_ejection_percent=100
    )
    d = OutlierDetector(cfg, ["a", "b"])

    def eject(t: float) -> None:
        for _ in range(5):
            d.report("a", 503, t, 0.0)
        assert d.ejected("a")

    eject(0.0)
    assert d.tick(10.0, 0.5)[1] == ["a"]
    eject(10.5)  # backoff 2: min(20, 15) = 15 s
    assert d.tick(25.0, 0.5)[1] == []
    assert d.tick(25.5, 0.5)[1] == ["a"]
    for t in range(27, 31):  # four ticks an interval after the return: backoff 3 -> 0
        d.tick(float(t), 0.5)
    eject(31.0)
    assert d.tick(41.0, 0.5)[1] == ["a"]  # back to base_ejection_time


def test_success_rate_ejects_the_outlier() -> None:
    cfg = OutlierDetection(
        success_rate_minimum_hosts=5,
        success_rate_request_volume=10,
        consecutive_5xx=1000,
        max_ejection_percent=100,
    )
    hosts = [f"h{i}" for i in range(6)]
    d = OutlierDetector(cfg, hosts)
    for h in hosts:
        for i in range(20):
            bad = h == "h0" and i % 2 == 0
            d.report(h, 503 if bad else 200, 0.0, 0.5)
    ejected, _ = d.tick(10.0, 0.5)
    assert ejected == ["h0"]


@given(
    st.lists(st.sampled_from([200, 404, 500, 503, LOCAL_ORIGIN_FAILURE]), max_size=200), st.integers(1, 20)
)
def test_never_more_than_allowed_hosts_ejected(results: list[int], n_hosts: int) -> None:
    cfg = OutlierDetection(consecutive_5xx=2, max_ejection_percent=30)
    hosts = list(range(n_hosts))
    d = OutlierDetector(cfg, hosts)
    for i, r in enumerate(results):
        d.report(hosts[i % n_hosts], r, 0.0, 0.0)
    ejected = sum(d.ejected(h) for h in hosts)
    assert ejected <= max(1, -(-30 * n_hosts // 100))

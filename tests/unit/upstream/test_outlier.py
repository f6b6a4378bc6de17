"""Outlier detection (upstream/outlier.py) with a fake clock: ejection rules, duration, return."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.model.outlier import OutlierDetection
from sidecar.upstream.outlier import LOCAL_ORIGIN_FAILURE, OutlierDetector


def test_five_consecutive_5xx_eject_and_a_success_resets_the_count() -> None:
    d = OutlierDetector(OutlierDetection(), ["a", "b", "c"])
    for _ in range(4):
        assert not d.report("a", 503, 0.0, 0.0)
    d.report("a", 200, 0.0, 0.0)
    for _ in range(4):
        d.report("a", 500, 0.0, 0.0)
    assert not d.ejected("a")
    assert d.report("a", 500, 0.0, 0.0)
    assert d.ejected("a")


def test_local_origin_failures_count_as_5xx_unless_split() -> None:
    d = OutlierDetector(OutlierDetection(), ["a", "b"])
    for _ in range(5):
        d.report("a", LOCAL_ORIGIN_FAILURE, 0.0, 0.0)
    assert d.ejected("a")
    split = OutlierDetector(
        OutlierDetection(split_external_local_origin_errors=True, consecutive_local_origin_failure=3),
        ["a", "b"],
    )
    for _ in range(3):
        split.report("a", LOCAL_ORIGIN_FAILURE, 0.0, 0.0)
    assert split.ejected("a")


def test_gateway_failures_are_not_enforced_by_default() -> None:
    cfg = OutlierDetection(consecutive_5xx=100)
    d = OutlierDetector(cfg, ["a", "b"])
    for _ in range(10):
        d.report("a", 502, 0.0, 0.0)
    assert not d.ejected("a")
    d2 = OutlierDetector(
        OutlierDetection(consecutive_5xx=100, enforcing_consecutive_gateway_failure=100), ["a", "b"]
    )
    for _ in range(5):
        d2.report("a", 504, 0.0, 0.0)
    assert d2.ejected("a")


def test_ejection_grows_with_each_ejection_and_the_host_returns() -> None:
    cfg = OutlierDetection(base_ejection_time=30.0, interval=10.0)
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


def test_max_ejection_percent_but_always_one() -> None:
    d = OutlierDetector(OutlierDetection(max_ejection_percent=10), ["a", "b", "c"])
    for h in ("a", "b"):
        for _ in range(5):
            d.report(h, 503, 0.0, 0.0)
    assert d.ejected("a") and not d.ejected("b")


def test_success_rate_ejects_the_outlier() -> None:
    cfg = OutlierDetection(success_rate_minimum_hosts=5, success_rate_request_volume=10, consecutive_5xx=1000)
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

"""ClusterState with outlier detection, on a fake loop: an ejection removes the host from picks, its
return puts it back, panic mode balances over every host, and the stats carry Envoy's names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from sidecar.model.cluster import Cluster
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.model.outlier import OutlierDetection
from sidecar.observe.stats import Stats
from sidecar.upstream.cluster_manager import ClusterState, Host
from sidecar.upstream.outlier import LOCAL_ORIGIN_FAILURE


class FakeTimer:
    def __init__(self, when: float, fn: Callable[[], object]) -> None:
        self.when, self.fn, self.cancelled = when, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """time() and call_later(); `advance(t)` runs the timers due by then, in order."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, fn: Callable[..., object], *args: object) -> FakeTimer:
        t = FakeTimer(self.now + delay, lambda: fn(*args))
        self.timers.append(t)
        return t

    def call_at(self, when: float, fn: Callable[..., object], *args: object) -> FakeTimer:
        return self.call_later(when - self.now, fn, *args)

    def advance(self, to: float) -> None:
        for _ in range(10_000):
            due = [t for t in self.timers if not t.cancelled and t.when <= to]
            if not due:
                break
            t = min(due, key=lambda x: x.when)
            self.timers.remove(t)
            self.now = t.when
            t.fn()
        self.now = to


OD = OutlierDetection(consecutive_5xx=3, interval=0.2, base_ejection_time=1.0, max_ejection_percent=50)


def make(n: int, od: OutlierDetection | None = OD, **kw: Any) -> tuple[ClusterState, FakeLoop, Stats]:
    eps = tuple(Endpoint(SocketAddress("127.0.0.1", 9000 + i)) for i in range(n))
    cfg = Cluster(name="c", endpoints=eps, outlier_detection=od, **kw)
    loop = FakeLoop()
    stats = Stats(max_slots=4096)
    return ClusterState(cfg, stats, cast(Any, loop)), loop, stats


def picks(cs: ClusterState, n: int = 20) -> set[int]:
    out = set()
    for _ in range(n):
        h = cs.pick()
        assert h is not None
        out.add(h.address.port)
    return out


def fail(cs: ClusterState, host: Host, times: int, status: int = 503) -> None:
    for _ in range(times):
        cs.report(host, status)


def test_no_detector_without_config() -> None:
    cs, loop, _ = make(2, None)
    assert cs.detector is None and loop.timers == []


def test_ejected_host_leaves_the_picks_and_returns_after_base_ejection_time() -> None:
    cs, loop, stats = make(2)
    bad = cs.hosts[0]
    assert picks(cs) == {9000, 9001}
    fail(cs, bad, 2)
    assert picks(cs) == {9000, 9001}
    fail(cs, bad, 1)
    assert picks(cs) == {9001}
    assert stats.value("cluster.c.outlier_detection.ejections_active") == 1
    assert stats.value("cluster.c.outlier_detection.ejections_enforced_total") == 1
    assert stats.value("cluster.c.outlier_detection.ejections_enforced_consecutive_5xx") == 1
    assert stats.value("cluster.c.outlier_detection.ejections_detected_consecutive_5xx") == 1
    assert stats.value("cluster.c.membership_healthy") == 1
    loop.advance(100.9)  # the interval timer ran, the ejection has not expired
    assert picks(cs) == {9001}
    loop.advance(101.3)  # first tick after 1 s
    assert picks(cs) == {9000, 9001}
    assert stats.value("cluster.c.outlier_detection.ejections_active") == 0
    assert stats.value("cluster.c.lb_healthy_panic") == 0


def test_max_ejection_percent_overflow() -> None:
    cs, _, stats = make(2)
    fail(cs, cs.hosts[0], 3, 500)
    fail(cs, cs.hosts[1], 3, 500)
    assert picks(cs) == {9001}
    assert stats.value("cluster.c.outlier_detection.ejections_overflow") == 1


def test_local_origin_failures_eject_and_endpoint_refresh_keeps_the_state() -> None:
    cs, _, _ = make(3, OutlierDetection(consecutive_5xx=2, max_ejection_percent=40, interval=1.0))
    fail(cs, cs.hosts[2], 2, LOCAL_ORIGIN_FAILURE)
    assert picks(cs) == {9000, 9001}
    cs.set_endpoints(h.endpoint for h in cs.hosts)  # e.g. a DNS refresh
    assert picks(cs) == {9000, 9001}


def test_panic_mode_balances_over_all_hosts() -> None:
    # 3 hosts, 2 ejected: 140 * 1 / 3 = 46.7 % < 50 %: panic.
    cs, loop, stats = make(3, OutlierDetection(consecutive_5xx=1, max_ejection_percent=100, interval=10.0))
    cs.report(cs.hosts[0], 500)
    assert picks(cs) == {9001, 9002} and not cs.panic
    cs.report(cs.hosts[1], 500)
    # update_merge_window (1 s): a second change within it reaches the balancer at the window's end.
    assert not cs.panic and picks(cs) == {9001, 9002}
    loop.advance(loop.now + 0.99)
    assert not cs.panic
    loop.advance(loop.now + 0.02)
    assert cs.panic
    assert picks(cs, 30) == {9000, 9001, 9002}
    assert stats.value("cluster.c.lb_healthy_panic") == 30
    assert stats.value("cluster.c.membership_healthy") == 1


def test_panic_threshold_zero_means_no_healthy_upstream() -> None:
    cs, _, _ = make(
        2,
        OutlierDetection(consecutive_5xx=1, max_ejection_percent=100),
        healthy_panic_threshold=0.0,
        update_merge_window=0.0,
    )
    cs.report(cs.hosts[0], 500)
    cs.report(cs.hosts[1], 500)
    assert cs.pick() is None


def test_all_endpoints_unhealthy_is_panic_too() -> None:
    eps = tuple(Endpoint(SocketAddress("127.0.0.1", 9000 + i), health_status="UNHEALTHY") for i in range(2))
    cs = ClusterState(Cluster(name="u", endpoints=eps), Stats(max_slots=4096), cast(Any, FakeLoop()))
    assert cs.panic and picks(cs) == {9000, 9001}


def test_close_cancels_the_interval_timer() -> None:
    cs, loop, _ = make(2)
    cs.report(cs.hosts[0], 200)
    (timer,) = loop.timers
    cs.close()
    assert timer.cancelled

"""ClusterState over priorities, localities and health (fake loop): EDS health_status, active health
check results and outlier ejections combine as Envoy's host health; picks follow the priority plan;
the membership and panic stats carry Envoy's names."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.model.cluster import Cluster, LbPolicy
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.model.health_check import HealthCheck, TcpCheck
from sidecar.model.outlier import OutlierDetection
from sidecar.observe.stats import Stats
from sidecar.upstream.cluster_manager import ClusterState, Host, _hc_key
from sidecar.upstream.health_check import Failure
from sidecar.upstream.lb.priority import DEGRADED, EXCLUDED, HEALTHY, UNHEALTHY


class FakeTimer:
    def __init__(self, when: float, fn: Callable[[], object]) -> None:
        self.when, self.fn, self.cancelled = when, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
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


def ep(port: int, status: str = "UNKNOWN", priority: int = 0, zone: str = "", lw: int = 0) -> Endpoint:
    return Endpoint(
        SocketAddress("127.0.0.1", port),
        health_status=status,
        priority=priority,
        locality=("r", zone, ""),
        locality_weight=lw,
    )


def make(eps: list[Endpoint], **kw: Any) -> tuple[ClusterState, FakeLoop, Stats]:
    loop = FakeLoop()
    stats = Stats(max_slots=4096)
    cs = ClusterState(Cluster(name="c", endpoints=tuple(eps), **kw), stats, cast(Any, loop))
    cs._rand.seed(7)
    return cs, loop, stats


def served(cs: ClusterState, n: int = 1000) -> Counter[int]:
    out: Counter[int] = Counter()
    for _ in range(n):
        h = cs.pick()
        out[h.address.port if h is not None else 0] += 1
    return out


def test_health_status_failover_between_priorities() -> None:
    # P0 {healthy, unhealthy, timeout}: 140 / 3 = 46 % on P0, 54 % on P1.
    cs, _, stats = make([ep(1), ep(2, "UNHEALTHY"), ep(3, "TIMEOUT"), ep(4, priority=1), ep(5, priority=1)])
    got = served(cs, 4000)
    assert set(got) == {1, 4, 5}
    assert abs(got[1] / 4000 - 0.46) < 0.04
    assert stats.value("cluster.c.membership_healthy") == 3
    assert stats.value("cluster.c.membership_total") == 5
    assert stats.value("cluster.c.lb_healthy_panic") == 0
    assert stats.value("cluster.c.membership_change") == 2  # one per priority


def test_draining_is_excluded_and_degraded_only_takes_the_rest() -> None:
    cs, _, stats = make([ep(1), ep(2, "DRAINING"), ep(3, "DRAINING"), ep(4, priority=1)])
    assert set(served(cs, 200)) == {1}
    assert stats.value("cluster.c.membership_excluded") == 2
    # P0 {timeout, timeout, degraded}, P1 {unhealthy, healthy}: P1 70 % healthy, P0 30 % degraded.
    cs, _, stats = make(
        [ep(1, "TIMEOUT"), ep(2, "TIMEOUT"), ep(3, "DEGRADED"), ep(4, "UNHEALTHY", 1), ep(5, priority=1)]
    )
    got = served(cs, 4000)
    assert set(got) == {3, 5} and abs(got[3] / 4000 - 0.30) < 0.04
    assert stats.value("cluster.c.membership_degraded") == 1


def test_panic_uses_all_hosts_of_the_priority_and_counts() -> None:
    cs, _, stats = make([ep(1), ep(2), ep(3, "UNHEALTHY"), ep(4, "UNHEALTHY"), ep(5, "UNHEALTHY")])
    assert cs.panic
    assert set(served(cs, 100)) == {1, 2, 3, 4, 5}
    assert stats.value("cluster.c.lb_healthy_panic") == 100
    cs, _, stats = make([ep(1, "UNHEALTHY"), ep(2, "UNHEALTHY")], fail_traffic_on_panic=True)
    assert cs.pick() is None
    assert stats.value("cluster.c.lb_healthy_panic") == 1


def test_locality_weights_split_traffic() -> None:
    eps = [ep(1, zone="a", lw=1), ep(2, zone="b", lw=3), ep(3, zone="b", lw=3)]
    cs, _, _ = make(eps, locality_weighted_lb=True)
    got = served(cs, 4000)
    assert abs(got[1] / 4000 - 0.25) < 0.02
    assert abs(got[2] - got[3]) < 100


def test_ring_hash_fails_over_by_priority() -> None:
    cs, _, _ = make([ep(1, "UNHEALTHY"), ep(2, "UNHEALTHY"), ep(3, priority=1)], lb_policy=LbPolicy.RING_HASH)
    assert {cs.pick(h).address.port for h in (0, 1, 2**40, 2**63)} == {3}  # type: ignore[union-attr]


HC = HealthCheck(timeout=1.0, interval=1.0, unhealthy_threshold=1, healthy_threshold=1, tcp=TcpCheck())


def hc_result(cs: ClusterState, host: Host, ok: bool) -> None:
    """What the runner does after a probe: the core decides, the cluster is told."""
    checker = cs.hc_checker
    assert checker is not None and host.hc is not None
    if ok:
        change, _ = checker.on_success(host.hc, False, True, lambda: 0)
    else:
        change, _ = checker.on_failure(host.hc, Failure.NETWORK, True, True, lambda: 0)
    cs._on_health_check(_hc_key(host.endpoint), ok, change)


def test_active_health_checks_drive_host_health() -> None:
    cs, loop, stats = make([ep(1), ep(2), ep(3, priority=1)], health_checks=(HC,))
    assert cs.warming and [h.state for h in cs.hosts] == [UNHEALTHY] * 3  # failed until checked
    for h, ok in zip(cs.hosts, (True, False, True), strict=True):
        hc_result(cs, h, ok)
    cs._warmed(None)
    # P0 {healthy, failed}: 70 % on P0.
    got = served(cs, 4000)
    assert set(got) == {1, 3} and abs(got[1] / 4000 - 0.70) < 0.04
    assert stats.value("cluster.c.health_check.healthy") == 2
    assert stats.value("cluster.c.health_check.failure") == 1
    # After warming, changes go through update_merge_window: the first at once, the next merged.
    hc_result(cs, cs.hosts[1], True)
    assert set(served(cs, 200)) == {1, 2}
    hc_result(cs, cs.hosts[0], False)
    assert 1 in served(cs, 200)
    loop.advance(loop.now + 1.01)
    assert set(served(cs, 200)) == {2, 3}  # P0 at half health again: 70 / 30


def test_hc_state_survives_an_endpoint_refresh_and_opt_out() -> None:
    eps = [ep(1), Endpoint(SocketAddress("127.0.0.1", 2), disable_active_health_check=True)]
    cs, _, _ = make(eps, health_checks=(HC,))
    assert cs.hosts[1].hc is None and cs.hosts[1].state == HEALTHY
    hc_result(cs, cs.hosts[0], True)
    cs._warmed(None)
    hh = cs.hosts[0].hc
    cs.set_endpoints([ep(1, "HEALTHY"), eps[1]])
    assert cs.hosts[0].hc is hh and not hh.failed  # type: ignore[union-attr]


def test_a_passing_check_lifts_an_outlier_ejection() -> None:
    od = OutlierDetection(consecutive_5xx=1, max_ejection_percent=100)
    cs, _, stats = make([ep(1), ep(2)], health_checks=(HC,), outlier_detection=od, update_merge_window=0.0)
    for h in cs.hosts:
        hc_result(cs, h, True)
    cs._warmed(None)
    cs.report(cs.hosts[0], 503)
    assert set(served(cs, 50)) == {2}
    hc_result(cs, cs.hosts[0], True)
    assert set(served(cs, 50)) == {1, 2}
    assert stats.value("cluster.c.outlier_detection.ejections_active") == 0


def test_immediate_fail_excludes_the_host() -> None:
    cs, _, stats = make([ep(1), ep(2), ep(3)], health_checks=(HC,), update_merge_window=0.0)
    for h in cs.hosts:
        hc_result(cs, h, True)
    cs._warmed(None)
    checker = cs.hc_checker
    assert checker is not None
    host = cs.hosts[0]
    change, _ = checker.on_failure(host.hc, Failure.ACTIVE, False, True, lambda: 0, immediate=True)  # type: ignore[arg-type]
    cs._on_health_check(_hc_key(host.endpoint), False, change)
    assert host.state == EXCLUDED
    assert stats.value("cluster.c.membership_excluded") == 1
    assert host.health_flags() == ("failed_active_hc", "excluded_via_immediate_hc_fail")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED"]),
            st.integers(0, 2),
        ),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from(list(LbPolicy)[:5]),
    st.booleans(),
)
def test_picks_never_land_on_unavailable_hosts_outside_panic(
    hosts: list[tuple[str, int]], policy: LbPolicy, locality: bool
) -> None:
    eps = [ep(10 + i, status, prio, zone=f"z{i % 2}", lw=1 + i % 3) for i, (status, prio) in enumerate(hosts)]
    cs, _, _ = make(eps, lb_policy=policy, locality_weighted_lb=locality)
    assert cs.balancer is not None
    panic = cs.balancer.plan.panic
    by_port = {h.address.port: h for h in cs.hosts}
    for i in range(30):
        h = cs.pick(i * 0x9E3779B97F4A7C15 % 2**64)
        if h is None:
            continue
        host = by_port[h.address.port]
        assert host.state in (HEALTHY, DEGRADED) or panic[host.endpoint.priority]

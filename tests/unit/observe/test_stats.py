"""The shared stats store: handles, per-worker rows summed, kinds, and usedonly."""

import os

import pytest

from sidecar.observe.stats import Stats


def test_counters_and_gauges_sum_over_worker_rows() -> None:
    s = Stats(workers=3, max_slots=16)
    c = s.counter("http.a.downstream_rq_total")
    g = s.gauge("http.a.downstream_rq_active")
    c.inc()
    g.inc(5)
    s.select_worker(2)
    c.inc(2)
    g.dec(1)
    assert s.value("http.a.downstream_rq_total") == 3
    assert s.value("http.a.downstream_rq_active") == 4
    assert [(n, k) for n, k, _ in s.items()] == [
        ("http.a.downstream_rq_active", "gauge"),
        ("http.a.downstream_rq_total", "counter"),
    ]


def test_same_name_same_handle_and_unused_is_not_used() -> None:
    s = Stats(max_slots=8)
    assert s.counter("x") is s.counter("x")
    s.counter("y")
    assert not s.used("y")
    s.counter("y").inc()
    assert s.used("y")


def test_slots_are_bounded() -> None:
    s = Stats(max_slots=2)
    s.counter("a")
    s.counter("b")
    with pytest.raises(RuntimeError):
        s.counter("c")


def test_a_forked_worker_writes_into_the_shared_mapping() -> None:
    s = Stats(workers=2, max_slots=4)
    c = s.counter("cluster.x.upstream_rq_total")
    pid = os.fork()
    if pid == 0:  # child: worker 1
        s.select_worker(1)
        c.inc(7)
        os._exit(0)
    os.waitpid(pid, 0)
    c.inc()
    assert s.value("cluster.x.upstream_rq_total") == 8

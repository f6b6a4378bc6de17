"""Stat blocks shared by scope: two filter chains whose connection managers (or tcp_proxies) have
the same stat_prefix count into the same counters, as Envoy's stats are shared by name; the block
is forgotten only when its last user releases it."""

from __future__ import annotations

from sidecar.http.conn_manager import HcmStats
from sidecar.l4.tcp_proxy import TcpProxyStats
from sidecar.observe.stats import Stats, shared_block


def test_two_users_of_one_prefix_add_up() -> None:
    s = Stats()
    a = shared_block(s, "http.p.", lambda: HcmStats(s, "p"))
    b = shared_block(s, "http.p.", lambda: HcmStats(s, "p"))
    assert a is b
    a.downstream_rq_total += 1
    b.downstream_rq_total += 2
    assert s.value("http.p.downstream_rq_total") == 3
    other = shared_block(s, "http.q.", lambda: HcmStats(s, "q"))
    assert other is not a


def test_released_by_the_last_user_only() -> None:
    s = Stats()
    a = shared_block(s, "tcp.t.", lambda: TcpProxyStats(s, "t"))
    b = shared_block(s, "tcp.t.", lambda: TcpProxyStats(s, "t"))
    s.release(a)
    b.downstream_cx_total += 1  # still flushed: one user left
    assert s.value("tcp.t.downstream_cx_total") == 1
    s.release(b)
    c = shared_block(s, "tcp.t.", lambda: TcpProxyStats(s, "t"))
    assert c is not b  # a new block, which takes over the counts so far (stats outlive config)
    c.downstream_cx_total += 1
    assert s.value("tcp.t.downstream_cx_total") == 2


def test_a_registry_without_sharing_gets_fresh_blocks() -> None:
    class Plain:
        def block(self, *args: object, **kwargs: object) -> None:
            pass

    reg = Plain()
    assert shared_block(reg, "x.", object) is not shared_block(reg, "x.", object)

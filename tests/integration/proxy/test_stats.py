"""What the sidecar counts, read back through admin /stats after known traffic."""

from __future__ import annotations

import pytest

from tests.integration.proxy.test_process import BOOTSTRAP
from tests.support.http1 import Client, request
from tests.support.proxy import start_proxy
from tests.support.upstream import Behaviour, Upstreams

pytestmark = pytest.mark.timeout(60)


def _stats(admin_port: int) -> dict[str, int]:
    with Client(admin_port) as c:
        c.send(request("GET", "/stats", host="admin"))
        text = c.read_response().text
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.lstrip("-").isdigit():
            out[name] = int(value)
    return out


def test_counters_follow_the_traffic() -> None:
    ups = Upstreams(["app"])
    try:
        ups["app"].behave(Behaviour(body=b"ok"))
        proc, used = start_proxy("sidecar", BOOTSTRAP.replace("{app_port}", str(ups.ports["app_port"])))
        try:
            # The start-up probe touched the tcp_proxy listener (an upstream connection to `app`):
            # compare against the counters as they were before the traffic.
            s0 = _stats(int(used["admin_port"]))
            with Client(int(used["http_port"])) as c:  # one keep-alive connection, 5 requests
                for _ in range(5):
                    c.send(request("GET", "/x"))
                    assert c.read_response().status == 200
                c.send(request("GET", "/y", host=None))  # no Host: a 400 from the proxy itself
                assert c.read_response().status == 400
            s1 = _stats(int(used["admin_port"]))
            s = {k: v - s0.get(k, 0) for k, v in s1.items()}
            assert s["http.ingress.downstream_rq_total"] == 6
            assert s["http.ingress.downstream_rq_2xx"] == 5
            assert s["http.ingress.downstream_rq_4xx"] == 1
            assert s["cluster.app.upstream_rq_total"] == 5
            assert s["cluster.app.upstream_rq_200"] == 5
            assert s["cluster.app.upstream_rq_2xx"] == 5
            assert s["cluster.app.upstream_cx_total"] == 1  # the upstream connection was reused
            assert s1["cluster.app.upstream_cx_active"] == 1  # the pooled connection stays open
            assert s1["cluster.app.membership_healthy"] == 1
            assert s["listener.127.0.0.1_{}.downstream_cx_total".format(used["http_port"])] >= 1
        finally:
            proc.close()
    finally:
        ups.close()

"""/stats and /stats/prometheus rendering over a real Stats() (no sockets)."""

from __future__ import annotations

import orjson
import pytest

from sidecar.admin.request import JSON, TEXT, Request, dumps, parse_query
from sidecar.admin.stats_pages import StatsPages, effective_state
from tests.integration.admin.fake_context import FakeAdminContext


def _ctx() -> FakeAdminContext:
    ctx = FakeAdminContext()
    ctx.stats.counter("cluster_manager.cds.update_success").inc(3)
    ctx.stats.counter("listener_manager.lds.update_success").inc(1)
    ctx.stats.counter("cluster.backend2.upstream_cx_total")  # never incremented
    ctx.stats.gauge("cluster.backend2.membership_total").set(1)
    ctx.stats.counter("http.ingress_http.downstream_rq_2xx").inc(5)
    return ctx


def _get(pages: StatsPages, query: str, prometheus: bool = False) -> tuple[int, str, str]:
    req = Request("GET", "/stats", parse_query(query))
    resp = pages.prometheus(req) if prometheus else pages.stats(req)
    return resp.status, resp.content_type, resp.body.decode()


def test_pilot_agent_readiness_probe() -> None:
    pages = StatsPages(_ctx())
    status, ctype, body = _get(pages, "usedonly&filter=^(server.state|listener_manager.workers_started)")
    assert (status, ctype) == (200, TEXT)
    assert body == "listener_manager.workers_started: 1\nserver.state: 0\n"
    _, _, body = _get(pages, "usedonly&filter=update_success")
    assert body == "cluster_manager.cds.update_success: 3\nlistener_manager.lds.update_success: 1\n"


def test_text_is_sorted_bytewise_and_usedonly_hides_untouched() -> None:
    pages = StatsPages(_ctx())
    _, _, body = _get(pages, "")
    names = [line.split(": ")[0] for line in body.splitlines()]
    assert names == sorted(names)
    assert "cluster.backend2.upstream_cx_total" in names
    assert names.index("cluster.backend2.upstream_cx_total") < names.index(
        "cluster_manager.cds.update_success"
    )
    _, _, used = _get(pages, "usedonly")
    assert "cluster.backend2.upstream_cx_total" not in used
    assert "server.uptime: 42\n" in used and "server.concurrency: 2\n" in used


@pytest.mark.parametrize(
    ("state", "healthy", "expected", "code"),
    [
        ("LIVE", True, "LIVE", 0),
        ("LIVE", False, "DRAINING", 1),
        ("DRAINING", True, "DRAINING", 1),
        ("PRE_INITIALIZING", True, "PRE_INITIALIZING", 2),
        ("INITIALIZING", True, "INITIALIZING", 3),
        ("bogus", True, "INITIALIZING", 3),
    ],
)
def test_server_state(state: str, healthy: bool, expected: str, code: int) -> None:
    ctx = FakeAdminContext(state=state, healthy=healthy)
    assert effective_state(ctx) == expected
    _, _, body = _get(StatsPages(ctx), "filter=^server.(state|live)$")
    assert body == f"server.live: {int(expected == 'LIVE')}\nserver.state: {code}\n"


def test_json_type_and_invert() -> None:
    pages = StatsPages(_ctx())
    status, ctype, body = _get(pages, "format=json&filter=^cluster_manager")
    assert (status, ctype) == (200, JSON)
    assert orjson.loads(body) == {"stats": [{"name": "cluster_manager.cds.update_success", "value": 3}]}
    assert orjson.loads(_get(pages, "format=json&filter=nomatch")[2]) == {"stats": []}
    _, _, gauges = _get(pages, "type=Gauges&filter=backend2")
    assert gauges == "cluster.backend2.membership_total: 1\n"
    _, _, counters = _get(pages, "type=Counters&filter=backend2")
    assert counters == "cluster.backend2.upstream_cx_total: 0\n"
    assert _get(pages, "type=Histograms")[2] == ""
    _, _, inverted = _get(pages, "filter=^server&invert_filter")
    assert inverted and not any(line.startswith("server.") for line in inverted.splitlines())


def test_bad_parameters() -> None:
    pages = StatsPages(_ctx())
    assert _get(pages, "filter=(") == (400, TEXT, "Invalid re2 regex: missing ): (")
    assert _get(pages, "filter=(", prometheus=True)[0] == 400
    assert _get(pages, "type=bogus") == (400, TEXT, "invalid &type= param")
    assert _get(pages, "format=xml") == (
        400,
        TEXT,
        "usage: /stats?format=(html|active-html|json|prometheus|text)\n\n",
    )


def test_prometheus_and_reset_counters() -> None:
    ctx = _ctx()
    pages = StatsPages(ctx)
    status, ctype, body = _get(pages, "", prometheus=True)
    assert (status, ctype) == (200, TEXT)
    assert "# TYPE envoy_cluster_manager_cds_update_success counter\n" in body
    assert (
        'envoy_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="ingress_http"} 5'
        in body
    )
    assert "# TYPE envoy_server_state gauge\nenvoy_server_state{} 0\n" in body
    assert (
        _get(pages, "format=prometheus&filter=server.live")[2]
        == "# TYPE envoy_server_live gauge\nenvoy_server_live{} 1\n"
    )
    pages.reset_counters()
    _, _, after = _get(pages, "filter=update_success")
    assert after == "cluster_manager.cds.update_success: 0\nlistener_manager.lds.update_success: 0\n"
    ctx.stats.counter("cluster_manager.cds.update_success").inc()
    assert "cluster_manager.cds.update_success: 1\n" in _get(pages, "usedonly")[2]


def test_bootstrap_stats_config_is_used() -> None:
    ctx = _ctx()
    ctx.snapshot = type(ctx.snapshot)(
        clusters=ctx.snapshot.clusters,
        bootstrap_json={
            "stats_config": {
                "use_all_default_tags": False,
                "stats_tags": [{"tag_name": "mesh", "fixed_value": "m1"}],
            }
        },
    )
    _, _, body = _get(StatsPages(ctx), "filter=^cluster.backend2.membership", prometheus=True)
    assert (
        body
        == '# TYPE envoy_cluster_backend2_membership_total gauge\nenvoy_cluster_backend2_membership_total{mesh="m1"} 1\n'
    )


def test_pretty_json_uses_envoys_layout() -> None:
    assert (
        dumps({"a": {"b": [1, "x  y"]}, "c": {}})
        == b'{\n "a": {\n  "b": [\n   1,\n   "x  y"\n  ]\n },\n "c": {}\n}\n'
    )
    assert dumps({"stats": []}, pretty=False) == b'{"stats":[]}'
    assert parse_query("a=1&a=2&b&c=%41+%zz") == {"a": "1", "b": "", "c": "A+%zz"}

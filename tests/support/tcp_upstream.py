"""A recording TCP upstream for tcp_proxy tests: it records the bytes of each connection and whether
the peer half-closed, and answers per a `TcpBehaviour` (greeting, echo, a reply sent after the peer's
FIN, closing its own write side first).  Half-close is the point: `write_eof` is used, never close,
until both directions are done, so a proxy that turns a FIN into a full close is caught."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.loop_thread import LoopThread


@dataclass(frozen=True)
class TcpBehaviour:
    greeting: bytes = b""  # sent as soon as the connection is accepted
    echo: bool = True  # send back every chunk received
    half_close_first: bool = False  # FIN our side right after the greeting, keep reading
    after_eof: bytes = b""  # sent once the peer's FIN arrived, then FIN


@dataclass
class TcpConnectionRecord:
    received: bytearray = field(default_factory=bytearray)
    got_eof: bool = False  # the peer half-closed (FIN) its write side
    done: bool = False  # the connection is over


class TcpUpstream:
    def __init__(self, name: str = "tcp", loop: LoopThread | None = None) -> None:
        self.name = name
        self.host = "127.0.0.1"
        self.port = 0
        self._own_loop = loop is None
        self._loop = loop or LoopThread(f"tcp-{name}")
        self._cond = threading.Condition()
        self._behaviour = TcpBehaviour()
        self.connections: list[TcpConnectionRecord] = []
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def behave(self, behaviour: TcpBehaviour) -> None:
        with self._cond:
            self._behaviour = behaviour

    def reset(self) -> None:
        with self._cond:
            self.connections.clear()
            self._behaviour = TcpBehaviour()

    def wait(self, predicate: Callable[[list[TcpConnectionRecord]], object], timeout: float = 5.0) -> bool:
        """Wait until `predicate(connections)` is true; return whether it became true in time."""
        with self._cond:
            return bool(self._cond.wait_for(lambda: predicate(self.connections), timeout))

    def start(self) -> None:
        async def _start() -> None:
            self._server = await asyncio.start_server(self._serve, self.host, 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.call(_start())

    def close(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        self._loop.call(_stop())
        if self._own_loop:
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        record = TcpConnectionRecord()
        with self._cond:
            self.connections.append(record)
            b = self._behaviour
            self._cond.notify_all()
        try:
            if b.greeting:
                writer.write(b.greeting)
            if b.half_close_first:
                writer.write_eof()
            for _ in range(1_000_000):  # bounded: one read per iteration
                data = await reader.read(65536)
                if not data:
                    break
                with self._cond:
                    record.received += data
                    self._cond.notify_all()
                if b.echo and not b.half_close_first:
                    writer.write(data)
            with self._cond:
                record.got_eof = True
                self._cond.notify_all()
            if not b.half_close_first:
                if b.after_eof:
                    writer.write(b.after_eof)
                writer.write_eof()
            await writer.drain()
            # Wait briefly for the proxy to close its side after both FINs crossed.
            try:
                await asyncio.wait_for(reader.read(), 2.0)
            except TimeoutError:
                pass
        except ConnectionError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with self._cond:
                record.done = True
                self._cond.notify_all()

"""Loopback TLS peers driven by the sidecar's own TLS objects (`ServerTls` / `ClientTls`), used the
way the data path will use them: accept plain TCP, `start_tls` with the context the provider hands
out *now*, then `on_handshake` for the verdict (closing on refusal); or connect with a ClientTls.

`TlsEchoServer` records every handshake verdict or failure reason and echoes what it reads.  It
accepts sockets itself and hands each to `loop.connect_accepted_socket(..., ssl=...)` so that no
byte of the ClientHello is read before OpenSSL sees it (a StreamReader that starts plain and then
calls start_tls can swallow a ClientHello that arrived early).
`exchange(client_tls, port)` makes one connection, sends a line and returns what came back, with the
client-side verdict.  Everything has a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.tls.handshake import ClientTls, Handshake, ServerTls

TIMEOUT = 5.0


@dataclass
class ServerEvent:
    handshake: Handshake | None = None
    error: str = ""  # the failure reason when the handshake itself failed


@dataclass
class Outcome:
    """One client connection: the client's verdict, and what the echo server sent back."""

    handshake: Handshake | None
    error: str = ""
    echoed: bytes = b""
    peer_closed: bool = False

    @property
    def ok(self) -> bool:
        """The handshake passed both sides' checks and the echo came back."""
        return self.handshake is not None and self.handshake.ok and bool(self.echoed)


@dataclass
class TlsEchoServer:
    tls: Callable[[], ServerTls | None]
    host: str = "127.0.0.1"
    events: list[ServerEvent] = field(default_factory=list)
    port: int = 0
    _sock: socket.socket | None = None
    _accepter: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> int:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._accepter = asyncio.create_task(self._accept())
        return self.port

    async def _accept(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        for _ in range(1_000_000):  # bounded accept loop
            conn, _addr = await loop.sock_accept(self._sock)
            task = asyncio.create_task(self._handle(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, conn: socket.socket) -> None:
        tls = self.tls()  # the context of *now*: a rotation applies to the next handshake
        if tls is None:  # not ready: no certificate yet
            self.events.append(ServerEvent(error="no TLS context"))
            conn.close()
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            # (uvloop returns its SSL protocol wrapper here, not ours: keep ours.)
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=tls.ssl_context,
                ssl_handshake_timeout=TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            self.events.append(ServerEvent(error=tls.on_handshake_error(exc)))
            conn.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        obj = writer.get_extra_info("ssl_object")
        verdict = tls.on_handshake(obj)
        self.events.append(ServerEvent(handshake=verdict))
        if not verdict.ok:
            writer.close()
            return
        self._open.add(writer)
        try:
            for _ in range(10_000):  # bounded echo loop
                data = await asyncio.wait_for(reader.read(65536), 30)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, TimeoutError, ssl.SSLError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def close(self) -> None:
        for w in list(self._open):
            w.close()
        if self._accepter is not None:
            self._accepter.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *(t for t in (self._accepter,) if t), return_exceptions=True)
        if self._sock is not None:
            self._sock.close()


@dataclass
class ClientConnection:
    handshake: Handshake
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def echo(self, payload: bytes) -> bytes:
        self.writer.write(payload)
        await self.writer.drain()
        got = b""
        for _ in range(100):
            chunk = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            if not chunk:
                break
            got += chunk
            if len(got) >= len(payload):
                break
        return got

    def close(self) -> None:
        self.writer.close()


async def connect(tls: ClientTls, port: int, host: str = "127.0.0.1") -> ClientConnection | str:
    """A TLS connection judged by `tls.on_handshake`, or the failure reason."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls.ssl_context, server_hostname=tls.server_hostname),
            TIMEOUT,
        )
    except (OSError, TimeoutError) as exc:
        return tls.on_handshake_error(exc)
    verdict = tls.on_handshake(writer.get_extra_info("ssl_object"))
    if not verdict.ok:
        writer.close()
        return verdict.reason
    return ClientConnection(verdict, reader, writer)


async def exchange(tls: ClientTls, port: int, payload: bytes = b"ping\n", host: str = "127.0.0.1") -> Outcome:
    conn = await connect(tls, port, host)
    if isinstance(conn, str):
        return Outcome(None, conn)
    try:
        echoed = await conn.echo(payload)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        return Outcome(conn.handshake, f"after handshake: {exc!r}", peer_closed=True)
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return Outcome(conn.handshake, echoed=echoed, peer_closed=not echoed)

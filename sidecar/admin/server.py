"""The admin HTTP/1.1 server: an asyncio.Protocol over httptools, keep-alive and pipelining, one
request at a time per connection, on the main process's loop.

Not on the hot path, but exposed to whatever can reach the admin port: every malformed or
oversized request gets an HTTP error and the connection closes; a handler that fails or hangs
gets 500 and never takes the server down.  Limits follow Envoy's HTTP connection manager
defaults (60 KiB of request headers, 100 headers).  Response headers copy Envoy's admin
(source/server/admin/admin.cc: cache-control, x-content-type-options)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import inspect
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import cast

import httptools

from sidecar.admin.context import AdminContext
from sidecar.admin.request import TEXT, Response
from sidecar.admin.routes import Router

log = logging.getLogger("sidecar.admin")

MAX_HEADER_BYTES = 60 * 1024  # Envoy's max_request_headers_kb default
MAX_HEADERS = 100  # Envoy's max_headers_count default
MAX_BODY_BYTES = 1024 * 1024
MAX_QUEUED = 8  # pipelined requests read ahead before reading pauses
HEADERS_TIMEOUT = 60.0  # from the first byte of a request to the end of its headers and body
IDLE_TIMEOUT = 3600.0  # Envoy's HCM idle_timeout default
HANDLER_TIMEOUT = 30.0
WRITE_TIMEOUT = 60.0  # a client that stops reading our replies for this long is dropped


class _Reject(Exception):
    """Stops parsing: answer `status` with `body` and close."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


_BAD_REQUEST = _Reject(400, b"Bad Request")
_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def _head(status: int, content_type: str | None, length: int, close: bool, admin: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"]
    if content_type:
        lines.append(f"content-type: {content_type}")
    if admin:
        lines.append("cache-control: no-cache, max-age=0")
        lines.append("x-content-type-options: nosniff")
    lines.append(f"date: {_http_date()}")
    lines.append("server: envoy")
    lines.append(f"content-length: {length}")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def fire(callback: Callable[[], object]) -> None:
    """Run a post-response callback (quit, drain); an awaitable result runs as a task."""
    try:
        result = callback()
    except Exception:
        log.exception("admin callback failed")
        return
    if inspect.isawaitable(result):
        task = asyncio.ensure_future(result)
        _tasks.add(task)
        task.add_done_callback(_task_done)


_tasks: set[asyncio.Future[object]] = set()


def _task_done(task: asyncio.Future[object]) -> None:
    _tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("admin callback failed", exc_info=task.exception())


class _Item:
    __slots__ = ("body", "headers", "keep_alive", "method", "reject", "target")

    def __init__(self) -> None:
        self.method = ""
        self.target = bytearray()
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.keep_alive = True
        self.reject: _Reject | None = None


class _AdminConnection(asyncio.Protocol):
    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.current: _Item | None = None
        self.header_bytes = 0
        self.header_count = 0
        self.queue: deque[_Item] = deque()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False  # no more requests are read
        self.reading_paused = False
        self.can_write = asyncio.Event()
        self.can_write.set()

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server._conns.add(self)
        self._arm(IDLE_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._conns.discard(self)
        self.closing = True
        self.can_write.set()
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A complete request asking to switch protocols: answer it, read nothing after it.
            self._stop_reading()
        except _Reject as r:
            self._enqueue_reject(r)
        except httptools.HttpParserError as e:
            cause = e.__context__
            self._enqueue_reject(cause if isinstance(cause, _Reject) else _BAD_REQUEST)

    def eof_received(self) -> bool | None:
        self.closing = True
        if self.task is None and not self.queue and self.transport is not None:
            self.transport.close()
        return True  # keep the write side open for the replies still queued

    # -- httptools callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.current = _Item()
        self.header_bytes = 0
        self.header_count = 0
        self._arm(HEADERS_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self._count(len(url))
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self._count(len(name) + len(value) + 4)
        self.header_count += 1
        if self.header_count > MAX_HEADERS:
            raise _Reject(431, b"Request Header Fields Too Large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.current.headers
        headers[key] = f"{headers[key]},{text}" if key in headers else text

    def on_headers_complete(self) -> None:
        item = self.current
        assert item is not None and self.transport is not None
        item.method = self.parser.get_method().decode("latin-1")
        if self.parser.get_http_version() != "1.1":
            raise _Reject(426, b"Upgrade Required")  # Envoy: HTTP/1.0 is off by default
        if "host" not in item.headers or b"#" in item.target:
            raise _Reject(400, b"")
        if item.headers.get("expect", "").lower() == "100-continue" and self.task is None and not self.queue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        if len(self.current.body) + len(body) > MAX_BODY_BYTES:
            raise _Reject(413, b"Payload Too Large")
        self.current.body += body

    def on_message_complete(self) -> None:
        item = self.current
        assert item is not None
        item.keep_alive = self.parser.should_keep_alive()
        self.current = None
        self._enqueue(item)
        if not item.keep_alive:
            self._stop_reading()

    # -- request queue -------------------------------------------------------------------------------
    def _count(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > MAX_HEADER_BYTES:
            raise _Reject(431, b"Request Header Fields Too Large")

    def _arm(self, delay: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(delay, self._timed_out)

    def _timed_out(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _stop_reading(self) -> None:
        self.closing = True
        if self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True

    def _enqueue_reject(self, r: _Reject) -> None:
        item = _Item()
        item.reject = r
        item.keep_alive = False
        self._stop_reading()
        self._enqueue(item)

    def _enqueue(self, item: _Item) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.append(item)
        if len(self.queue) >= MAX_QUEUED and self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while self.queue and self.transport is not None and not self.transport.is_closing():
                item = self.queue.popleft()
                if self.reading_paused and not self.closing and len(self.queue) < 2:
                    self.transport.resume_reading()
                    self.reading_paused = False
                await self._serve(item)
                try:
                    await asyncio.wait_for(self.can_write.wait(), WRITE_TIMEOUT)
                except TimeoutError:
                    self.transport.abort()
                    return
                if not item.keep_alive:
                    self.transport.close()
                    return
        finally:
            self.task = None
        if self.transport is not None and not self.transport.is_closing():
            if self.closing and not self.queue:
                self.transport.close()
            elif self.current is None:
                self._arm(IDLE_TIMEOUT)

    async def _serve(self, item: _Item) -> None:
        assert self.transport is not None
        if item.reject is not None:
            r = item.reject
            body = r.body
            ctype = "text/plain" if body else None
            self.transport.write(_head(r.status, ctype, len(body), True, False) + body)
            return
        target = item.target.decode("latin-1")
        if not target.startswith("/"):
            # Envoy routes only origin-form targets to the admin; others find no route.
            self.transport.write(_head(404, None, 0, not item.keep_alive, False))
            return
        try:
            async with asyncio.timeout(HANDLER_TIMEOUT):
                resp = await self.server.router.dispatch(item.method, target, item.headers, bytes(item.body))
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            resp = Response(500, b"admin handler timed out\n", TEXT)
        except Exception:
            log.exception("admin handler failed for %s", target[:200])
            resp = Response(500, b"internal error\n", TEXT)
        head = _head(resp.status, resp.content_type, len(resp.body), not item.keep_alive, True)
        self.transport.write(head if item.method == "HEAD" else head + resp.body)
        if resp.after is not None:
            fire(resp.after)


class AdminServer:
    """The admin listener(s): `start` on a TCP address, `start_unix` on a pipe, `close` to stop."""

    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx
        self.router = Router(ctx)
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: set[_AdminConnection] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 = ephemeral); returns the bound port."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _AdminConnection(self), host, port, reuse_address=True)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def start_unix(self, path: str, mode: int | None = None) -> None:
        """Listen on a Unix socket (Envoy's admin `pipe` address; "@name" is abstract)."""
        loop = asyncio.get_running_loop()
        if path.startswith("@"):
            path = "\0" + path[1:]
        else:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)  # a stale socket from an earlier run
        server = await loop.create_unix_server(lambda: _AdminConnection(self), path)
        if mode is not None and not path.startswith("\0"):
            os.chmod(path, mode)
        self._servers.append(server)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()

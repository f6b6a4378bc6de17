"""A recording HTTP/1.1 upstream for tests: it writes down exactly what the proxy sent it and answers
as the test told it to.

Each `HttpUpstream` listens on a free loopback port and records every complete request: the request
line, the header list in order with the original case, the body bytes, and how the body was framed
(Content-Length, chunked, none).  Its answer comes from a programmable `Behaviour`: status, headers,
body, chunked or Content-Length or close-delimited framing, trailers, a delay before the head, closing
or resetting the connection before any header, or echoing the request back as JSON.

The servers run on a `LoopThread`, so synchronous tests drive them with plain sockets.  `Upstreams`
groups several named instances ("service1", "service2") on one loop, with one arrival counter so that
requests across instances can be ordered.

The parser here is deliberately simple and lenient: it reads what a proxy produces, and the thing under
test is the proxy, not this server."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Literal

from tests.support.loop_thread import LoopThread

Header = tuple[str, str]
_MAX_HEAD = 256 * 1024


@dataclass(frozen=True)
class Behaviour:
    """How an upstream answers one request."""

    status: int = 200
    reason: str = ""  # "" = the standard reason phrase
    headers: tuple[Header, ...] = ()
    body: bytes = b""
    # content-length: Content-Length header; chunked: Transfer-Encoding: chunked with `chunks`
    # (default: `body` as one chunk) and `trailers`; close: no length, the body ends at close.
    framing: Literal["content-length", "chunked", "close"] = "content-length"
    chunks: tuple[bytes, ...] = ()
    trailers: tuple[Header, ...] = ()
    delay: float = 0.0  # seconds to wait before the response head
    # respond: answer; close: FIN before any header; reset: RST before any header;
    # hang: never answer (wait until the peer goes away).
    before_headers: Literal["respond", "close", "reset", "hang"] = "respond"
    echo: bool = False  # body = JSON {method, target, headers, body} of the request
    close: bool = False  # send `connection: close` and close after this response
    continue_100: bool = True  # answer `Expect: 100-continue` with an interim 100 before the body
    raw: bytes = b""  # if set, written verbatim instead of a response (then closed if `close`)


OK = Behaviour()


@dataclass(frozen=True)
class RecordedRequest:
    upstream: str  # the name of the instance that received it
    request_line: bytes
    method: str
    target: str
    version: str
    headers: tuple[Header, ...]  # in order received, original case
    body: bytes
    framing: Literal["content-length", "chunked", "none"]
    trailers: tuple[Header, ...]
    connection: int  # serial number of the upstream connection it came on (per instance)
    arrival: int  # serial number across all instances of one `Upstreams`

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def header_names(self) -> list[str]:
        return [k for k, _ in self.headers]


class _Reject(Exception):
    """The bytes on the connection are not a request this server understands: close it."""


def _parse_head(head: bytes) -> tuple[bytes, str, str, str, tuple[Header, ...]]:
    lines = head.split(b"\r\n")
    request_line = lines[0]
    parts = request_line.decode("latin-1").split(" ")
    if len(parts) != 3:
        raise _Reject(f"bad request line {request_line!r}")
    headers: list[Header] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise _Reject(f"bad header line {line!r}")
        headers.append((name, value.strip(" \t")))
    return request_line, parts[0], parts[1], parts[2], tuple(headers)


def _values(headers: Iterable[Header], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, tuple[Header, ...]]:
    body = bytearray()
    for _ in range(1_000_000):  # bounded: a chunk per iteration
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    trailers: list[Header] = []
    for _ in range(1000):
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        name, _, value = line[:-2].decode("latin-1").partition(":")
        trailers.append((name, value.strip(" \t")))
    return bytes(body), tuple(trailers)


def _render_response(b: Behaviour, req: RecordedRequest, keep_alive: bool) -> bytes:
    body = b.body
    headers = list(b.headers)
    if b.echo:
        body = json.dumps(
            {
                "method": req.method,
                "target": req.target,
                "headers": [list(h) for h in req.headers],
                "body": req.body.decode("latin-1"),
            }
        ).encode()
        headers.append(("content-type", "application/json"))
    reason = b.reason or (HTTPStatus(b.status).phrase if b.status in HTTPStatus._value2member_map_ else "")
    head = f"HTTP/1.1 {b.status} {reason}\r\n"
    no_body = req.method == "HEAD" or b.status in (204, 304) or 100 <= b.status < 200
    if b.framing == "chunked":
        headers.append(("transfer-encoding", "chunked"))
    elif b.framing == "content-length" and b.status not in (204, 304) and not 100 <= b.status < 200:
        headers.append(("content-length", str(len(body))))
    if not keep_alive:
        headers.append(("connection", "close"))
    out = bytearray(head.encode("latin-1"))
    for k, v in headers:
        out += f"{k}: {v}\r\n".encode("latin-1")
    out += b"\r\n"
    if no_body:
        return bytes(out)
    if b.framing == "chunked":
        for chunk in b.chunks or ((body,) if body else ()):
            out += b"%x\r\n%s\r\n" % (len(chunk), chunk)
        out += b"0\r\n"
        for k, v in b.trailers:
            out += f"{k}: {v}\r\n".encode("latin-1")
        out += b"\r\n"
    else:
        out += body
    return bytes(out)


class HttpUpstream:
    """One named recording HTTP/1.1 server.  Use through `Upstreams`, or alone with your own loop."""

    def __init__(self, name: str, loop: LoopThread, arrivals: itertools.count[int], lock: threading.Lock):
        self.name = name
        self.host = "127.0.0.1"
        self.port = 0
        self._loop = loop
        self._arrivals = arrivals
        self._lock = lock
        self._cond = threading.Condition(lock)
        self._records: list[RecordedRequest] = []
        self._default = OK
        self._rules: list[tuple[str, Behaviour]] = []
        self._connections = itertools.count(1)
        self.connections_accepted = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- programming ---------------------------------------------------------------------------
    def behave(self, behaviour: Behaviour) -> None:
        """Answer every request (not matched by an `on` rule) with `behaviour`."""
        with self._lock:
            self._default = behaviour

    def on(self, target_prefix: str, behaviour: Behaviour) -> None:
        """Answer requests whose target starts with `target_prefix` with `behaviour` (first rule wins)."""
        with self._lock:
            self._rules.append((target_prefix, behaviour))

    def reset(self) -> None:
        """Forget the records and rules and go back to answering 200 with an empty body."""
        with self._lock:
            self._records.clear()
            self._rules.clear()
            self._default = OK

    def clear(self) -> None:
        """Forget the records only (the behaviour stays)."""
        with self._lock:
            self._records.clear()

    # -- reading the records -------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least `count` requests were recorded (or `timeout`); return them all."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._records) >= count, timeout)
            return list(self._records)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- serving ---------------------------------------------------------------------------------
    def start(self, port: int = 0) -> None:
        async def _start() -> None:
            self._server = await asyncio.start_server(self._serve, self.host, port, limit=_MAX_HEAD)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.call(_start())

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        self._loop.call(_stop())

    def _choose(self, target: str) -> Behaviour:
        with self._lock:
            for prefix, b in self._rules:
                if target.startswith(prefix):
                    return b
            return self._default

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = next(self._connections)
        self.connections_accepted += 1
        try:
            for _ in range(100_000):  # bounded: one request per iteration
                if not await self._one(conn, reader, writer):
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, _Reject, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _one(self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the peer closed between requests
        request_line, method, target, version, headers = _parse_head(head[:-4])
        behaviour = self._choose(target)
        if behaviour.continue_100 and any(v.lower() == "100-continue" for v in _values(headers, "expect")):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        framing: Literal["content-length", "chunked", "none"] = "none"
        trailers: tuple[Header, ...] = ()
        if any("chunked" in v.lower() for v in _values(headers, "transfer-encoding")):
            framing = "chunked"
            body, trailers = await _read_chunked(reader)
        elif lengths := _values(headers, "content-length"):
            framing = "content-length"
            body = await reader.readexactly(int(lengths[0]))
        else:
            body = b""
        with self._cond:
            record = RecordedRequest(
                self.name,
                request_line,
                method,
                target,
                version,
                headers,
                body,
                framing,
                trailers,
                conn,
                next(self._arrivals),
            )
            self._records.append(record)
            self._cond.notify_all()
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if behaviour.before_headers == "close":
            return False
        if behaviour.before_headers == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if behaviour.before_headers == "hang":
            await reader.read()  # until the proxy gives up and closes
            return False
        if behaviour.raw:
            writer.write(behaviour.raw)
            await writer.drain()
            return not behaviour.close
        connection = ",".join(_values(headers, "connection")).lower()
        keep_alive = not (
            behaviour.close or behaviour.framing == "close" or "close" in connection or version == "HTTP/1.0"
        )
        writer.write(_render_response(behaviour, record, keep_alive))
        await writer.drain()
        return keep_alive


class Upstreams:
    """Several named `HttpUpstream`s on one background loop: `ups["service1"].port`."""

    def __init__(self, names: Iterable[str] = ("service1",)) -> None:
        self._loop = LoopThread("upstreams")
        lock = threading.Lock()
        arrivals = itertools.count(1)
        self._by_name: dict[str, HttpUpstream] = {}
        try:
            for name in names:
                up = HttpUpstream(name, self._loop, arrivals, lock)
                up.start()
                self._by_name[name] = up
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name: str) -> HttpUpstream:
        return self._by_name[name]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_name.values())

    @property
    def ports(self) -> dict[str, int]:
        """`{"<name>_port": port}` for each instance: ready to feed `tests.support.proxy.render`."""
        return {f"{name}_port": up.port for name, up in self._by_name.items()}

    def reset(self) -> None:
        for up in self._by_name.values():
            up.reset()

    def clear(self) -> None:
        for up in self._by_name.values():
            up.clear()

    def requests(self) -> list[RecordedRequest]:
        """Every recorded request of every instance, in arrival order."""
        out = [r for up in self._by_name.values() for r in up.requests]
        return sorted(out, key=lambda r: r.arrival)

    def close(self) -> None:
        for up in self._by_name.values():
            up.stop()
        self._loop.close()

    def __enter__(self) -> Upstreams:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["OK", "Behaviour", "HttpUpstream", "RecordedRequest", "Upstreams"]

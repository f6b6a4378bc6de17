"""A tiny raw HTTP/1.1 client for the admin tests: bytes in, parsed responses out, bounded waits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

TIMEOUT = 3.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


class Conn:
    # Every connection opened in a test, closed by the autouse fixture in conftest.py even when
    # the test fails half way.
    opened: list[Conn] = []

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        Conn.opened.append(self)

    @classmethod
    async def open(cls, port: int = 0, path: str = "") -> Conn:
        if path:
            r, w = await asyncio.open_unix_connection(path)
        else:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, head_only: bool = False) -> Reply:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT) if length else b""
        return Reply(status, headers, body)

    async def request(self, method: str, target: str, body: bytes = b"", extra: str = "") -> Reply:
        head = f"{method} {target} HTTP/1.1\r\nHost: admin\r\n{extra}"
        if body or method == "POST":
            head += f"Content-Length: {len(body)}\r\n"
        await self.send(head.encode() + b"\r\n" + body)
        return await self.reply(head_only=method == "HEAD")

    async def closed(self) -> bool:
        """True when the server closes the connection (EOF) within the timeout."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), TIMEOUT)
        except (ConnectionError, TimeoutError):
            return False
        return rest == b""

    async def close(self) -> None:
        if self.writer.is_closing():
            return
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)
        except (ConnectionError, TimeoutError):
            pass


async def get(port: int, target: str, method: str = "GET", body: bytes = b"") -> Reply:
    conn = await Conn.open(port)
    try:
        return await conn.request(method, target, body)
    finally:
        await conn.close()

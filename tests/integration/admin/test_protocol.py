"""The admin connection over a recording FakeTransport: read-ahead bounds and write back-pressure."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.admin import server as server_mod
from sidecar.admin.server import AdminServer, _AdminConnection
from tests.integration.admin.fake_context import FakeAdminContext


class FakeTransport:
    def __init__(self, protocol: _AdminConnection) -> None:
        self.protocol = protocol
        self.data = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(None)

    def abort(self) -> None:
        self.aborted = True
        self.close()


def _connect() -> tuple[_AdminConnection, FakeTransport]:
    conn = _AdminConnection(AdminServer(FakeAdminContext()))
    transport = FakeTransport(conn)
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


async def _settle(cond: object, limit: int = 200) -> None:
    for _ in range(limit):
        if callable(cond) and cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_pipelined_requests_pause_reading_then_resume() -> None:
    conn, transport = _connect()
    conn.data_received(b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n" * 12)
    assert transport.reading is False  # read-ahead is bounded
    await _settle(lambda: transport.data.count(b"LIVE\n") == 12)
    assert transport.reading is True and not transport.closed
    transport.close()


async def test_stalled_reader_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "WRITE_TIMEOUT", 0.05)
    conn, transport = _connect()
    conn.pause_writing()  # the client stopped reading
    conn.data_received(b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\nGET /ready HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.wait_for(_wait_closed(transport), 2)
    assert transport.aborted and transport.data.count(b"LIVE\n") == 1


async def _wait_closed(transport: FakeTransport) -> None:
    while not transport.closed:
        await asyncio.sleep(0.01)


async def test_resume_writing_continues() -> None:
    conn, transport = _connect()
    conn.pause_writing()
    conn.data_received(b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\nGET /ready HTTP/1.1\r\nHost: a\r\n\r\n")
    await _settle(lambda: transport.data.count(b"LIVE\n") == 1)
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport.data.count(b"LIVE\n") == 1  # waits while the client is not reading
    conn.resume_writing()
    await _settle(lambda: transport.data.count(b"LIVE\n") == 2)
    transport.close()


async def test_eof_after_request_answers_then_closes() -> None:
    conn, transport = _connect()
    conn.data_received(b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.eof_received() is True
    await _settle(lambda: transport.closed)
    assert transport.data.startswith(b"HTTP/1.1 200 OK\r\n") and transport.data.endswith(b"LIVE\n")

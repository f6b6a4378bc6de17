"""A tcp_proxy listener (envoy.filters.network.tcp_proxy): bytes relayed both ways unchanged, and a
FIN in either direction passed on as a FIN (half-close), not as a full close."""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential, Target
from tests.support.tcp_upstream import TcpBehaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "tcp.yaml"
UPSTREAMS = ()
TCP_UPSTREAMS = ("tcp_echo",)


def _read_exact(c, n: int) -> bytes:  # type: ignore[no-untyped-def]
    out = b""
    for _ in range(1000):
        if len(out) >= n:
            break
        chunk = c.read_some(5.0)
        if not chunk:
            break
        out += chunk
    return out


def test_bytes_relayed_both_ways(diff: Differential) -> None:
    payload = bytes(range(256)) * 1000  # 256 KB, every byte value

    def scenario(t: Target) -> list[object]:
        t.tcp["tcp_echo"].reset()
        with t.client() as c:
            c.send(b"hello")
            first = _read_exact(c, 5)
            c.send(payload)
            echoed = _read_exact(c, len(payload))
        return [first, echoed == payload]

    assert diff.run(scenario) == [b"hello", True]


def test_client_half_close_reaches_upstream_and_reply_still_flows(diff: Differential) -> None:
    def scenario(t: Target) -> list[object]:
        up = t.tcp["tcp_echo"]
        up.reset()
        up.behave(TcpBehaviour(echo=True, after_eof=b"bye"))
        with t.client() as c:
            c.send(b"ping")
            c.shutdown_write()
            got = c.read_until_close(5.0)  # "ping" echoed, then "bye" after our FIN, then FIN
            reset = c.reset
        up.wait(lambda conns: conns and conns[-1].got_eof, 5.0)
        conn = up.connections[-1]
        return [got, reset, bytes(conn.received), conn.got_eof]

    assert diff.run(scenario) == [b"pingbye", False, b"ping", True]


def test_upstream_half_close_reaches_client_and_client_can_still_send(diff: Differential) -> None:
    def scenario(t: Target) -> list[object]:
        up = t.tcp["tcp_echo"]
        up.reset()
        up.behave(TcpBehaviour(greeting=b"hi", half_close_first=True))
        with t.client() as c:
            greeting = c.read_until_close(5.0)  # "hi" then the upstream's FIN
            reset = c.reset
            c.send(b"late data")
            up.wait(lambda conns: conns and bytes(conns[-1].received) == b"late data", 5.0)
            c.shutdown_write()
            up.wait(lambda conns: conns and conns[-1].got_eof, 5.0)
        conn = up.connections[-1]
        return [greeting, reset, bytes(conn.received), conn.got_eof]

    assert diff.run(scenario) == [b"hi", False, b"late data", True]


def test_unreachable_upstream_closes_the_client(diff: Differential) -> None:
    def scenario(t: Target) -> list[object]:
        with t.client("refused_port") as c:
            return [c.read_until_close(5.0), c.reset]

    assert diff.run(scenario) == [b"", False]

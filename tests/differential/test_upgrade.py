"""HTTP/1.1 Upgrade (websocket) through upgrade_configs, against Envoy 1.40 (Istio enables websocket on
every HTTP connection manager):

- the request goes upstream with Connection/Upgrade verbatim (and the route's expected timeout);
- a 101 comes back with its Connection/Upgrade headers, date/server added, no framing and no
  x-envoy-upstream-service-time; then bytes are relayed both ways (early data too), the route timeout
  does not apply, and a close on either side closes the other;
- a non-101 answer is a normal response with `connection: close`, then the connection closes (an
  upstream that cannot be reached: the usual 503 local reply, then close);
- without upgrade_configs, or with the route's entry disabled, the upgrade is a 403 (empty body,
  closed) and nothing reaches the upstream; a route's entry enables it without the HCM's."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.differential.harness import Differential, Target

pytestmark = pytest.mark.differential
BOOTSTRAP = "istio_standard.yaml"
UPSTREAMS = ("service1",)
HANDSHAKE = (
    b"GET %s HTTP/1.1\r\nHost: ws.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


class WsUpstream:
    """A websocket-ish upstream on one port: 101 then echo (`/ws400`: a 400; `/wsclose`: closes
    after the first chunk echoed).  Records each request head and whether the peer closed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.heads: list[bytes] = []
        self.peer_closed = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        for _ in range(200):  # bounded: 40 s of 0.2 s accept waits
            if self.stop.is_set():
                return
            try:
                c, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        c.settimeout(5.0)
        buf = b""
        try:
            for _ in range(100):
                if b"\r\n\r\n" in buf:
                    break
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, rest = buf.split(b"\r\n\r\n", 1)
            self.heads.append(head)
            if head.startswith(b"GET /ws400"):
                c.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\nno!")
                c.recv(10)
                return
            c.sendall(SWITCH)
            if rest:
                c.sendall(rest)
            for _ in range(100_000):  # bounded: one read per pass
                d = c.recv(65536)
                if not d:
                    self.peer_closed.set()
                    return
                c.sendall(d)
                if head.startswith(b"GET /wsclose"):
                    return
        except OSError:
            self.peer_closed.set()
        finally:
            c.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2.0)
        self.sock.close()


@contextmanager
def ws_upstream(t: Target) -> Iterator[WsUpstream]:
    up = WsUpstream(t.port("ws_port"))
    try:
        yield up
    finally:
        up.close()


def _read_head(c: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    for _ in range(100):
        if b"\r\n\r\n" in buf:
            break
        d = c.recv(65536)
        if not d:
            break
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _norm_head(head: bytes) -> list[str]:
    """The status line, then the header lines sorted, date's value masked."""
    lines = head.decode("latin-1").split("\r\n")
    hs = sorted("date: <date>" if h.lower().startswith("date:") else h for h in lines[1:])
    return [lines[0], *hs]


def _read_exactly(c: socket.socket, n: int) -> bytes:
    buf = b""
    for _ in range(100_000):
        if len(buf) >= n:
            break
        d = c.recv(65536)
        if not d:
            break
        buf += d
    return buf


def _closed(c: socket.socket, wait: float = 3.0) -> bool:
    c.settimeout(wait)
    try:
        return c.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _upstream_head(up: WsUpstream) -> list[str]:
    lines = up.heads[0].decode("latin-1").split("\r\n") if up.heads else []
    keep = ("connection:", "upgrade:", "sec-websocket", "x-envoy-expected", "content-length", "transfer-enc")
    return [lines[0], *sorted(h.lower() for h in lines[1:] if h.lower().startswith(keep))] if lines else []


def _session(t: Target, listener: str, path: bytes, early: bytes = b"") -> dict[str, object]:
    with ws_upstream(t) as up, socket.create_connection(("127.0.0.1", t.port(listener)), timeout=5) as c:
        c.sendall(HANDSHAKE % path + early)
        head, rest = _read_head(c)
        out: dict[str, object] = {"head": _norm_head(head)}
        if head.startswith(b"HTTP/1.1 101"):
            out["early"] = rest + _read_exactly(c, len(early) - len(rest)) if early else rest
            c.sendall(b"hello")
            out["echo"] = _read_exactly(c, 5)
            if path == b"/ws":
                time.sleep(0.5)  # past the route's 0.3 s timeout: it does not apply to a tunnel
                c.sendall(b"again")
                out["later"] = _read_exactly(c, 5)
                c.close()
                out["upstream_saw_close"] = up.peer_closed.wait(3.0)
            else:
                out["closed"] = _closed(c)
        else:
            out["body"] = rest
            out["closed"] = _closed(c)
        out["upstream"] = _upstream_head(up)
        return out


def test_websocket_relay(diff: Differential) -> None:
    got = diff.run(lambda t: _session(t, "istio_port", b"/ws", early=b"early"))
    assert got["head"] == [
        "HTTP/1.1 101 Switching Protocols",
        "connection: Upgrade",
        "date: <date>",
        "sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        "server: envoy",
        "upgrade: websocket",
        # HCM tracing + Route.decorator on an inbound (Ingress) listener: the operation goes back.
        "x-envoy-decorator-operation: ws.default.svc.cluster.local:80/*",
    ]
    assert (got["early"], got["echo"], got["later"], got["upstream_saw_close"]) == (
        b"early",
        b"hello",
        b"again",
        True,
    )
    assert got["upstream"] == [
        "GET /ws HTTP/1.1",
        "connection: keep-alive, upgrade",
        "sec-websocket-key: dghlihnhbxbszsbub25jzq==",
        "sec-websocket-version: 13",
        "upgrade: websocket",
        "x-envoy-expected-rq-timeout-ms: 300",
    ]


def test_upstream_close_closes_the_client(diff: Differential) -> None:
    got = diff.run(lambda t: _session(t, "istio_port", b"/wsclose"))
    assert (got["echo"], got["closed"]) == (b"hello", True)


def test_non_101_is_a_normal_response_then_close(diff: Differential) -> None:
    got = diff.run(lambda t: _session(t, "istio_port", b"/ws400"))
    assert got["head"] == [
        "HTTP/1.1 400 Bad Request",
        "connection: close",
        "content-length: 3",
        "date: <date>",
        "server: envoy",
        "x-envoy-decorator-operation: ws.default.svc.cluster.local:80/*",
    ]
    assert (got["body"], got["closed"]) == (b"no!", True)


@pytest.mark.parametrize(
    ("listener", "path"),
    [("istio_port", b"/nows"), ("plain_port", b"/ws")],
    ids=["route-disabled", "no-config"],
)
def test_refused_upgrade_is_403(diff: Differential, listener: str, path: bytes) -> None:
    got = diff.run(lambda t: _session(t, listener, path))
    assert got["head"] == [
        "HTTP/1.1 403 Forbidden",
        "connection: close",
        "content-length: 0",
        "date: <date>",
        "server: envoy",
    ]
    assert (got["closed"], got["upstream"]) == (True, [])


def test_route_enables_upgrade_without_the_connection_managers(diff: Differential) -> None:
    got = diff.run(lambda t: _session(t, "plain_port", b"/routews"))
    assert got["head"][0] == "HTTP/1.1 101 Switching Protocols"  # type: ignore[index]
    assert got["echo"] == b"hello"


def _big_echo(t: Target) -> tuple[int, bool]:
    payload = bytes(range(256)) * 16384  # 4 MiB: more than every buffer on the way
    with ws_upstream(t), socket.create_connection(("127.0.0.1", t.port("istio_port")), timeout=10) as c:
        c.sendall(HANDSHAKE % b"/ws")
        _, rest = _read_head(c)
        sender = threading.Thread(target=c.sendall, args=(payload,), daemon=True)
        sender.start()
        got = rest + _read_exactly(c, len(payload) - len(rest))
        sender.join(10)
        return len(got), got == payload


def test_large_payload_is_relayed_both_ways(diff: Differential) -> None:
    assert diff.run(_big_echo) == (4 * 1024 * 1024, True)


def _idle(t: Target) -> tuple[str, bool]:
    with ws_upstream(t), socket.create_connection(("127.0.0.1", t.port("plain_port")), timeout=5) as c:
        c.sendall(HANDSHAKE % b"/routews")
        head, _ = _read_head(c)
        return head.split(b"\r\n")[0].decode(), _closed(c, 4.0)


def test_stream_idle_timeout_closes_an_idle_tunnel(diff: Differential) -> None:
    assert diff.run(_idle) == ("HTTP/1.1 101 Switching Protocols", True)


def _no_upstream(t: Target) -> dict[str, object]:
    with socket.create_connection(("127.0.0.1", t.port("istio_port")), timeout=5) as c:
        c.sendall(HANDSHAKE % b"/ws")
        head, rest = _read_head(c)
        return {"head": _norm_head(head), "body": rest, "closed": _closed(c)}


def test_upstream_connect_failure_is_a_local_reply_then_close(diff: Differential) -> None:
    got = diff.run(_no_upstream)
    assert got["head"][0] == "HTTP/1.1 503 Service Unavailable"  # type: ignore[index]
    assert "connection: close" in got["head"]  # type: ignore[operator]
    assert got["closed"] is True

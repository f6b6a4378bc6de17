"""A socket-free harness for the downstream HTTP/1.1 connection (`Http1ServerConnection`).

- `FakeTransport` records what the connection writes and how it closes or pauses (uvicorn's
  MockTransport); `FakeLoop` gives `time()`/`call_later()` without running anything.
- `runtime("direct")` is a real `HcmRuntime` whose route config (translated by
  `translate_route_configuration`) answers every path with a direct_response; `runtime("upstream")`
  forwards to a cluster whose hosts' pools are replaced by `FakeUpstream`: an h11 server per
  upstream request, which answers once the forwarded request is complete and echoes what it got.
- `Wire` drives one connection the way the event loop would: bytes in, upstream events pumped,
  `connection_lost` after a close, nothing delivered after the transport closed or while reading
  is paused.
- `read_responses` is a strict HTTP/1.1 response reader: status line, token header names, one
  framing (content-length or chunked), and reports the bytes that do not make a whole response."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import h11
import yaml
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from sidecar.http.codec_h1 import valid_header_name, valid_header_value
from sidecar.http.conn_manager import HcmRuntime
from sidecar.http.filters.router import Router
from sidecar.http.protocol import Http1ServerConnection
from sidecar.model.cluster import Cluster
from sidecar.model.endpoint import Endpoint, SocketAddress
from sidecar.model.listener import HttpConnectionManager
from sidecar.observe.stats import Stats
from sidecar.translate.rds import translate_route_configuration
from sidecar.upstream.cluster_manager import ClusterManager

DIRECT_BODY = b"hello from the route"
CLUSTER = "svc"

_ROUTES = {
    "direct": f"""
name: local
virtual_hosts:
- name: local
  domains: ["*"]
  routes:
  - match: {{prefix: "/"}}
    direct_response: {{status: 200, body: {{inline_string: "{DIRECT_BODY.decode()}"}}}}
""",
    "upstream": f"""
name: fwd
virtual_hosts:
- name: fwd
  domains: ["*"]
  routes:
  - match: {{prefix: "/"}}
    route: {{cluster: {CLUSTER}}}
""",
}


# -- loop and transport ----------------------------------------------------------------------------
class FakeTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """`time()` and `call_later()`; timers are recorded, never run (tests assert no timing)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., object], *args: object) -> FakeTimer:
        t = FakeTimer(self.now + delay, lambda: callback(*args))
        self.timers.append(t)
        return t

    def call_at(self, when: float, callback: Callable[..., object], *args: object) -> FakeTimer:
        t = FakeTimer(when, lambda: callback(*args))
        self.timers.append(t)
        return t

    def create_task(self, coro: Any) -> None:
        coro.close()
        raise AssertionError("the harness stubs every pool: nothing should start a task")


class FakeTransport:
    def __init__(
        self, peer: tuple[str, int] = ("10.1.2.3", 40000), sock: tuple[str, int] = ("10.0.0.9", 15006)
    ) -> None:
        self.extra = {"peername": peer, "sockname": sock}
        self.writes: list[bytes] = []
        self.writes_after_close: list[bytes] = []
        self.closing = False
        self.aborted = False
        self.reading = True
        self.pauses = 0
        self.resumes = 0
        self.limits: tuple[int | None, int | None] | None = None

    def write(self, data: bytes) -> None:
        assert isinstance(data, bytes | bytearray | memoryview), type(data)
        (self.writes_after_close if self.closing else self.writes).append(bytes(data))

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True
        self.resumes += 1

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


# -- upstream ----------------------------------------------------------------------------------------
class FakeUpstreamConn:
    """What the router sees of a pooled upstream connection; an h11 server reads what it sends."""

    def __init__(self, up: FakeUpstream, handler: Any) -> None:
        self.up = up
        self.pool = up
        self.handler: Any = handler
        self.head_request = False
        self.server = h11.Connection(h11.SERVER)
        self.sent = bytearray()
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.done = False
        self.reading = True

    # the router's side
    def send(self, data: bytes) -> None:
        assert not self.done, "the router wrote to an upstream request that was over"
        self.sent += data
        self.server.receive_data(bytes(data))

    def detach(self) -> None:
        self.handler = None
        self.done = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    # the upstream's side
    def step(self) -> bool:
        """Read what was sent; answer once the request is complete.  True when something happened."""
        if self.done or self.handler is None:
            return False
        while True:
            try:
                ev = self.server.next_event()
            except h11.RemoteProtocolError as exc:
                self.up.errors.append(f"{exc!r} in {bytes(self.sent)!r}")
                self.done = True
                return True
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return False
            if isinstance(ev, h11.Request):
                self.request = ev
            elif isinstance(ev, h11.Data):
                self.body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                self._respond()
                return True

    def _respond(self) -> None:
        req = self.request
        assert req is not None
        seq = len(self.up.received)
        self.up.received.append((req.method, req.target, list(req.headers), bytes(self.body)))
        echo = b"%d %s %s %d" % (seq, req.method, req.target, len(self.body))
        h = self.handler
        self.done = True
        down = h.downstream
        down.cork()  # as Http1UpstreamConnection.data_received does around one upstream read
        try:
            if len(req.target) % 2:
                h.on_upstream_headers(200, [(b"transfer-encoding", b"chunked"), (b"x-echo", echo)])
                if self.head_request:
                    h.on_upstream_end()
                    return
                h.on_upstream_body(echo[:3])
                h.on_upstream_body(echo[3:])
            else:
                n = b"%d" % len(echo)
                h.on_upstream_headers(200, [(b"content-length", n), (b"x-echo", echo)])
                if self.head_request:
                    h.on_upstream_end()
                    return
                h.on_upstream_body(echo)
            h.on_upstream_end()
        finally:
            down.uncork()


class FakeUpstream:
    """Stands in for every host's Http1Pool: `acquire` is answered on the next `pump`."""

    def __init__(self) -> None:
        self.waiting: list[Any] = []
        self.conns: list[FakeUpstreamConn] = []
        self.received: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []
        self.errors: list[str] = []
        self.released: list[FakeUpstreamConn] = []

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def acquire(self, handler: Any) -> None:
        self.waiting.append(handler)

    def cancel_wait(self, handler: Any) -> None:
        """As Http1Pool.cancel_wait: a request that went away is not served later."""
        if handler in self.waiting:
            self.waiting.remove(handler)

    def release(self, conn: FakeUpstreamConn) -> None:
        self.released.append(conn)

    def close(self) -> None:
        return None

    def pump(self) -> bool:
        progress = False
        while self.waiting:
            h = self.waiting.pop(0)
            conn = FakeUpstreamConn(self, h)
            self.conns.append(conn)
            h.on_upstream_ready(conn)
            progress = True
        for c in self.conns:
            if c.step():
                progress = True
        return progress


# -- the runtime --------------------------------------------------------------------------------------
def route_config(kind: str) -> Any:
    pb = json_format.ParseDict(yaml.safe_load(_ROUTES[kind]), route_pb2.RouteConfiguration())
    return translate_route_configuration(pb, "route_config")


@cache
def _stats() -> Stats:
    return Stats(max_slots=4096)


def runtime(kind: str = "direct", **hcm: Any) -> tuple[HcmRuntime, FakeUpstream]:
    """A real HcmRuntime (router filter, real route table) on a fake loop; `hcm` overrides fields
    of the HttpConnectionManager model (max_request_headers_kb, accept_http_10, ...)."""
    loop = FakeLoop()
    stats = _stats()
    cm = ClusterManager(stats, loop)  # type: ignore[arg-type]
    up = FakeUpstream()
    if kind == "upstream":
        cm.update({CLUSTER: Cluster(name=CLUSTER, endpoints=(Endpoint(SocketAddress("127.0.0.1", 9)),))})
        state = cm.get(CLUSTER)
        assert state is not None
        for host in state.hosts:
            host.pool = up  # type: ignore[assignment]
    cfg = HttpConnectionManager(stat_prefix=f"t_{kind}", route_config=route_config(kind), **hcm)
    return HcmRuntime(cfg, cm, stats, loop, (Router,), 1 << 20), up


class RecordingConnection(Http1ServerConnection):
    """The real connection, also noting each request head the codec accepted (for the reader)."""

    def __init__(self, rt: HcmRuntime) -> None:
        self.methods: list[bytes] = []
        self.completed = 0
        super().__init__(rt)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()  # a refused head raises: only accepted heads are noted
        self.methods.append(self.parser.get_method())

    def on_message_complete(self) -> None:
        if self.parsing is not None:
            self.completed += 1
        super().on_message_complete()


class Wire:
    """One downstream connection driven as the loop would drive it."""

    def __init__(self, rt: HcmRuntime, up: FakeUpstream | None = None) -> None:
        self.rt = rt
        self.up = up
        self.t = FakeTransport()
        self.conn = RecordingConnection(rt)
        self.conn.connection_made(self.t)  # type: ignore[arg-type]
        self.backlog: list[bytes] = []
        self.lost = False
        self.undelivered = 0

    def feed(self, *chunks: bytes) -> Wire:
        for c in chunks:
            if self.t.closing:
                self.undelivered += len(c)  # a closed transport reads nothing more
            elif not self.t.reading:
                self.backlog.append(c)
            else:
                self.conn.data_received(c)
                self.pump()
        return self

    def pump(self) -> None:
        for _ in range(1000):
            progress = self.up.pump() if self.up is not None else False
            if self.t.reading and self.backlog and not self.t.closing:
                self.conn.data_received(self.backlog.pop(0))
                progress = True
            if not progress:
                break
        else:
            raise AssertionError("upstream pump did not settle")
        if self.t.closing and not self.lost:
            self.lost = True
            self.conn.connection_lost(None)

    @property
    def data(self) -> bytes:
        return self.t.data


# -- a strict response reader ----------------------------------------------------------------------
_STATUS = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9]) ([\t !-~\x80-\xff]*)")


class BadWire(AssertionError):
    """The connection wrote something that is not a valid HTTP/1.1 response stream."""


@dataclass
class WireResponse:
    version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    framing: str = "content-length"
    raw: bytes = field(default=b"", repr=False)

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def closes(self) -> bool:
        return self.header(b"connection") == b"close"


def _chunked(data: bytes, pos: int) -> tuple[bytes, int] | None:
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = data[pos:eol]
        if not re.fullmatch(rb"[0-9a-f]+", size_text):
            raise BadWire(f"bad chunk size line {size_text!r}")
        size = int(size_text, 16)
        pos = eol + 2
        if size == 0:
            if data[pos : pos + 2] != b"\r\n":
                if len(data) < pos + 2:
                    return None
                raise BadWire("trailers or junk after the last chunk")
            return bytes(body), pos + 2
        if len(data) < pos + size + 2:
            return None
        body += data[pos : pos + size]
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise BadWire("chunk not followed by CRLF")
        pos += size + 2


def read_responses(data: bytes, methods: Sequence[bytes] = ()) -> tuple[list[WireResponse], bytes]:
    """Responses in `data`, and the bytes left that do not make a complete one.  `methods[i]` is
    the method of the i-th request (HEAD responses have no body); interim (1xx) responses don't
    count as answers."""
    out: list[WireResponse] = []
    pos = 0
    finals = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return out, data[pos:]
        lines = data[pos:end].split(b"\r\n")
        m = _STATUS.fullmatch(lines[0])
        if m is None:
            raise BadWire(f"bad status line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b": ")
            if not sep or not valid_header_name(name) or not valid_header_value(value):
                raise BadWire(f"bad header line {line!r}")
            if name != name.lower():
                raise BadWire(f"header name not lowercase: {name!r}")
            headers.append((name, value))
        r = WireResponse(b"1." + m.group(1), int(m.group(2)), m.group(3), headers)
        body_at = end + 4
        lengths = [v for k, v in headers if k == b"content-length"]
        te = [v for k, v in headers if k == b"transfer-encoding"]
        if len(lengths) > 1 or (lengths and te) or len(te) > 1:
            raise BadWire(f"conflicting framing in {headers!r}")
        if r.status < 200:
            if lengths or te:
                raise BadWire("framing headers on an interim response")
            r.framing = "none"
            r.raw = data[pos:body_at]
            out.append(r)
            pos = body_at
            continue
        method = methods[finals] if finals < len(methods) else b"GET"
        if method == b"HEAD" or r.status in (204, 304):
            r.framing = "none"
            new_pos = body_at
        elif te:
            if te[0] != b"chunked":
                raise BadWire(f"transfer-encoding {te[0]!r}")
            got = _chunked(data, body_at)
            if got is None:
                return out, data[pos:]
            r.body, new_pos = got
            r.framing = "chunked"
        elif lengths:
            if not lengths[0].isdigit():
                raise BadWire(f"content-length {lengths[0]!r}")
            new_pos = body_at + int(lengths[0])
            if new_pos > len(data):
                return out, data[pos:]
            r.body = data[body_at:new_pos]
        else:
            r.framing = "close"  # close-delimited: everything up to the end
            new_pos = len(data)
            r.body = data[body_at:]
        r.raw = data[pos:new_pos]
        out.append(r)
        finals += 1
        pos = new_pos
    return out, b""


def normalize(data: bytes) -> bytes:
    """Written bytes with the values that vary between runs masked."""
    return re.sub(rb"(?m)^(date|x-envoy-upstream-service-time): [^\r]*", rb"\1: *", data)

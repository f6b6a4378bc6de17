"""The downstream HTTP/1.1 connection: an asyncio.Protocol around llhttp (httptools, strict mode).

It moves bytes and nothing else: parser callbacks become `RequestHead`s and body chunks handed to a
`Stream` (http/conn_manager.py); responses are written in request order (pipelined requests wait
their turn, RFC 9112 section 9.3.2); read/write pausing is passed through for backpressure; codec
errors become Envoy's local replies and a close."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

import httptools

from sidecar.http import local_reply, upgrade
from sidecar.http.codec_h1 import chunked_only, status_for_parse_error
from sidecar.http.conn_manager import HcmRuntime, Stream
from sidecar.http.events import Headers, RequestHead
from sidecar.http.stream_timers import StreamTimers
from sidecar.model.listener import HeadersWithUnderscoresAction, ServerHeaderTransformation

_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _EXPECT, _UPGRADE = range(5)
# Headers the codec must look at; every other header is appended as it comes.
_SPECIAL = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
}


_ERROR_BODIES = {501: local_reply.NOT_IMPLEMENTED, 426: local_reply.UPGRADE_REQUIRED}


class _Stop(Exception):
    """Raised in a parser callback to stop reading: the connection is closing (Envoy reads no
    request after one it answers with `connection: close`)."""


class _CodecError(Exception):
    def __init__(self, status: int, body: bytes | None) -> None:
        self.status = status
        self.body = body


class Http1ServerConnection(asyncio.Protocol):
    __slots__ = (
        "_authority",
        "_cl_count",
        "_cl_zero",
        "_expect",
        "_h2c_body",
        "_header_bytes",
        "_headers",
        "_host_seen",
        "_nheaders",
        "_pending_error",
        "_raw_left",
        "_raw_stream",
        "_te",
        "_upgrade",
        "_upgrade_refused",
        "_url",
        "active",
        "body_done",
        "closed",
        "corked",
        "draining",
        "head_done",
        "idle_timer",
        "last_active",
        "last_io",
        "local_addr",
        "local_ip",
        "msg_begin",
        "owner",
        "parser",
        "parsing",
        "peer_addr",
        "peer_identity",
        "peer_ip",
        "queue",
        "read_paused",
        "requested_server_name",
        "rt",
        "stop_after",
        "timers",
        "transport",
        "write_paused",
    )

    def __init__(self, rt: HcmRuntime, owner: object = None) -> None:
        self.rt = rt
        self.owner = owner  # the listener's connection set (for drain), or None
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.active: Stream | None = None
        self.parsing: Stream | None = None
        self.queue: deque[Stream] = deque()
        self.closed = False
        self.corked: list[bytes] | None = None
        self.draining = False
        # Set by the TLS accept path (listener/accept.py) for RBAC and logs: the peer certificate's
        # identity (sidecar.tls.identity.PeerIdentity) and the SNI the client asked for.
        self.peer_identity: object = None
        self.requested_server_name: str | None = None
        self.read_paused = False
        self.write_paused = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self.last_active = 0.0
        self.last_io = 0.0
        self.timers: StreamTimers | None = None
        self.msg_begin = 0.0
        self.head_done = self.body_done = False
        self.peer_ip = b""
        self.peer_addr = b""
        self.local_ip = b""
        self.local_addr = b""
        self._url = b""
        self._headers: Headers = []
        self._authority = b""
        self._header_bytes = 0
        self._nheaders = 0
        self._expect = False
        self._cl_count = 0
        self._cl_zero = False
        self._te = False
        self._upgrade = b""
        self._upgrade_refused = False
        self._pending_error: _CodecError | None = None
        self._host_seen = False
        self._h2c_body = 0
        self._raw_left = 0
        self._raw_stream: Stream | None = None
        self.stop_after = False

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses (hence cast, not isinstance).
        t = self.transport = cast(asyncio.Transport, transport)
        limit = self.rt.buffer_limit
        t.set_write_buffer_limits(high=limit, low=limit // 2)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_ip = str(peer[0]).encode()
            self.peer_addr = b"%s:%d" % (self.peer_ip, peer[1]) if ":" not in peer[0] else b"[%s]:%d" % (self.peer_ip, peer[1])
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple):
            self.local_ip = str(local[0]).encode()
            self.local_addr = b"%s:%d" % (self.local_ip, local[1])
        st = self.rt.stats
        st.downstream_cx_total += 1
        st.downstream_cx_active += 1
        st.downstream_cx_http1_total += 1
        st.downstream_cx_http1_active += 1
        if self.owner is not None:
            self.owner.add(self)  # type: ignore[attr-defined]
        self._arm_idle()
        if self.rt.stream_timers:
            self.timers = StreamTimers(self, self.rt.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.timers is not None:
            self.timers.cancel()
            self.timers = None
        st = self.rt.stats
        st.downstream_cx_active -= 1
        st.downstream_cx_http1_active -= 1
        st.downstream_cx_destroy += 1
        if self.owner is not None:
            self.owner.discard(self)  # type: ignore[attr-defined]
        s = self.active
        self.active = None
        if s is not None:
            s.reset()
        for q in self.queue:
            q.reset()
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_io = self.rt.loop.time()
        self.cork()
        try:
            if self._raw_left:
                data = self._raw_body(data)
                if not data:
                    return
            self._feed(data)
        finally:
            self.uncork()

    def _feed(self, data: bytes) -> None:
        for _ in range(64):  # bounded: each pass consumes an upgrade request's head
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as exc:
                # llhttp stops after a CONNECT or `Connection: upgrade` request.  No upgrade_configs:
                # CONNECT was answered already (404 + close); a real upgrade is refused with 403;
                # otherwise the rest of the bytes are the next request.
                if self._upgrade_refused or self.closed:
                    self.close()  # the 403 was written when the head arrived
                    return
                offset = exc.args[0] if exc.args else len(data)
                data = self._raw_body(data[offset:])
                if not data:
                    return
            except httptools.HttpParserCallbackError as exc:
                ctx = exc.__context__
                if isinstance(ctx, _Stop):
                    return  # bytes after a closing request are not read (nor answered)
                if isinstance(ctx, _CodecError):
                    self._codec_error(ctx)
                    return
                raise
            except httptools.HttpParserError as exc:
                status = status_for_parse_error(str(exc))
                body = _ERROR_BODIES.get(status, local_reply.BAD_REQUEST)
                self._codec_error(_CodecError(status, body))
                return

    def _raw_body(self, data: bytes) -> bytes:
        """The body of an h2c-upgrade request, which llhttp leaves unparsed (it treats what follows an
        upgrade head as the new protocol); Envoy ignores the upgrade and forwards the body, so we
        hand `content-length` bytes to the stream ourselves.  Returns what is left over."""
        left = self._raw_left
        s = self._raw_stream
        if not left or s is None:
            return data
        chunk = data[:left]
        left -= len(chunk)
        self._raw_left = left
        if chunk:
            s.on_body(chunk)
        if left == 0:
            self._raw_stream = None
            s.on_end()
        return data[len(chunk) :]

    def eof_received(self) -> bool | None:
        # A half-closed client still gets its pending responses (Envoy waits for them), unless
        # nothing is in flight.
        if self.active is None and self.parsing is None:
            return False
        if self._raw_stream is not None and self._raw_left > upgrade.TUNNEL // 2:
            return False  # an upgraded stream: a FIN closes both sides (Envoy 1.40)
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.active is not None:
            self.active.on_downstream_pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.active is not None:
            self.active.on_downstream_resume()

    # -- llhttp callbacks ----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.stop_after:
            raise _Stop
        self._url = b""
        self._headers = []
        self._authority = b""
        self._host_seen = False
        self._header_bytes = 0
        self._nheaders = 0
        self._expect = False
        self._cl_count = 0
        self._cl_zero = False
        self._te = False
        self._upgrade = b""
        if self.active is None:
            self.msg_begin = self.last_io  # the request clock of http/stream_timers.py
            self.head_done = self.body_done = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp (strict) has already refused bad field-name tokens and CR/LF/NUL in values.
        size = self._header_bytes + len(name) + len(value)
        self._header_bytes = size
        count = self._nheaders + 1
        self._nheaders = count
        rt = self.rt
        if size > rt.max_header_bytes or count > rt.max_headers_count:
            raise _CodecError(431, local_reply.HEADERS_TOO_LARGE)
        name = name.lower()
        special = _SPECIAL.get(name)
        if special is not None:
            if special == _HOST:
                if self._host_seen:
                    raise _CodecError(400, local_reply.BAD_REQUEST)  # RFC 9112 section 3.2
                self._host_seen = True
                self._authority = value
                return
            if special == _CONTENT_LENGTH:
                self._cl_count += 1
                self._cl_zero = value.strip() == b"0"
            elif special == _TRANSFER_ENCODING:
                if not chunked_only(value):
                    raise _CodecError(501, local_reply.NOT_IMPLEMENTED)  # RFC 9112 section 6.1
                self._te = True
            elif special == _EXPECT:
                if value.lower() == b"100-continue":
                    # Envoy answers 100-continue itself and does not forward the expectation.
                    self._expect = True
                    return
            else:
                self._upgrade = value
        if rt.underscores is not None and b"_" in name:
            if rt.underscores is HeadersWithUnderscoresAction.REJECT_REQUEST:
                raise _CodecError(400, local_reply.BAD_REQUEST)
            return  # DROP_HEADER
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.active is None:
            self.head_done = True
        p = self.parser
        version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            # HTTP/0.9 (no version) and unknown versions: Envoy's 426.
            raise _CodecError(426, local_reply.UPGRADE_REQUIRED)
        if self._cl_count > 1 or (self._te and self._cl_count):
            # RFC 9112 section 6.3: conflicting framing is a smuggling vector; Envoy refuses it.
            raise _CodecError(400, local_reply.BAD_REQUEST)
        url = self._url
        if url == b"*" and p.get_method() != b"OPTIONS":
            raise _CodecError(400, local_reply.BAD_REQUEST)  # RFC 9112 section 3.2.4: OPTIONS only
        if not url or (url[0] != 47 and url != b"*"):  # 47 == "/"
            # absolute-form (http://host/path) is proxy-style: take the authority from it.
            if url.startswith((b"http://", b"https://")):
                rest = url.split(b"://", 1)[1]
                slash = rest.find(b"/")
                auth, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
                self._authority = auth
                self._host_seen = True
                url = path
            elif p.get_method() != b"CONNECT":
                raise _CodecError(400, local_reply.BAD_REQUEST)
        method = p.get_method()
        head = RequestHead(method, url, version.encode(), self._headers, self._authority, p.should_keep_alive())
        if self.requested_server_name is not None:
            head.scheme = b"https"  # a TLS connection (listener/accept.py set the SNI, maybe "")
        tunnel = False
        if self._upgrade and p.should_upgrade() and method != b"CONNECT":
            if self._upgrade.lower() == b"h2c":
                # RFC 9113 section 3.1: h2c upgrade is optional; Envoy ignores it and serves HTTP/1.1.
                head.remove(b"upgrade")
                if self._cl_count and not self._cl_zero:
                    cl = head.get(b"content-length") or b"0"
                    self._h2c_body = int(cl) if cl.strip().isdigit() else 0
                elif self._te:
                    self._upgrade_refused = True  # a chunked body after an h2c head: not supported
            else:
                # Decided after route selection (http/upgrade.py): forwarded, or 403 and close.
                tunnel = True
        stream = Stream(self, self.rt, head)
        if self._upgrade_refused:
            stream.refuse = 403
        if method == b"CONNECT" or b"#" in url:
            # Neither can be routed here: CONNECT needs upgrade_configs (404 with close, as Envoy);
            # a fragment in the target is refused by Envoy's connection manager (empty 400).
            stream.close_after = True
            if b"#" in url:
                stream.refuse = 400
        stream.body_expected = self._te or (self._cl_count > 0 and not self._cl_zero)
        if tunnel:
            # The bytes after the head are the upgraded stream's body, unparsed, until a close.
            stream.upgrade = self._upgrade.lower()
            stream.body_expected = stream.close_after = True
            self._h2c_body = upgrade.TUNNEL
        stream.expect_continue = self._expect
        stream.host_missing = not self._host_seen
        if not head.keep_alive or method == b"CONNECT":
            self.stop_after = True  # Connection: close, HTTP/1.0 or CONNECT: nothing after is read
        self.parsing = stream
        if self.active is None:
            self.active = stream
            stream.start()
        else:
            self.queue.append(stream)
            if len(self.queue) > 32 and not self.read_paused:
                self.pause_reading()

    def on_body(self, body: bytes) -> None:
        s = self.parsing
        if s is not None:
            s.on_body(body)

    def on_message_complete(self) -> None:
        s = self.parsing
        self.parsing = None
        if self._h2c_body and s is not None:
            # llhttp skipped the body of an h2c upgrade request: read it raw (see _raw_body).
            self._raw_left = self._h2c_body
            self._raw_stream = s
            self._h2c_body = 0
            return
        if self.active is None or s is self.active:
            self.body_done = True
        if s is not None:
            s.on_end()

    # -- called by streams ---------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        corked = self.corked
        if corked is not None:
            corked.append(data)
            return
        t = self.transport
        if t is not None and not self.closed:
            t.write(data)

    def cork(self) -> None:
        """Collect writes until `uncork` (one syscall for a response head and body that arrive
        in the same upstream read)."""
        if self.corked is None:
            self.corked = []

    def uncork(self) -> None:
        corked = self.corked
        self.corked = None
        if corked:
            t = self.transport
            if t is not None and not self.closed:
                t.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def stream_done(self, stream: Stream) -> None:
        if stream is not self.active:
            return
        self.active = None
        self.msg_begin = 0.0
        if stream.close_after or self.draining:
            self.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            self.active = nxt
            if self.read_paused and len(self.queue) <= 8 and self._pending_error is None:
                self.resume_reading()
            # A pipelined request's clock starts when it is reached.
            self.msg_begin = self.rt.loop.time()
            self.head_done = True
            self.body_done = nxt.req_done
            nxt.start()
            return
        err = self._pending_error
        if err is not None:
            self._pending_error = None
            self._codec_error(err)
            return
        self.last_active = self.rt.loop.time()

    def stream_timeout(self, body: bytes, always_408: bool = False) -> None:
        """A timer of http/stream_timers.py fired for the request in flight."""
        s = self.active
        if s is None or not s.started:
            # Still reading the request head: nothing to route, just answer and close.
            self.rt.stats.downstream_rq_timeout += 1
            rt = self.rt
            server = rt.server if rt.server_mode is not ServerHeaderTransformation.PASS_THROUGH else None
            self.write(local_reply.encode(408, body, server, close=True))
            rt.stats.response(408)
            self.close()
            return
        s.timeout(body, always_408)

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.uncork()
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def abort(self) -> None:
        t = self.transport
        if t is not None:
            t.abort()

    def drain(self) -> None:
        """Listener drain: finish the in-flight response with `connection: close`, then close."""
        self.draining = True
        if self.active is None and self.parsing is None:
            self.close()

    # -- internals --------------------------------------------------------------------------------
    def _arm_idle(self) -> None:
        # One timer per connection, not per request: it re-arms itself for whatever is left of the
        # idle period since the last response (`last_active`), as Envoy's idle_timeout counts
        # from the moment the connection has no active stream.
        timeout = self.rt.cfg.idle_timeout
        if timeout > 0 and self.transport is not None:
            self.last_active = self.rt.loop.time()
            self.idle_timer = self.rt.loop.call_later(timeout, self._on_idle)

    def _on_idle(self) -> None:
        self.idle_timer = None
        if self.closed:
            return
        loop = self.rt.loop
        timeout = self.rt.cfg.idle_timeout
        if self.active is not None or self.parsing is not None:
            self.idle_timer = loop.call_later(timeout, self._on_idle)
            return
        left = self.last_active + timeout - loop.time()
        if left > 0.001:
            self.idle_timer = loop.call_later(left, self._on_idle)
            return
        self.rt.stats.downstream_cx_idle_timeout += 1
        self.close()

    def _codec_error(self, err: _CodecError) -> None:
        """Envoy's codec-level error: the local reply (when nothing was sent yet) and a close."""
        t = self.transport
        if t is None or t.is_closing():
            self.closed_for_error()  # the connection is already going: nothing more to answer
            return
        self.rt.stats.downstream_cx_protocol_error += 1
        s = self.parsing  # the request the bad bytes belong to (None: its head never completed)
        if s is not None and s is self.active and s.started:
            s.close_after = True
            if not s.resp_started:
                s.local_reply(err.status, err.body, close=True)
            self.close()
            return
        if self.active is not None:
            # The error is in a later, pipelined request: answer the ones before it first (Envoy
            # handles one request at a time), then the error, then close.
            if s is not None and s in self.queue:
                self.queue.remove(s)
                s.reset()
            self.parsing = None
            self._pending_error = err
            self.stop_after = True
            self.pause_reading()
            return
        rt = self.rt
        server = rt.server if rt.server_mode is not ServerHeaderTransformation.PASS_THROUGH else None
        self.write(local_reply.encode(err.status, err.body, server, close=True))
        rt.stats.response(err.status)
        self.close()
        self.closed_for_error()

    def closed_for_error(self) -> None:
        self.parsing = None
        for q in self.queue:
            q.reset()
        self.queue.clear()

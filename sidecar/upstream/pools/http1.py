"""HTTP/1.1 upstream connections and the per-host pool that keeps them alive between requests.

A connection serves one request at a time (no upstream pipelining, as Envoy).  Its parser events go
to a handler (the router's upstream request, http/filters/router.py) through plain method calls.
The pool owns idle connections, their idle timers (cluster `idle_timeout`) and
`max_requests_per_connection`; it knows nothing of routes or retries."""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol, cast

import httptools

from sidecar.http import local_reply
from sidecar.tls.wiring import log as tls_log
from sidecar.tls.wiring import upstream_tls
from sidecar.upstream.original_dst import source_address

if TYPE_CHECKING:
    from sidecar.upstream.cluster_manager import Host


# The waiting queue of every pool until a request has to wait (never appended to: see acquire).
_NO_WAITERS: deque[Any] = deque()


class Corkable(Protocol):
    last_io: float

    def cork(self) -> None: ...
    def uncork(self) -> None: ...


class UpstreamHandler(Protocol):
    request_complete: bool  # the whole request was written (else the connection can't be reused)

    @property
    def downstream(self) -> Corkable | None:
        """Writes made while one upstream read is handled go out as one (see data_received)."""
        ...

    def on_upstream_ready(self, conn: Http1UpstreamConnection) -> None: ...
    def on_upstream_failure(self, reason: bytes) -> None: ...
    def on_upstream_overflow(self) -> None: ...
    def on_upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    def on_upstream_body(self, data: bytes) -> None: ...
    def on_upstream_end(self) -> None: ...
    def on_upstream_pause(self) -> None: ...
    def on_upstream_resume(self) -> None: ...


class Http1UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_headers",
        "closed",
        "handler",
        "head_request",
        "host",
        "idle_since",
        "idle_timer",
        "in_response",
        "parser",
        "pool",
        "requests",
        "transport",
    )

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.host = pool.host
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.handler: UpstreamHandler | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self.requests = 0
        self.closed = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.head_request = False
        self.in_response = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses (hence cast, not isinstance).
        t = self.transport = cast(asyncio.Transport, transport)
        limit = self.pool.buffer_limit
        t.set_write_buffer_limits(high=limit, low=limit // 2)
        self.host.cx_active += 1
        self.pool.cstats.upstream_cx_active += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.host.cx_active -= 1
            self.pool.cstats.upstream_cx_active -= 1
            self.pool.cstats.upstream_cx_destroy += 1
            self.pool.connection_gone()
        self.pool.discard(self)
        h = self.handler
        if h is not None:
            self.handler = None
            if self.in_response and not self._has_length():
                # A close-delimited body (no content-length, not chunked) ends at EOF.
                try:
                    self.parser.feed_data(b"")
                except httptools.HttpParserError:
                    pass
                h.on_upstream_end()
                return
            h.on_upstream_failure(local_reply.RESET_CONNECTION_TERMINATION)

    def _has_length(self) -> bool:
        for k, v in self._headers:
            if k == b"content-length" or (k == b"transfer-encoding" and v.lower().endswith(b"chunked")):
                return True
        return False

    def data_received(self, data: bytes) -> None:
        if self.handler is None:
            # Bytes on an idle connection: the upstream is confused; don't reuse it.
            self.close()
            return
        down: Corkable = self.handler.downstream  # type: ignore[assignment]  # set while it holds us
        down.last_io = self.pool.loop.time()  # response bytes count as stream activity
        down.cork()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # A 101 to an upgrade request (http/upgrade.py): from here on the bytes are relayed raw.
            tunnel = self.parser = Tunnel(self)  # type: ignore[assignment]
            offset = exc.args[0] if exc.args else len(data)
            tunnel.feed_data(data[offset:])
        except httptools.HttpParserError:
            h = self.handler
            self.handler = None
            self.close()
            if h is not None:
                h.on_upstream_failure(local_reply.RESET_PROTOCOL_ERROR)
        finally:
            down.uncork()

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.on_upstream_pause()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.on_upstream_resume()

    # -- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            return  # 1xx interim responses are not forwarded (Envoy's proxy_100_continue off)
        h = self.handler
        if h is None:
            return
        self.in_response = True
        h.on_upstream_headers(status, self._headers)
        if self.head_request and self.handler is h:
            # A response to HEAD has no body whatever its content-length says (RFC 9110 9.3.2);
            # llhttp cannot be told the request method, so end here and don't reuse the connection.
            self.handler = None
            self.in_response = False
            self.close()
            h.on_upstream_end()

    def on_body(self, body: bytes) -> None:
        h = self.handler
        if h is not None:
            h.on_upstream_body(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200 or not self.in_response:
            return
        h = self.handler
        self.in_response = False
        if h is None:
            return
        self.handler = None
        reusable = self.parser.should_keep_alive() and h.request_complete
        h.on_upstream_end()
        if reusable and not self.closed:
            self.pool.release(self)
        else:
            self.close()

    # -- used by the router ----------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        t = self.transport
        assert t is not None
        if t.is_closing():
            return  # closed under us (the upstream answered early and went): connection_lost reports it
        t.write(data)

    def detach(self) -> None:
        """The handler gives up on this connection mid-exchange (timeout, downstream reset)."""
        self.handler = None
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


class Tunnel:
    """Stands in for the response parser of an upgraded connection (a 101): every byte read is
    upgraded-protocol payload for the handler; the connection is never reused (its close ends the
    response: connection_lost sees a response without a length)."""

    __slots__ = ("conn",)

    def __init__(self, conn: Http1UpstreamConnection) -> None:
        self.conn = conn

    def feed_data(self, data: bytes) -> None:
        h = self.conn.handler
        if h is not None and data:
            h.on_upstream_body(data)


def _connect_failure_reason(exc: BaseException) -> bytes:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return local_reply.RESET_CONNECTION_FAILURE
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
        return local_reply.RESET_CONNECTION_FAILURE
    return local_reply.RESET_CONNECTION_FAILURE


class Http1Pool:
    """Idle keep-alive connections to one host, and the connects under way."""

    __slots__ = (
        "alpn",
        "breaker",
        "buffer_limit",
        "connect_timeout",
        "cstats",
        "host",
        "idle",
        "idle_timeout",
        "loop",
        "max_requests",
        "waiting",
    )

    def __init__(self, host: Host, loop: asyncio.AbstractEventLoop, alpn: tuple[str, ...] = ()) -> None:
        self.host = host
        self.alpn = alpn  # the upstream TLS ALPN override of this pool (istio.alpn); () = the cluster's
        cluster = host.cluster
        cfg = cluster.config
        self.loop = loop
        self.idle: list[Http1UpstreamConnection] = []
        self.connect_timeout = cfg.connect_timeout
        self.idle_timeout = cfg.idle_timeout
        self.max_requests = cfg.max_requests_per_connection
        self.buffer_limit = cfg.per_connection_buffer_limit_bytes
        self.cstats = cluster.stats
        self.breaker = cluster.breaker
        # Requests waiting for a connection (max_connections reached), oldest first.  Shared empty
        # until one waits (an empty deque is 600 bytes, per host).
        self.waiting: deque[UpstreamHandler] = _NO_WAITERS

    def acquire(self, handler: UpstreamHandler) -> None:
        """Bind `handler` to a connection: at once if one is idle, else when a connect completes
        (`handler.on_upstream_ready`) or fails (`handler.on_upstream_failure`)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            conn.handler = handler
            conn.requests += 1
            handler.on_upstream_ready(conn)
            return
        breaker = self.breaker
        if breaker.connections < breaker.limits.max_connections:
            breaker.connections += 1
            self.loop.create_task(self._connect(handler))
            return
        # circuit_breakers: no new connection; wait for one (max_pending_requests) or overflow.
        self.cstats.upstream_cx_overflow += 1
        if breaker.pending < breaker.limits.max_pending_requests:
            breaker.pending += 1
            if self.waiting is _NO_WAITERS:
                self.waiting = deque()
            self.waiting.append(handler)
            return
        self.cstats.upstream_rq_pending_overflow += 1
        handler.on_upstream_overflow()

    def cancel_wait(self, handler: UpstreamHandler) -> None:
        """A waiting request went away (reset, timeout) before it got a connection."""
        if self.waiting:
            try:
                self.waiting.remove(handler)
            except ValueError:
                return
            self.breaker.pending -= 1

    def connection_gone(self) -> None:
        """A connection of this pool closed (or never opened): the slot may serve a waiting request."""
        breaker = self.breaker
        breaker.connections -= 1
        if self.waiting and breaker.connections < breaker.limits.max_connections:
            handler = self.waiting.popleft()
            breaker.pending -= 1
            breaker.connections += 1
            self.loop.create_task(self._connect(handler))

    async def _connect(self, handler: UpstreamHandler) -> None:
        if self.host.cluster.config.http2:
            # An HTTP/2 cluster (model.cluster.Cluster.http2): never send it HTTP/1.1 bytes.
            self.cstats.upstream_cx_protocol_error += 1
            self.connection_gone()
            handler.on_upstream_failure(local_reply.RESET_PROTOCOL_ERROR)
            return
        conn = Http1UpstreamConnection(self)
        self.cstats.upstream_cx_total += 1
        addr = self.host.address
        tls = None
        try:
            # The cluster's transport_socket (or its transport_socket_matches entry for this host).
            tls = upstream_tls(self.host, self.loop, self.alpn)
            ctx = tls.ssl_context if tls is not None else None
            sni = tls.server_hostname if tls is not None else None
            if addr.pipe:
                coro = self.loop.create_unix_connection(lambda: conn, addr.pipe, ssl=ctx, server_hostname=sni)
            else:
                # upstream_bind_config (upstream/original_dst.py): bind the source address first.
                local = source_address(self.host.cluster.config, addr)
                coro = self.loop.create_connection(
                    lambda: conn, addr.host, addr.port, local_addr=local, ssl=ctx, server_hostname=sni
                )
            if self.connect_timeout > 0:
                await asyncio.wait_for(coro, self.connect_timeout)
            else:
                await coro
        except (TimeoutError, OSError) as exc:
            if tls is not None and isinstance(exc, ssl.SSLError):
                reason = tls.on_handshake_error(exc)
                if tls_log.isEnabledFor(logging.DEBUG):
                    tls_log.debug("upstream %s: TLS handshake failed: %s", addr, reason)
            self.cstats.upstream_cx_connect_fail += 1
            self.host.cx_connect_fail += 1
            self.connection_gone()
            handler.on_upstream_failure(_connect_failure_reason(exc))
            return
        if tls is not None and conn.transport is not None:
            verdict = tls.on_handshake(conn.transport.get_extra_info("ssl_object"))
            if not verdict.ok:
                if tls_log.isEnabledFor(logging.DEBUG):
                    tls_log.debug("upstream %s: TLS peer refused: %s", addr, verdict.reason)
                # SAN matchers or pins refused the server: connection_lost releases the slot.
                conn.transport.abort()
                self.cstats.upstream_cx_connect_fail += 1
                self.host.cx_connect_fail += 1
                handler.on_upstream_failure(local_reply.RESET_CONNECTION_FAILURE)
                return
        conn.handler = handler
        conn.requests = 1
        handler.on_upstream_ready(conn)

    def release(self, conn: Http1UpstreamConnection) -> None:
        if self.max_requests and conn.requests >= self.max_requests:
            conn.close()
            return
        if self.waiting:
            # A request was waiting for a connection (circuit breaker): it gets this one.
            handler = self.waiting.popleft()
            self.breaker.pending -= 1
            conn.handler = handler
            conn.requests += 1
            handler.on_upstream_ready(conn)
            return
        self.idle.append(conn)
        if self.idle_timeout > 0:
            # One timer per connection, re-armed lazily from `idle_since` (no timer per request).
            conn.idle_since = self.loop.time()
            if conn.idle_timer is None:
                conn.idle_timer = self.loop.call_later(self.idle_timeout, self._check_idle, conn)

    def _check_idle(self, conn: Http1UpstreamConnection) -> None:
        conn.idle_timer = None
        if conn.closed:
            return
        if conn.handler is not None:
            conn.idle_timer = self.loop.call_later(self.idle_timeout, self._check_idle, conn)
            return
        left = conn.idle_since + self.idle_timeout - self.loop.time()
        if left > 0.001:
            conn.idle_timer = self.loop.call_later(left, self._check_idle, conn)
            return
        conn.close()

    def discard(self, conn: Http1UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()

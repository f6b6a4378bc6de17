"""Runs a cluster's active health check against its hosts: the asyncio adapter of upstream/health_check.py.

One task per checked host: wait, probe (HTTP/1.1 request or TCP connect/send/receive) under the
check's timeout, hand the outcome to the pure HealthChecker, tell the cluster when a host's health
changed, sleep for the interval the core chose.  The connection is kept between probes when
reuse_connection is set (Envoy's default) and the peer keeps it open.  Probe connections are not
upstream traffic: they count in no cluster stat but health_check.*.  Every policy `if` lives in the
core; this module only moves bytes and sleeps.

A cluster with a transport_socket (or transport_socket_matches) is probed over TLS, as Envoy's
createHealthCheckConnection does: the host's TLS comes from sidecar.tls.wiring, resolved against
the check's transport_socket_match_criteria when it has some, else against the host's metadata.
Handshakes count in the cluster's ssl.* stats; a failed handshake, a refused peer (SAN matchers)
or TLS that is not ready yet is a network failure of the probe."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools

from sidecar.model.health_check import HealthCheck
from sidecar.upstream.health_check import (
    Failure,
    HealthChecker,
    HostHealth,
    HttpResult,
    Transition,
    http_request,
    http_result,
    tcp_connect_only,
    tcp_passed,
)

if TYPE_CHECKING:
    from sidecar.model.endpoint import Endpoint
    from sidecar.tls.handshake import ClientTls

log = logging.getLogger("sidecar.upstream.health_check")
_READ = 65536


class _Closed(Exception):
    """The connection ended (or failed) before the probe's answer: a network failure."""


class _Response:
    """httptools callbacks for one HTTP/1.1 answer: status, headers, the first `limit` body bytes."""

    __slots__ = ("body", "complete", "head", "headers", "limit")

    def __init__(self, limit: int, head: bool = False) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.limit = limit
        self.complete = False
        self.head = head  # an answer to HEAD has no body, whatever its content-length says

    def on_headers_complete(self) -> None:
        if self.head:
            self.complete = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, data: bytes) -> None:
        room = len(data) if self.limit == 0 else self.limit - len(self.body)
        if room > 0:
            self.body += data[:room]

    def on_message_complete(self) -> None:
        self.complete = True


class _Conn:
    """One probe connection.  The session holds it (`_Session.conn`) as soon as it is open, so a
    timeout or a cancellation mid-probe still closes it."""

    __slots__ = ("buffer", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""

    @property
    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


class _Session:
    __slots__ = ("conn", "endpoint")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.conn: _Conn | None = None

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class HealthCheckRunner:
    """The probes of one cluster's health check.  `sync(endpoints)` starts and stops host sessions;
    `on_result(key, healthy, transition)` is called after every probe."""

    __slots__ = (
        "_first",
        "_pending_first",
        "_rand",
        "_tasks",
        "cfg",
        "checker",
        "cluster",
        "cluster_name",
        "had_traffic",
        "loop",
        "on_result",
    )

    def __init__(
        self,
        cluster_name: str,
        checker: HealthChecker,
        loop: asyncio.AbstractEventLoop,
        had_traffic: Callable[[], bool],
        on_result: Callable[[object, bool, Transition], None],
        cluster: Any = None,
    ) -> None:
        self.cluster_name = cluster_name
        # The live cluster (cluster_manager's: its `config` and stats registry), for the TLS of a
        # probe; None probes in plaintext.
        self.cluster = cluster
        self.checker = checker
        self.cfg: HealthCheck = checker.cfg
        self.loop = loop
        self.had_traffic = had_traffic
        self.on_result = on_result
        self._rand = random.Random()
        self._tasks: dict[object, asyncio.Task[None]] = {}
        self._pending_first: set[object] = set()
        self._first: asyncio.Future[None] | None = None

    def sync(self, hosts: dict[object, tuple[Endpoint, HostHealth]]) -> None:
        """Run one session per entry (key -> (endpoint, its HostHealth)); end the others."""
        for key in list(self._tasks):
            if key not in hosts:
                self._tasks.pop(key).cancel()
                self._pending_first.discard(key)
        for key, (ep, hh) in hosts.items():
            if key not in self._tasks:
                self._pending_first.add(key)
                task = self.loop.create_task(self._session(key, ep, hh))
                task.add_done_callback(self._ended)
                self._tasks[key] = task
        self._check_first()

    def _ended(self, task: asyncio.Task[None]) -> None:
        # A session ends only when cancelled; anything else is a bug worth a log line (one per host).
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster %s: health check session failed", self.cluster_name, exc_info=task.exception())

    def first_round(self) -> asyncio.Future[None]:
        """Done once every host known so far has had its first result (Envoy's cluster warming)."""
        if self._first is None:
            self._first = self.loop.create_future()
            self._check_first()
        return self._first

    def _check_first(self) -> None:
        if self._first is not None and not self._pending_first and not self._first.done():
            self._first.set_result(None)

    def close(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        self._tasks.clear()
        self._pending_first.clear()
        self._check_first()

    def _rand64(self) -> int:
        return self._rand.getrandbits(64)

    async def _session(self, key: object, ep: Endpoint, hh: HostHealth) -> None:
        core = self.checker
        s = _Session(ep)
        delay = core.first_delay(self._rand64)
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            while True:  # until cancelled (the cluster or the host goes away)
                timeout = core.on_attempt()
                failure: Failure | None = None
                result, immediate = HttpResult.SUCCEEDED, False
                try:
                    async with asyncio.timeout(timeout):
                        result, immediate = await self._probe(s)
                except TimeoutError:
                    failure = Failure.NETWORK_TIMEOUT
                except (OSError, _Closed, httptools.HttpParserError):
                    failure = Failure.NETWORK
                if failure is not None:
                    s.drop()  # nothing on a failed connection is worth keeping
                traffic = self.had_traffic()
                healthy = False
                if failure is not None:
                    change, delay = core.on_failure(hh, failure, True, traffic, self._rand64)
                elif result is HttpResult.FAILED or result is HttpResult.RETRIABLE:
                    retriable = result is HttpResult.RETRIABLE
                    change, delay = core.on_failure(
                        hh, Failure.ACTIVE, retriable, traffic, self._rand64, immediate
                    )
                else:
                    healthy = True
                    change, delay = core.on_success(hh, result is HttpResult.DEGRADED, traffic, self._rand64)
                self._pending_first.discard(key)
                self.on_result(key, healthy, change)
                self._check_first()
                await asyncio.sleep(delay)
        finally:
            s.drop()

    def _client_tls(self, ep: Endpoint) -> ClientTls | None:
        """The TLS to probe `ep` with (None: plaintext).  Raises TlsNotReady (an OSError)."""
        cluster = self.cluster
        if cluster is None:
            return None
        config = cluster.config
        if config.transport_socket is None and not config.transport_socket_matches:
            return None
        from sidecar.tls.wiring import wiring_for  # the tls package is only needed for TLS clusters

        criteria = self.cfg.transport_socket_match_criteria
        if criteria is not None:
            # The criteria stand for the host's metadata (and there is no locality metadata then).
            ep = dataclasses.replace(ep, socket_match=criteria, locality_socket_match=None)
        return wiring_for(self.loop, getattr(cluster, "_registry", None)).client_tls(config, ep)

    async def _connect(self, ep: Endpoint) -> _Conn:
        addr = ep.address
        tls = self._client_tls(ep)
        ctx = tls.ssl_context if tls is not None else None
        sni = tls.server_hostname if tls is not None else None
        try:
            if addr.pipe:
                reader, writer = await asyncio.open_unix_connection(addr.pipe, ssl=ctx, server_hostname=sni)
            else:
                port = ep.health_check_port or addr.port
                reader, writer = await asyncio.open_connection(addr.host, port, ssl=ctx, server_hostname=sni)
        except ssl.SSLError as exc:
            if tls is not None:
                reason = tls.on_handshake_error(exc)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("cluster %s: health check TLS handshake failed: %s", self.cluster_name, reason)
            raise
        conn = _Conn(reader, writer)
        if tls is not None:
            verdict = tls.on_handshake(writer.get_extra_info("ssl_object"))
            if not verdict.ok:
                conn.close()
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "cluster %s: health check TLS peer refused: %s", self.cluster_name, verdict.reason
                    )
                raise _Closed
        return conn

    async def _probe(self, s: _Session) -> tuple[HttpResult, bool]:
        """(result, immediate-fail header); network failures raise."""
        cfg = self.cfg
        conn = s.conn
        if conn is not None and not conn.usable:
            s.drop()  # the peer closed it between probes: Envoy reconnects
            conn = None
        if conn is None:
            conn = s.conn = await self._connect(s.endpoint)
        if cfg.http is not None:
            return await self._http(s, conn)
        tcp = cfg.tcp
        assert tcp is not None
        if tcp_connect_only(tcp):
            s.drop()  # connecting was the test
            return HttpResult.SUCCEEDED, False
        if tcp.send:
            conn.writer.write(tcp.send)
        for _ in range(1 << 20):  # bounded: each round reads at least one byte or raises
            if tcp_passed(tcp, conn.buffer):
                conn.buffer = b""
                if not cfg.reuse_connection:
                    s.drop()
                return HttpResult.SUCCEEDED, False
            data = await conn.reader.read(_READ)
            if not data:
                raise _Closed
            conn.buffer += data
        raise _Closed

    async def _http(self, s: _Session, conn: _Conn) -> tuple[HttpResult, bool]:
        http = self.cfg.http
        assert http is not None
        ep = s.endpoint
        authority = ep.health_check_hostname or http.host or self.cluster_name
        conn.writer.write(http_request(http, authority))
        resp = _Response(http.response_buffer_size, head=http.method == "HEAD")
        parser = httptools.HttpResponseParser(resp)
        for _ in range(1 << 20):  # bounded: each round reads at least one byte or raises
            data = await conn.reader.read(_READ)
            if not data:
                raise _Closed
            parser.feed_data(data)
            if resp.complete:
                break
        else:
            raise _Closed
        status = parser.get_status_code()
        result, immediate = http_result(http, self.checker.stats, status, resp.headers, bytes(resp.body))
        if not (self.cfg.reuse_connection and parser.should_keep_alive()):
            s.drop()
        return result, immediate

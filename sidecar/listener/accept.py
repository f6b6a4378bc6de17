"""The inspecting accept path: what happens to a socket between accept and its filter chain
(Envoy's ActiveTcpSocket, active_tcp_socket.cc).

1. The listener filters run in order.  original_dst restores the socket's local address from
   SO_ORIGINAL_DST (listener/original_dst.py); Envoy adds it on its own in front of the others when
   the listener has use_original_dst.  tls_inspector and http_inspector read the first bytes with
   MSG_PEEK (listener/sniff.py) and never consume them: the chain's protocol later reads them again.
   While a filter needs more bytes, the socket's SO_RCVLOWAT is set one past what was already
   seen, so a level-triggered poller wakes only when there is more (or on FIN/RST: a wake-up that
   brings nothing new is the peer closing, downstream_listener_filter_remote_close).
2. listener_filters_timeout (from accept; 0 disables it): the socket is closed, or with
   continue_on_listener_filters_timeout goes on to step 3 with what was found so far
   (downstream_pre_cx_timeout either way).
3. use_original_dst and a restored address: the socket is handed to the listener for that address
   (exact, then wildcard; it may be this listener), whose own listener filters run again, with no
   further hand-off.  Otherwise chain_match selects the chain (transport protocol "raw_buffer" when
   no filter set one); no chain closes the socket (no_filter_chain_match).
4. The chain's protocol takes the socket through the loop's connect_accepted_socket, with the
   original destination to connect to for ORIGINAL_DST clusters.  That destination is withheld
   (None) when it is a capture listener's own address: such a connection would loop back into us."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import select
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sidecar.listener.original_dst import original_destination
from sidecar.listener.sniff import (
    NEED_MORE,
    NOT_HTTP,
    NOT_TLS,
    TOO_LARGE,
    ClientHello,
    detect_http,
    parse_client_hello,
)
from sidecar.model.endpoint import SocketAddress
from sidecar.model.listener import FilterChain, ListenerFilter, ListenerFilterKind
from sidecar.observe import access_log_emit
from sidecar.observe.stats import Stats
from sidecar.tls.handshake import ServerTls
from sidecar.tls.wiring import TlsWiring, wiring_for

if TYPE_CHECKING:
    from sidecar.listener.manager import ActiveListener, ListenerManager

log = logging.getLogger("sidecar.listener")
# Per-connection TLS outcomes, at debug level as Envoy's "connection" component logs them.
conn_log = logging.getLogger("sidecar.connection")

_ORIGINAL_DST = ListenerFilter("envoy.filters.listener.original_dst", ListenerFilterKind.ORIGINAL_DST)
_ACCEPT_BATCH = 64  # sockets accepted per readiness event (max_connections_to_accept_per_socket_event)
_WAIT, _NEXT, _CLOSE = range(3)
# The TLS handshake's bound when the chain sets no transport_socket_connect_timeout (Envoy has
# none; asyncio's default is 60 s).
HANDSHAKE_TIMEOUT = 60.0


def address_key(ip: str, port: int) -> tuple[str, str]:
    """("ip:port", wildcard "0.0.0.0:port" or "[::]:port") with the IP normalised."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return f"{ip}:{port}", f"0.0.0.0:{port}"
    if a.version == 6:
        return f"[{a}]:{port}", f"[::]:{port}"
    return f"{a}:{port}", f"0.0.0.0:{port}"


class _Stats:
    """Envoy's global listener-filter counters (tls_inspector.*, http_inspector.*)."""

    def __init__(self, stats: Stats) -> None:
        c = stats.counter
        self.tls_found = c("tls_inspector.tls_found")
        self.tls_not_found = c("tls_inspector.tls_not_found")
        self.sni_found = c("tls_inspector.sni_found")
        self.sni_not_found = c("tls_inspector.sni_not_found")
        self.alpn_found = c("tls_inspector.alpn_found")
        self.alpn_not_found = c("tls_inspector.alpn_not_found")
        self.client_hello_too_large = c("tls_inspector.client_hello_too_large")
        self.http10_found = c("http_inspector.http10_found")
        self.http11_found = c("http_inspector.http11_found")
        self.http2_found = c("http_inspector.http2_found")
        self.http_not_found = c("http_inspector.http_not_found")
        self.read_error = c("http_inspector.read_error")


class _Socket:
    """One accepted socket on its way to a filter chain."""

    __slots__ = (
        "al",
        "alpn",
        "data",
        "deadline",
        "filters",
        "hand_off",
        "index",
        "local",
        "lowat",
        "reading",
        "remote",
        "restored",
        "server_name",
        "sock",
        "timer",
        "transport",
    )

    def __init__(self, al: ActiveListener, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.local = _addr(sock.getsockname())
        self.remote = _addr(sock.getpeername()) if sock.family != socket.AF_UNIX else SocketAddress("", 0)
        self.restored = False
        self.server_name = ""
        self.transport = ""
        self.alpn: tuple[str, ...] = ()
        self.data = b""
        self.lowat = 1
        self.reading = False
        self.timer: asyncio.TimerHandle | None = None
        self.al = al
        self.hand_off = False
        self.filters: tuple[ListenerFilter, ...] = ()
        self.index = 0
        self.deadline = now


class Acceptor:
    __slots__ = ("_local_cache", "loop", "manager", "pending", "stats", "tasks", "tls")

    def __init__(self, manager: ListenerManager, loop: asyncio.AbstractEventLoop, stats: Stats) -> None:
        self.manager = manager
        self.loop = loop
        self.stats = _Stats(stats)
        self.pending: set[_Socket] = set()
        self.tasks: set[asyncio.Future[Any]] = set()
        self._local_cache: dict[str, bool] = {}
        # TLS filter chains' providers and the certificate-file polling of this worker.
        self.tls: TlsWiring = wiring_for(loop, stats)

    # -- accepting ---------------------------------------------------------------------------------------
    def listen(self, al: ActiveListener) -> None:
        assert al.sock is not None
        # TLS chains get their providers now: their ssl.* stats exist from the start and a secret
        # that cannot be read is reported at once, not at the first connection.
        cfg = al.config
        for chain in (*cfg.filter_chains, cfg.default_filter_chain):
            if chain is not None and chain.transport_socket is not None:
                self.tls.server_provider(chain, cfg)
        self.loop.add_reader(al.sock.fileno(), self._accept, al)

    def unlisten(self, al: ActiveListener) -> None:
        sock = al.sock
        if sock is not None and sock.fileno() >= 0:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        # Open connections keep the contexts they were accepted with; the providers can go.
        cfg = al.config
        self.tls.forget_chains(
            tuple(c for c in (*cfg.filter_chains, cfg.default_filter_chain) if c is not None)
        )

    def _accept(self, al: ActiveListener) -> None:
        assert al.sock is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = al.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE, ENFILE, ECONNABORTED ...: this batch ends; the next readiness retries.
                if exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    log.warning("listener %s: accept failed: %s", al.config.name, exc)
                return
            sock.setblocking(False)
            try:
                ps = _Socket(al, sock, self.loop.time())
            except OSError:  # the peer is already gone (getpeername: ENOTCONN)
                sock.close()
                continue
            self._safely(ps, self._start)

    def _start(self, ps: _Socket) -> None:
        self._begin(ps, ps.al, ps.al.config.use_original_dst)

    def _safely(self, ps: _Socket, step: Callable[[_Socket], None]) -> None:
        """Run one step for one socket; a bug drops that connection only."""
        try:
            step(ps)
        except Exception:
            log.exception("listener %s: dropping a connection", ps.al.config.name)
            if ps in self.pending:
                self._close(ps)
            else:
                ps.sock.close()

    def _begin(self, ps: _Socket, al: ActiveListener, hand_off: bool) -> None:
        """Run `al`'s listener filters on the socket (again, after a hand-off)."""
        cfg = al.config
        ps.al = al
        ps.hand_off = hand_off
        filters = cfg.listener_filters
        if cfg.use_original_dst and not any(f.kind is ListenerFilterKind.ORIGINAL_DST for f in filters):
            filters = (_ORIGINAL_DST, *filters)  # Envoy's buildOriginalDstListenerFilter
        ps.filters = filters
        ps.index = 0
        ps.deadline = self.loop.time() + cfg.listener_filters_timeout
        al.pre_cx_active.inc()
        self.pending.add(ps)
        self._run(ps)

    # -- the listener filters ---------------------------------------------------------------------------
    def _run(self, ps: _Socket) -> None:
        filters = ps.filters
        for _ in range(len(filters) + 1):
            if ps.index >= len(filters):
                self._done(ps)
                return
            step = self._filter(ps, filters[ps.index])
            if step == _NEXT:
                ps.index += 1
            elif step == _CLOSE:
                self._close(ps)
                return
            else:
                self._wait(ps)
                return

    def _filter(self, ps: _Socket, f: ListenerFilter) -> int:
        if f.disabled is not None and f.disabled.matches(None if ps.local.pipe else ps.local.port):
            return _NEXT  # filter_disabled matched this connection (after original_dst, as Envoy)
        kind = f.kind
        if kind is ListenerFilterKind.ORIGINAL_DST:
            dst = original_destination(ps.sock)
            if dst is not None:
                ps.local = SocketAddress(dst[0], dst[1])
                ps.restored = True
            return _NEXT
        if kind is ListenerFilterKind.HTTP_INSPECTOR and ps.transport not in ("", "raw_buffer"):
            return _NEXT  # Envoy: "cannot inspect http protocol with transport socket tls"
        if not ps.data and not self._peek(ps):
            return _CLOSE
        st = self.stats
        if kind is ListenerFilterKind.TLS_INSPECTOR:
            hello = parse_client_hello(ps.data, f.max_client_hello_size)
            if hello is NEED_MORE:
                return _WAIT
            if hello is TOO_LARGE:
                st.client_hello_too_large.inc()
                return _CLOSE
            if hello is NOT_TLS or not isinstance(hello, ClientHello):
                if f.close_on_parse_error:
                    return _CLOSE
                st.tls_not_found.inc()
                return _NEXT
            st.tls_found.inc()
            ps.transport = "tls"
            (st.sni_found if hello.server_name else st.sni_not_found).inc()
            ps.server_name = hello.server_name
            (st.alpn_found if hello.alpn else st.alpn_not_found).inc()
            if hello.alpn:
                ps.alpn = hello.alpn
            return _NEXT
        proto = detect_http(ps.data)
        if proto is NEED_MORE:
            return _WAIT
        if proto is TOO_LARGE:
            st.read_error.inc()
            return _CLOSE
        if proto is NOT_HTTP or not isinstance(proto, str):
            st.http_not_found.inc()
            return _NEXT
        (
            st.http11_found
            if proto == "http/1.1"
            else st.http10_found
            if proto == "http/1.0"
            else st.http2_found
        ).inc()
        ps.alpn = (proto,)
        return _NEXT

    def _peek(self, ps: _Socket) -> bool:
        """Refresh `ps.data` with everything received so far; False when the socket must close
        (the peer closed or failed)."""
        size = 16384
        try:
            data = ps.sock.recv(size, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            ps.al.filter_error.inc()
            return False
        if not data or (ps.reading and len(data) <= len(ps.data) and _hung_up(ps.sock)):
            # The peer closed (FIN, or nothing sent at all) before the filters were satisfied.
            ps.al.remote_close.inc()
            return False
        ps.data = data
        return True

    def _wait(self, ps: _Socket) -> None:
        fd = ps.sock.fileno()
        want = len(ps.data) + 1
        if want != ps.lowat:
            try:
                ps.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
                ps.lowat = want
            except OSError:
                pass
        if not ps.reading:
            ps.reading = True
            self.loop.add_reader(fd, self._readable, ps)
        timeout = ps.al.config.listener_filters_timeout
        if ps.timer is None and timeout > 0:
            ps.timer = self.loop.call_at(ps.deadline, self._timeout, ps)

    def _readable(self, ps: _Socket) -> None:
        if ps in self.pending:
            self._safely(ps, self._more)

    def _more(self, ps: _Socket) -> None:
        if not self._peek(ps):
            self._close(ps)
            return
        self._run(ps)

    def _timeout(self, ps: _Socket) -> None:
        ps.timer = None
        if ps in self.pending:
            self._safely(ps, self._expire)

    def _expire(self, ps: _Socket) -> None:
        al = ps.al
        al.pre_cx_timeout.inc()
        if al.config.continue_on_listener_filters_timeout:
            self._done(ps)
        else:
            self._close(ps)

    # -- after the filters ----------------------------------------------------------------------------
    def _unlink(self, ps: _Socket) -> None:
        self.pending.discard(ps)
        ps.al.pre_cx_active.dec()
        if ps.timer is not None:
            ps.timer.cancel()
            ps.timer = None
        if ps.reading:
            ps.reading = False
            self.loop.remove_reader(ps.sock.fileno())
        if ps.lowat != 1:
            try:
                ps.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            except OSError:
                pass
            ps.lowat = 1

    def _close(self, ps: _Socket) -> None:
        self._unlink(ps)
        ps.sock.close()

    def _done(self, ps: _Socket) -> None:
        self._unlink(ps)
        al = ps.al
        if ps.hand_off and ps.restored:
            target = self.manager.find_by_address(ps.local.host, ps.local.port)
            if target is not None:
                ps.data = b""  # the target's filters peek afresh
                self._begin(ps, target, False)
                return
        cfg = al.config
        if al.fixed:
            chain = cfg.chain()
        elif cfg.chain_table is not None:
            local, remote = ps.local, ps.remote
            chain = cfg.chain_table.select(
                local.host,
                local.port,
                ps.server_name,
                ps.transport or "raw_buffer",
                ps.alpn,
                remote.host,
                remote.port,
                _same_ip_or_loopback(remote.host, local.host),
            )
        else:
            chain = cfg.default_filter_chain
        if chain is None:
            al.no_chain.inc()
            if cfg.access_log:  # Listener.access_log (observe/access_log_emit.py)
                access_log_emit.log_no_chain(cfg.access_log, ps.local, ps.remote, ps.server_name)
            ps.sock.close()
            return
        al.cx_total.inc()
        factory = al.chains.get(id(chain))
        if factory is None:
            ps.sock.close()  # a chain without network filters
            return
        proto = factory(ps.local if ps.restored and not self._loops(ps) else None)
        if self.manager.draining:
            proto.draining = True  # type: ignore[attr-defined]
        sock = ps.sock
        if chain.transport_socket is not None:
            self._start_tls(ps, chain, proto)
            return
        fut = asyncio.ensure_future(self.loop.connect_accepted_socket(lambda: proto, sock))
        self.tasks.add(fut)
        fut.add_done_callback(lambda f: self._started(f, sock))

    def _start_tls(self, ps: _Socket, chain: FilterChain, proto: asyncio.Protocol) -> None:
        """Step 5 for a TLS chain (envoy.transport_sockets.tls): the untouched socket goes to the
        loop with the chain's SSL context of *now* (a rotation applies to the next handshake);
        `_TlsGate` judges the peer the moment the handshake completes, before the chain's protocol
        sees a byte."""
        al = ps.al
        provider = self.tls.server_provider(chain, al.config)
        tls = provider.server if provider is not None else None
        sock = ps.sock
        if tls is None:
            # Still warming (an SDS secret has not arrived) or never built: Envoy would not have
            # the listener up yet; refuse rather than serve plaintext.
            if conn_log.isEnabledFor(logging.DEBUG):
                conn_log.debug(
                    "listener %s: TLS not ready, closing: %s", al.config.name, provider and provider.error
                )
            sock.close()
            return
        gate = _TlsGate(proto, tls, ps.server_name, al.config.name)
        timeout = chain.transport_socket_connect_timeout or HANDSHAKE_TIMEOUT
        fut = asyncio.ensure_future(
            self.loop.connect_accepted_socket(
                lambda: gate, sock, ssl=tls.ssl_context, ssl_handshake_timeout=timeout
            )
        )
        self.tasks.add(fut)
        fut.add_done_callback(lambda f: self._tls_started(f, sock, gate))

    def _tls_started(self, fut: asyncio.Future[Any], sock: socket.socket, gate: _TlsGate) -> None:
        self.tasks.discard(fut)
        if fut.cancelled():
            sock.close()
            return
        exc = fut.exception()
        if exc is not None:
            reason = gate.tls.on_handshake_error(exc)
            if conn_log.isEnabledFor(logging.DEBUG):
                conn_log.debug("listener %s: TLS handshake failed: %s", gate.listener, reason)
            sock.close()

    def _started(self, fut: asyncio.Future[Any], sock: socket.socket) -> None:
        self.tasks.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            sock.close()

    def _loops(self, ps: _Socket) -> bool:
        """The original destination is one of our own capture listeners (a bound one that restores
        destinations): connecting there would bring the connection straight back."""
        dst = ps.local
        for host, port in self.manager.captures:
            if port == dst.port and (host == dst.host or (_unspecified(host) and self._is_local(dst.host))):
                return True
        return False

    def _is_local(self, ip: str) -> bool:
        """Whether `ip` is an address of this host (it can be bound); cached, loopback at once."""
        hit = self._local_cache.get(ip)
        if hit is None:
            try:
                a = ipaddress.ip_address(ip)
            except ValueError:
                return False
            hit = a.is_loopback
            if not hit:
                s = socket.socket(socket.AF_INET6 if a.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.bind((ip, 0))
                    hit = True
                except OSError:
                    hit = False
                finally:
                    s.close()
            if len(self._local_cache) > 256:
                self._local_cache.clear()
            self._local_cache[ip] = hit
        return hit

    def close_pending(self) -> None:
        for ps in list(self.pending):
            self._close(ps)


class _TlsGate(asyncio.Protocol):
    """The protocol the loop's SSL transport first reports to.  At connection_made the handshake
    is done: the peer is judged (SAN matchers, pins: ServerTls.on_handshake) and refused with a
    close, or the peer identity and SNI are put on the chain's connection (RBAC reads
    `peer_identity` and `requested_server_name`) and the transport is handed to it."""

    __slots__ = ("inner", "listener", "server_name", "tls")

    def __init__(self, inner: asyncio.Protocol, tls: ServerTls, server_name: str, listener: str) -> None:
        self.inner = inner
        self.tls = tls
        self.server_name = server_name
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        verdict = self.tls.on_handshake(transport.get_extra_info("ssl_object"))
        if not verdict.ok:
            if conn_log.isEnabledFor(logging.DEBUG):
                conn_log.debug("listener %s: TLS peer refused: %s", self.listener, verdict.reason)
            transport.close()
            return
        inner = self.inner
        # network RBAC (l4/rbac.py RbacGuard) wraps the terminal protocol: both get the names.
        conns: tuple[Any, ...] = (inner, getattr(inner, "inner", None))
        for conn in conns:
            if conn is None:
                continue
            try:
                conn.peer_identity = verdict.peer
                conn.requested_server_name = self.server_name
            except AttributeError:
                pass
        transport.set_protocol(inner)
        inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # refused before the hand-over (after it, the inner protocol gets this)


def _addr(name: object) -> SocketAddress:
    if isinstance(name, tuple):
        return SocketAddress(str(name[0]), int(name[1]))
    return SocketAddress("", 0, pipe=str(name))


def _hung_up(sock: socket.socket) -> bool:
    """Whether the peer closed or reset (POLLRDHUP / POLLHUP / POLLERR), as opposed to a wake-up
    with nothing new (SO_RCVLOWAT is not honoured by every socket family)."""
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
    return any(ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, ev in p.poll(0))


def _unspecified(host: str) -> bool:
    return host in ("0.0.0.0", "::")


_LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def _same_ip_or_loopback(remote: str, local: str) -> bool:
    """Envoy's isSameIpOrLoopback: a pipe, the canonical loopback address (127.0.0.1 or ::1 exactly,
    not the rest of 127/8: Utility::isLoopbackAddress), or a peer with our own (restored) IP."""
    if not remote or remote == local:
        return True
    try:
        return ipaddress.ip_address(remote) in _LOOPBACK
    except ValueError:
        return False

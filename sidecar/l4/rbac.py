"""envoy.filters.network.rbac: allow or close a downstream connection by policy
(extensions.filters.network.rbac.v3; Envoy's NetworkFilters::RBACFilter::RoleBasedAccessControlFilter).

Envoy checks a connection when bytes arrive from the downstream (onData), never at accept: a
connection that sends nothing is never checked.  ONE_TIME_ON_FIRST_BYTE (the default) decides once,
on the first bytes; CONTINUOUS re-evaluates (and counts again) on every read.  The shadow rules are
evaluated alongside and only counted.  A denied connection is closed at once without flushing
(Connection::close(NoFlush)), or, with delay_deny, reading stops and it is closed after the delay.
No rules: nothing is enforced and nothing counted.

Stats: `<stat_prefix>rbac.allowed|denied`, `<stat_prefix>rbac.[<shadow_rules_stat_prefix>.]
shadow_allowed|shadow_denied` (statPrefixJoin: Istio's stat_prefix "tcp." gives tcp.rbac.allowed).

Wiring (the listener owns the sockets): `guard_chain(chain_factory, runtimes, loop)` wraps a filter
chain's protocol factory (which takes the original destination) so every connection first goes
through the chain's network RBAC filters (`RbacGuard`, below); `guard` does it for a factory with
no arguments.  By hand, the same is:
    rt = NetworkRbacRuntime(cfg, stats)             # per listener config per worker
    gate = rt.connection()                          # per accepted connection
    ... in data_received (and eof_received: Envoy runs onData for the end of stream too), before
    the bytes go anywhere:
    if gate.pending and not gate.on_data(view):     # view: connection_view(transport, ...)
        close now (transport.abort()) or, when rt.delay_deny > 0, pause_reading() and abort()
        after rt.delay_deny seconds; drop these bytes either way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from sidecar.model.rbac import EnforcementType, NetworkRbac
from sidecar.observe.stats import Stats
from sidecar.rbac.engine import ConnectionView, RequestView, evaluate, parse_ip, response_detail
from sidecar.rbac.peer import connection_server_name, has_names, transport_identity, transport_server_name
from sidecar.rbac.stats import RbacStats

# Engine results of one connection (Envoy's EngineResult: Unknown, None, Allow, Deny).
UNKNOWN = 0
NONE = 1  # no engine configured
ALLOW = 2
DENY = 3


class NetworkRbacRuntime:
    """One network RBAC filter config, per worker: the config and its counters."""

    __slots__ = ("cfg", "continuous", "delay_deny", "stats")

    def __init__(self, cfg: NetworkRbac, stats: Stats | None) -> None:
        self.cfg = cfg
        self.continuous = cfg.enforcement_type is EnforcementType.CONTINUOUS
        self.delay_deny = cfg.delay_deny
        # generateStats(stat_prefix, "", shadow_rules_stat_prefix): no rules prefix here.
        self.stats = RbacStats(stats, cfg.stat_prefix, "", cfg.shadow_rules_stat_prefix)

    def connection(self) -> ConnectionRbac:
        return ConnectionRbac(self)


class ConnectionRbac:
    """The decision state of one connection.  `pending` is False once nothing can change any more
    (ONE_TIME after its check), so the adapter can skip the call on later reads."""

    __slots__ = ("detail", "engine_result", "pending", "rt", "shadow_result")

    def __init__(self, rt: NetworkRbacRuntime) -> None:
        self.rt = rt
        self.engine_result = UNKNOWN
        self.shadow_result = UNKNOWN
        self.pending = True
        self.detail = ""  # CONNECTION_TERMINATION_DETAILS of a deny

    def on_data(self, view: RequestView) -> bool:
        """True: let the bytes through.  False: the connection is denied; close it (see module doc)."""
        rt = self.rt
        if rt.continuous:
            self.shadow_result = self._check_shadow(view)
            self.engine_result = self._check(view)
        else:
            if self.shadow_result == UNKNOWN:
                self.shadow_result = self._check_shadow(view)
            if self.engine_result == UNKNOWN:
                self.engine_result = self._check(view)
            self.pending = False
        return self.engine_result != DENY

    def _check_shadow(self, view: RequestView) -> int:
        rules = self.rt.cfg.shadow_rules
        if rules is None:
            return NONE
        ok, _ = evaluate(rules, view)
        st = self.rt.stats
        (st.shadow_allowed if ok else st.shadow_denied).inc()
        return ALLOW if ok else DENY

    def _check(self, view: RequestView) -> int:
        rules = self.rt.cfg.rules
        if rules is None:
            return NONE
        ok, pid = evaluate(rules, view)
        st = self.rt.stats
        if ok:
            st.allowed.inc()
            return ALLOW
        st.denied.inc()
        self.detail = response_detail(pid)
        self.pending = False  # a denied connection is closing: no more checks
        return DENY


def _split(address: Any) -> tuple[Any, int | None]:
    if isinstance(address, tuple) and len(address) >= 2:
        return parse_ip(str(address[0])), int(address[1])
    return None, None


def connection_view(transport: Any, conn: Any = None, local: tuple[str, int] | None = None) -> ConnectionView:
    """The ConnectionView of a downstream transport: its peer, its local address (or `local`, the
    original destination of a redirected connection), the SNI and the TLS peer's identity.  `conn`,
    when given, may carry `requested_server_name` / `peer_identity` set by the TLS layer."""
    source, _ = _split(transport.get_extra_info("peername"))
    destination, port = _split(local if local is not None else transport.get_extra_info("sockname"))
    own = getattr(conn, "peer_identity", None)
    return ConnectionView(
        source=source,
        destination=destination,
        port=port,
        sni=connection_server_name(conn) if conn is not None else transport_server_name(transport),
        peer=own if own is not None and has_names(own) else transport_identity(transport),
    )


class RbacGuard(asyncio.Protocol):
    """A connection's network RBAC filters in front of its own protocol (tcp_proxy or HTTP): bytes
    and the end of stream reach `inner` only once every filter allowed them.  Everything else is
    passed through; the inner protocol uses the transport directly."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        runtimes: Sequence[NetworkRbacRuntime],
        loop: asyncio.AbstractEventLoop,
        local: tuple[str, int] | None = None,
    ) -> None:
        self.inner = inner
        self.gates = [rt.connection() for rt in runtimes]
        self.loop = loop
        self.local = local
        self.transport: Any = None
        self.view: ConnectionView | None = None
        self.pending = True
        self.denied = False
        self.timer: asyncio.TimerHandle | None = None

    # The listener manager reads and sets these on the connections it makes.
    @property
    def draining(self) -> bool:
        return bool(getattr(self.inner, "draining", False))

    @draining.setter
    def draining(self, value: bool) -> None:
        self.inner.draining = value  # type: ignore[attr-defined]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.inner.connection_made(transport)

    def _allowed(self) -> bool:
        """Run the filters in order (Envoy's read filter chain); the first denial closes."""
        if self.view is None:
            self.view = connection_view(self.transport, self.inner, self.local)
        pending = False
        for gate in self.gates:
            if gate.pending:
                if not gate.on_data(self.view):
                    self._deny(gate.rt.delay_deny)
                    return False
                pending = pending or gate.pending
        self.pending = pending
        return True

    def _deny(self, delay: float) -> None:
        self.denied = True
        if delay > 0:
            self.transport.pause_reading()
            self.timer = self.loop.call_later(delay, self.transport.abort)
        else:
            self.transport.abort()  # Connection::close(NoFlush)

    def data_received(self, data: bytes) -> None:
        if self.denied or (self.pending and not self._allowed()):
            return
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.denied or (self.pending and not self._allowed()):
            return False
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def guard(
    factory: Callable[[], Any],
    runtimes: Sequence[NetworkRbacRuntime],
    loop: asyncio.AbstractEventLoop,
) -> Callable[[], Any]:
    """`factory` with its connections behind `runtimes` (none: `factory` itself)."""
    if not runtimes:
        return factory
    return lambda: RbacGuard(factory(), runtimes, loop)


def guard_chain(
    factory: Callable[[Any], asyncio.Protocol],
    runtimes: Sequence[NetworkRbacRuntime],
    loop: asyncio.AbstractEventLoop,
) -> Callable[[Any], asyncio.Protocol]:
    """The same for a chain factory taking the original destination (a model SocketAddress with
    `host` and `port`, or None): destination_ip / destination_port then see that destination."""
    if not runtimes:
        return factory

    def make(dst: Any) -> asyncio.Protocol:
        local = (str(dst.host), int(dst.port)) if dst is not None else None
        return RbacGuard(factory(dst), runtimes, loop, local)

    return make

"""The access log adapters: turn an ended HTTP stream or TCP connection into a LogRecord, then filter,
format and write it for each configured access log.

`AccessLoggers` is built once per HcmRuntime / TcpProxyRuntime (per listener config per worker);
`build` gives None when nothing is configured, so the request path pays one truth test of None
(`if rt.access_logs`).
A stream with loggers carries an `HttpLogState` (times and byte counts the record needs that the
stream does not otherwise keep); the connection manager and tcp_proxy update it and call
`log_http` / `log_tcp` once, when the stream or connection ends (Envoy logs in the ActiveStream /
tcp_proxy destructors)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sidecar.model.access_log import AccessLog
from sidecar.observe.access_log import Command, JsonFormatter, LogRecord, TextFormatter, _JsonString
from sidecar.observe.access_log_filter import passes
from sidecar.observe.access_log_sink import FileSink, sink_for

# Commands that need the TLS session looked at (only then is it looked at).
_TLS_COMMANDS = frozenset(("DOWNSTREAM_LOCAL_URI_SAN", "DOWNSTREAM_TLS_VERSION"))
_UPSTREAM_LOCAL = frozenset(("UPSTREAM_LOCAL_ADDRESS", "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT"))


def _commands(formatter: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(formatter, TextFormatter):
        names.update(p.name for p in formatter.parts if isinstance(p, Command))
    elif isinstance(formatter, JsonFormatter):
        stack: list[Any] = [formatter.template]
        while stack:
            t = stack.pop()
            for v in t.values():
                if isinstance(v, dict):
                    stack.append(v)
                elif isinstance(v, _JsonString):
                    names.update(p.name for p in v.parts if isinstance(p, Command))
    return names


class AccessLoggers:
    """The access logs of one HCM or tcp_proxy, with their sinks opened for this process."""

    __slots__ = ("entries", "needs_tls", "needs_upstream_local")

    def __init__(self, configs: Iterable[AccessLog]) -> None:
        self.entries: tuple[tuple[AccessLog, FileSink], ...] = tuple(
            (c, sink_for(c.sink, c.path)) for c in configs
        )
        needs: set[str] = set()
        for c, _ in self.entries:
            needs |= _commands(c.formatter)
        self.needs_tls = bool(needs & _TLS_COMMANDS)
        self.needs_upstream_local = bool(needs & _UPSTREAM_LOCAL)

    def emit(self, rec: LogRecord) -> None:
        for cfg, sink in self.entries:
            f = cfg.filter
            if f is not None and not passes(f, rec):
                continue
            sink.write(cfg.formatter.render(rec))


def build(configs: tuple[AccessLog, ...]) -> AccessLoggers | None:
    return AccessLoggers(configs) if configs else None


class HttpLogState:
    """What a stream with access logs keeps for its record (see Stream.alog)."""

    __slots__ = (
        "local_body",
        "req_end",
        "resp_headers",
        "resp_start",
        "rx",
        "start",
        "start_ns",
        "tx",
        "upstream_local",
    )

    def __init__(self, start: float) -> None:
        self.start_ns = time.time_ns()
        self.start = start  # loop time of the request's first byte
        self.rx = 0
        self.tx = 0
        self.req_end: float | None = None
        self.resp_start: float | None = None
        self.resp_headers: Any = None
        self.local_body: bytes | None = None  # the body of a local reply
        self.upstream_local: str | None = None


def response_head(stream: Any, headers: list[tuple[bytes, bytes]]) -> None:
    """The response head is going downstream (Stream._finish_head): keep its headers for RESP(),
    its time for RESPONSE_DURATION and, while the upstream connection is still the router's, that
    connection's local address for UPSTREAM_LOCAL_ADDRESS."""
    st: HttpLogState = stream.alog
    st.resp_headers = headers
    st.resp_start = stream.rt.loop.time()
    if stream.rt.access_logs.needs_upstream_local:
        for f in stream.filters:
            conn = getattr(f, "conn", None)
            t = getattr(conn, "transport", None)
            if t is not None:
                st.upstream_local = addr_text(t.get_extra_info("sockname"))


class _Headers:
    """A response header list seen as a HeaderSource."""

    __slots__ = ("headers",)

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers

    def get(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


_local_sans: dict[bytes, tuple[str, ...]] = {}


def _tls_facts(rec: LogRecord, transport: Any) -> None:
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return
    rec.tls_version = ssl_object.version()
    from sidecar.tls import local_cert

    der = local_cert.local_certificate(ssl_object)
    if der:
        sans = _local_sans.get(der)
        if sans is None:
            from sidecar.tls.identity import peer_identity

            if len(_local_sans) > 16:
                _local_sans.clear()
            sans = _local_sans[der] = peer_identity(der).uri_sans
        rec.local_uri_sans = sans


_RESET_PREFIXES = (
    b"upstream connect error or disconnect/reset before headers. reset reason: ",
    b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: ",
)


def _details(stream: Any, flags: list[str] | None, router: Any, body: bytes | None) -> str:
    """RESPONSE_CODE_DETAILS, as far as the stream tells it (Envoy's ResponseCodeDetails names).
    Envoy adds the transport failure to a connect failure's details
    (`{remote_connection_failure|delayed_connect_error:_Connection_refused}`); the pools do not keep
    the errno, so ours stop at the reset reason."""
    got = getattr(stream, "details", None)
    if got:
        return str(got)
    if body:
        for prefix in _RESET_PREFIXES:
            if body.startswith(prefix):
                reason = body[len(prefix) :].decode("latin-1").replace(" ", "_")
                return f"upstream_reset_before_response_started{{{reason}}}"
    if flags:
        for flag, text in _FLAG_DETAILS:
            if flag in flags:
                return text
    if router is not None and router.host is not None and not getattr(router, "local", False):
        return "via_upstream"
    route = stream.route
    if route is not None and type(route.action).__name__ in ("DirectResponseAction", "RedirectAction"):
        return "direct_response"
    return "-"


_FLAG_DETAILS = (
    ("NR", "route_not_found"),
    ("NC", "cluster_not_found"),
    ("UH", "no_healthy_upstream"),
    ("UT", "upstream_response_timeout"),
    ("UO", "upstream_reset_before_response_started{overflow}"),
    ("UF", "upstream_reset_before_response_started{connection_failure}"),
    ("UC", "upstream_reset_before_response_started{connection_termination}"),
    ("FI", "fault_filter_abort"),
    ("SI", "stream_idle_timeout"),
    ("DT", "max_duration_timeout"),
    ("DC", "downstream_remote_disconnect"),
)


def log_http(stream: Any, now: float, reset: bool = False) -> None:
    """Write the access log lines of an ended stream (http/conn_manager.py Stream)."""
    st: HttpLogState | None = stream.alog
    if st is None:
        return
    stream.alog = None  # once per stream
    conn = stream.conn
    head = stream.head
    rec = LogRecord(st.start_ns)
    rec.method = head.method
    rec.path = head.path
    rec.authority = head.authority
    rec.scheme = head.scheme
    rec.request_headers = head
    rec.protocol = "HTTP/1.0" if head.version == b"1.0" else "HTTP/1.1"
    flags = stream.flags
    if reset and not stream.resp_started:
        flags = [*(flags or ()), "DC"]
    rec.response_flags = flags
    rec.response_code = stream.status if stream.resp_started else 0
    rec.bytes_received = st.rx
    rec.bytes_sent = st.tx
    rec.duration = now - st.start
    if st.req_end is not None:
        rec.request_duration = st.req_end - st.start
    if st.resp_start is not None:
        rec.response_duration = st.resp_start - st.start
    if st.resp_headers is not None:
        rec.response_headers = _Headers(st.resp_headers)
    router = None
    for f in stream.filters:
        if hasattr(f, "cluster") and hasattr(f, "host"):
            router = f
    if router is not None:
        if router.cluster is not None:
            rec.upstream_cluster = rec.upstream_cluster_raw = router.cluster.name
        if router.host is not None:
            rec.upstream_host = str(router.host.address)
    rec.upstream_local = st.upstream_local
    route = stream.route
    if route is not None:
        rec.route_name = route.name
    rec.response_code_details = _details(stream, flags, router, st.local_body)
    rid = stream.request_id
    # Envoy's UUID request id extension: char 14 'a' is the ServiceForced trace reason, set only when
    # the HCM has tracing (http/trace_reason.py).
    if len(rid) > 14 and rid[14] == 0x61 and getattr(stream.rt.cfg, "tracing", None) is not None:
        rec.trace_forced = True
    rec.downstream_local = conn.local_addr.decode() or None
    rec.downstream_remote = rec.downstream_direct_remote = conn.peer_addr.decode() or None
    rec.requested_server_name = getattr(conn, "requested_server_name", None)
    rec.peer = getattr(conn, "peer_identity", None)
    loggers: AccessLoggers = stream.rt.access_logs  # (not None: the stream has log state)
    if loggers.needs_tls:
        _tls_facts(rec, conn.transport)
    loggers.emit(rec)


class TcpLogState:
    """What a tcp_proxy connection with access logs keeps for its record."""

    __slots__ = ("cluster", "flags", "rx", "start", "start_ns", "tx", "upstream_local")

    def __init__(self, start: float) -> None:
        self.start_ns = time.time_ns()
        self.start = start
        self.rx = 0
        self.tx = 0
        self.cluster: str | None = None
        self.flags: list[str] | None = None
        self.upstream_local: str | None = None


def addr_text(name: object) -> str | None:
    if isinstance(name, tuple):
        host = str(name[0])
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
    return str(name) if name else None


def log_tcp(conn: Any, now: float) -> None:
    """Write the access log lines of a closed tcp_proxy connection (l4/tcp_proxy.py)."""
    st: TcpLogState | None = conn.alog
    if st is None:
        return
    conn.alog = None
    rec = LogRecord(st.start_ns)
    rec.bytes_received = st.rx
    rec.bytes_sent = st.tx
    rec.duration = now - st.start
    rec.response_flags = st.flags
    rec.upstream_cluster = rec.upstream_cluster_raw = st.cluster
    host = conn.host
    if host is not None:
        rec.upstream_host = str(host.address)
    rec.upstream_local = st.upstream_local
    t = conn.transport
    if t is not None:
        rec.downstream_local = addr_text(t.get_extra_info("sockname"))
        rec.downstream_remote = rec.downstream_direct_remote = addr_text(t.get_extra_info("peername"))
    rec.requested_server_name = conn.requested_server_name
    rec.peer = conn.peer_identity
    loggers: AccessLoggers = conn.rt.access_logs
    if loggers.needs_tls:
        _tls_facts(rec, t)
    loggers.emit(rec)


def log_no_chain(configs: tuple[AccessLog, ...], local: object, remote: object, server_name: str) -> None:
    """Listener.access_log: a connection closed because no filter chain matched (Envoy's NR line,
    written by the listener; listener/accept.py calls this only when the listener has logs)."""
    loggers = build(configs)
    if loggers is None:
        return
    rec = LogRecord(time.time_ns())
    rec.response_flags = ["NR"]
    rec.duration = 0.0
    rec.downstream_local = str(local) or None
    rec.downstream_remote = rec.downstream_direct_remote = str(remote) or None
    rec.requested_server_name = server_name or None
    loggers.emit(rec)

"""The HTTP connection manager: what happens to one request between the codec and the router.

`HcmRuntime` is built once per listener config per worker (route table, filter factories, stats
handles, canned bytes, and the flags that keep unconfigured features off the request path); a
connection keeps the runtime it was accepted with (Envoy's snapped route config).  `Stream` is one
request/response exchange: it runs the decoder filters, applies its route's stream timers
(idle_timeout, max_stream_duration), owns the response framing (date, server, connection,
content-length vs chunked) and tells the connection when it is done.  Local replies come from
http/local_reply.py; this module only decides when, and turns them into gRPC ones for gRPC
requests (HTTP 200, grpc-status, grpc-message) as Envoy's sendLocalReply does."""

from __future__ import annotations

import functools
import random
from typing import TYPE_CHECKING, Any

from sidecar.http import b3, date, local_reply, trace_reason, upgrade
from sidecar.http.codec_h1 import HOP_BY_HOP_RESPONSE, LAST_CHUNK, encode_chunk, encode_response_head
from sidecar.http.edge import (
    InternalAddresses,
    append_via,
    mutate_request_headers,
    mutate_request_headers_trusting,
)
from sidecar.http.events import Headers, RequestHead
from sidecar.http.filters.base import STOP
from sidecar.http.filters.registry import active_filters
from sidecar.http.timeouts import Timeouts, format_grpc_timeout, grpc_timeout_ms, ms, stream_duration_ms
from sidecar.model.listener import (
    HeadersWithUnderscoresAction,
    HttpConnectionManager,
    ServerHeaderTransformation,
)
from sidecar.model.route import Route, RouteAction, VirtualHost
from sidecar.observe import access_log_emit
from sidecar.observe.stats import Stats, shared_block

if TYPE_CHECKING:
    from sidecar.http.protocol import Http1ServerConnection
    from sidecar.model.tracing import Tracing
    from sidecar.upstream.cluster_manager import ClusterManager

def _weights_mutate(route: Route) -> bool:
    ws = getattr(route.action, "weighted_clusters", ())
    return any(not w.mutations.empty for w in ws)


def _route_actions(cfg: HttpConnectionManager) -> list[RouteAction]:
    return [r.action for vh in cfg.route_config.virtual_hosts for r in vh.routes if isinstance(r.action, RouteAction)]


def _respects_expected_timeout(cfg: HttpConnectionManager) -> bool:
    """The router filter's respect_expected_rq_timeout (envoy.extensions.filters.http.router.v3)."""
    for f in cfg.http_filters:
        if f.type_url.endswith("envoy.extensions.filters.http.router.v3.Router"):
            return bool(getattr(f.config, "respect_expected_rq_timeout", False))
    return False


def _grpc_content_type(ct: bytes) -> bool:
    """Grpc::Common::hasGrpcContentType: application/grpc, or application/grpc+... (not grpc-web)."""
    return ct.startswith(b"application/grpc") and (len(ct) == 16 or ct[16] in b"+;")


def _is_grpc(head: RequestHead) -> bool:
    ct = head.get(b"content-type")
    return ct is not None and _grpc_content_type(ct)


_rand64 = functools.partial(random.getrandbits, 64)  # Zipkin ids (http/b3.py)
_PCT_SAFE = frozenset(range(0x20, 0x7F)) - {ord("%")}


def _grpc_message(body: bytes) -> bytes:
    """Http::Utility::PercentEncoding::encode for grpc-message (RFC-free: gRPC's own rule)."""
    if all(c in _PCT_SAFE for c in body):
        return body
    return b"".join(bytes((c,)) if c in _PCT_SAFE else b"%%%02X" % c for c in body)


_HCM_COUNTERS = (
    "downstream_cx_destroy",
    "downstream_cx_http1_total",
    "downstream_cx_idle_timeout",
    "downstream_cx_protocol_error",
    "downstream_cx_total",
    "downstream_rq_1xx",
    "downstream_rq_2xx",
    "downstream_rq_3xx",
    "downstream_rq_4xx",
    "downstream_rq_5xx",
    "downstream_rq_completed",
    "downstream_rq_http1_total",
    "downstream_rq_idle_timeout",
    "downstream_rq_max_duration_reached",
    "downstream_rq_rx_reset",
    "downstream_rq_timeout",
    "downstream_rq_too_large",
    "downstream_rq_total",
    "downstream_rq_tx_reset",
    "downstream_rq_ws_on_non_ws_route",
    "no_cluster",
    "no_route",
    "rq_direct_response",
    "rq_redirect",
    "rq_total",
)
_HCM_GAUGES = ("downstream_cx_active", "downstream_cx_http1_active", "downstream_rq_active")


CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
_EMPTY_LENGTH_END = b"content-length: 0\r\n\r\n"
# Response headers the connection manager must notice (send_upstream_head).
_RESPONSE_SPECIAL = HOP_BY_HOP_RESPONSE | {b"date", b"server", b"content-length"}


class HcmStats:
    """`http.<stat_prefix>.*` for one connection manager, as plain ints (observe/stats.py block)."""

    __slots__ = (*_HCM_COUNTERS, *_HCM_GAUGES)
    downstream_cx_destroy: int
    downstream_cx_http1_total: int
    downstream_cx_idle_timeout: int
    downstream_cx_protocol_error: int
    downstream_cx_total: int
    downstream_rq_1xx: int
    downstream_rq_2xx: int
    downstream_rq_3xx: int
    downstream_rq_4xx: int
    downstream_rq_5xx: int
    downstream_rq_completed: int
    downstream_rq_http1_total: int
    downstream_rq_idle_timeout: int
    downstream_rq_max_duration_reached: int
    downstream_rq_rx_reset: int
    downstream_rq_timeout: int
    downstream_rq_too_large: int
    downstream_rq_total: int
    downstream_rq_tx_reset: int
    downstream_rq_ws_on_non_ws_route: int
    no_cluster: int
    no_route: int
    rq_direct_response: int
    rq_redirect: int
    rq_total: int
    downstream_cx_active: int
    downstream_cx_http1_active: int
    downstream_rq_active: int

    def __init__(self, stats: Stats, prefix: str) -> None:
        for attr in self.__slots__:
            setattr(self, attr, 0)
        stats.block(self, f"http.{prefix}.", _HCM_COUNTERS, _HCM_GAUGES)

    def response(self, status: int) -> None:
        self.downstream_rq_completed += 1
        k = status // 100
        if k == 2:
            self.downstream_rq_2xx += 1
        elif k == 5:
            self.downstream_rq_5xx += 1
        elif k == 4:
            self.downstream_rq_4xx += 1
        elif k == 3:
            self.downstream_rq_3xx += 1
        elif k == 1:
            self.downstream_rq_1xx += 1


class HcmRuntime:
    """Everything a connection of one HCM needs, built off the hot path."""

    __slots__ = (
        "access_logs",
        "all_factories",
        "buffer_limit",
        "cfg",
        "cluster_manager",
        "default_zipkin",
        "filter_factories",
        "has_mutations",
        "hcm_duration_ms",
        "internal_only",
        "loop",
        "max_header_bytes",
        "max_headers_count",
        "respect_expected",
        "rid_response",
        "route_config",
        "route_duration",
        "route_idle",
        "route_timers",
        "server",
        "server_mode",
        "stats",
        "stream_timers",
        "table",
        "timeouts",
        "trust",
        "trusting",
        "underscores",
        "via",
    )

    def __init__(
        self,
        cfg: HttpConnectionManager,
        cluster_manager: ClusterManager,
        stats: Stats,
        loop: Any,
        filter_factories: tuple[Any, ...],
        buffer_limit: int,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.cfg = cfg
        self.cluster_manager = cluster_manager
        self.loop = loop
        # The bootstrap's tracing.http Zipkin provider (model.tracing.Zipkin), for traced connection
        # managers without a provider of their own; set by the ListenerManager.
        self.default_zipkin: Any = None
        # HttpConnectionManager.access_log (None when there are none: streams then keep no log state).
        self.access_logs = access_log_emit.build(getattr(cfg, "access_log", ()))
        self.route_config = cfg.route_config
        self.table = cfg.route_config.table
        # One HcmStats per stat_prefix, shared by every chain that names it (Envoy's stats are by name).
        self.stats = shared_block(stats, f"http.{cfg.stat_prefix}.", lambda: HcmStats(stats, cfg.stat_prefix))
        self.server = cfg.server_name.encode()
        self.server_mode = cfg.server_header_transformation
        self.max_header_bytes = cfg.max_request_headers_kb * 1024
        self.max_headers_count = cfg.max_headers_count
        # None when headers with underscores are simply allowed (the default): one test per header.
        u = cfg.headers_with_underscores_action
        self.underscores = None if u is HeadersWithUnderscoresAction.ALLOW else u
        # Every configured filter's factory, and those the current route configuration needs
        # (http/filters/registry.active_filters: a 0% fault filter no route uses is left out).
        self.all_factories = filter_factories
        self.filter_factories = active_filters(filter_factories, cfg.route_config)
        self.buffer_limit = buffer_limit
        self.timeouts = timeouts if timeouts is not None else Timeouts(loop)
        self.via = cfg.via.encode()
        actions = _route_actions(cfg)
        # Routes that replace the stream idle timer or the stream duration timer for their requests.
        self.route_idle = any(a.idle_timeout is not None for a in actions)
        self.route_duration = any(a.max_stream_duration is not None for a in actions)
        self.route_timers = self.route_idle or self.route_duration
        self.hcm_duration_ms = ms(cfg.max_stream_duration)
        self.stream_timers = (
            cfg.request_headers_timeout > 0
            or cfg.request_timeout > 0
            or cfg.stream_idle_timeout > 0
            or cfg.max_stream_duration > 0
            or self.route_timers
        )
        # internal_address_config (read with getattr until model/listener.py has the field): None
        # means no request is internal, and the edge keeps its all-external fast path.
        internal = getattr(cfg, "internal_address_config", None)
        self.trust = InternalAddresses(internal) if internal is not None else None
        self.internal_only = cfg.route_config.internal_only_headers
        self.trusting = self.trust is not None or bool(self.internal_only)
        self.respect_expected = _respects_expected_timeout(cfg)
        # Whether a response may carry x-request-id (see Stream._rid_in_response).
        self.rid_response = cfg.always_set_request_id_in_response or self.trust is not None
        rc = cfg.route_config
        # Skip header-mutation work entirely when no level of this route config has any.
        self.has_mutations = not rc.mutations.empty or any(
            not vh.mutations.empty
            or any(not r.mutations.empty or _weights_mutate(r) for r in vh.routes)
            for vh in rc.virtual_hosts
        )

    def use_route_config(self, cfg: HttpConnectionManager, filter_factories: tuple[Any, ...]) -> None:
        """RDS: serve `cfg` (this runtime's config with a new route_config) to the streams that start
        from now on.  Called between events on the loop, so a request head sees one version; a
        stream keeps the Route it selected (Envoy's snapped route config)."""
        routes = HcmRuntime(
            cfg, self.cluster_manager, _NoStats(), self.loop, filter_factories, 0, self.timeouts  # type: ignore[arg-type]
        )
        for name in _ROUTE_DERIVED:
            setattr(self, name, getattr(routes, name))
        self.cfg = cfg
        self.all_factories = filter_factories
        self.filter_factories = routes.filter_factories  # remade for the new routes (active_filters)


# What use_route_config takes from a runtime built for the new route config.
_ROUTE_DERIVED = (
    "route_config", "table", "route_idle", "route_duration", "route_timers", "stream_timers",
    "internal_only", "trusting", "has_mutations",
)


class _NoStats:
    """A Stats stand-in for the throwaway runtime of use_route_config (HcmStats only calls block)."""

    def block(self, *args: Any, **kwargs: Any) -> None:
        pass


class Stream:
    """One request and its response on a downstream connection."""

    __slots__ = (
        "alog",
        "body_expected",
        "chunked_out",
        "close_after",
        "conn",
        "expect_continue",
        "filters",
        "flags",
        "head",
        "head_only",
        "host_missing",
        "internal",
        "pending",
        "refuse",
        "req_done",
        "request_id",
        "resp_done",
        "resp_started",
        "route",
        "rt",
        "started",
        "status",
        "trace_op",
        "upgrade",
        "vhost",
    )

    def __init__(self, conn: Http1ServerConnection, rt: HcmRuntime, head: RequestHead) -> None:
        self.conn = conn
        self.rt = rt
        self.head = head
        self.route: Route | None = None
        self.vhost: VirtualHost | None = None
        self.filters: tuple[Any, ...] = ()
        self.req_done = False
        self.resp_started = False
        self.resp_done = False
        self.started = False
        self.pending: list[bytes] | None = None
        self.chunked_out = False
        self.close_after = not head.keep_alive
        self.head_only = head.method == b"HEAD"
        self.body_expected = False  # set by the codec: content-length > 0 or chunked
        self.refuse = 0  # set by the codec: a status the connection manager must answer with
        self.expect_continue = False  # the request asked for `100-continue`
        self.flags: list[str] | None = None  # Envoy's response flags (%RESPONSE_FLAGS%), e.g. UF, URX
        self.host_missing = False  # no Host header at all (an empty one is allowed, RFC 9112 3.2)
        self.status = 0
        self.request_id = b""
        self.upgrade: bytes | None = None  # set by the codec: the Upgrade type of an upgrade request
        # HCM tracing and Route.decorator: x-envoy-decorator-operation for the response (b"": remove it).
        self.trace_op: bytes | None = None
        # Access log state (times, byte counts), only when the HCM has access logs.
        self.alog = access_log_emit.HttpLogState(conn.msg_begin or rt.loop.time()) if rt.access_logs else None

    # -- request side ---------------------------------------------------------------------------
    def start(self) -> None:
        """Run the request head through the filter chain (the stream is first in line)."""
        self.started = True
        rt = self.rt
        st = rt.stats
        st.downstream_rq_total += 1
        st.downstream_rq_http1_total += 1
        st.downstream_rq_active += 1
        head = self.head
        cfg = rt.cfg
        if head.version == b"1.0" and not cfg.accept_http_10:
            # Envoy's HTTP/1 codec refuses HTTP/1.0 unless accept_http_10: 426 and close.
            self.close_after = True
            self.local_reply(426, local_reply.UPGRADE_REQUIRED)
            return
        if self.host_missing:
            if head.version == b"1.0" and cfg.default_host_for_http_10:
                head.authority = cfg.default_host_for_http_10.encode()
            else:
                # RFC 9112 section 3.2: a 1.1 request without Host is a 400 (Envoy: empty body).
                self.close_after = True
                self.local_reply(400, None)
                return
        if self.expect_continue and not self.req_done:
            # Envoy answers the expectation itself when it reaches the request (proxy_100_continue
            # off); a pipelined request gets it after the responses before it.
            self.conn.write(CONTINUE_100)
        if self.refuse:
            # Refused by the codec's rules but answered by the connection manager, with an empty
            # body as Envoy does (fragment in the target: 400; upgrade without upgrade_configs: 403).
            self.local_reply(self.refuse, None, close=True)
            return
        if rt.trusting:
            # internal_address_config or internal_only_headers: the slower, general edge.  `internal`
            # is set only here (other streams never read it).
            self.request_id, self.internal = mutate_request_headers_trusting(
                head, cfg, self.conn.peer_ip, rt.trust, rt.internal_only, self.conn
            )
        else:
            self.request_id = mutate_request_headers(head, cfg, self.conn.peer_ip, self.conn)
        table = rt.table
        path = head.path
        sel = table.select_cached(head.authority, path, head) if table else None
        if sel is not None:
            self.vhost, self.route = sel
            if rt.route_timers:
                self._route_timers(sel[1])
        if cfg.tracing is not None:
            self._trace_reason(head, cfg.tracing)
        if self.upgrade is not None and not upgrade.allowed(self.upgrade, cfg.upgrade_types, self.route):
            # Not enabled by upgrade_configs (route or connection manager): Envoy's 403, empty body.
            self.local_reply(403, None, close=True)
            return
        ff = rt.filter_factories
        filters = self.filters = (ff[0](),) if len(ff) == 1 else tuple([f() for f in ff])
        # A request without a body is complete at its head (llhttp reports the end right after).
        end = not self.body_expected or (self.req_done and not self.pending)
        for f in filters:
            if f.on_request_head(self, head, end) == STOP:
                break
        if self.pending:
            pending = self.pending
            self.pending = None
            last = len(pending) - 1
            for i, chunk in enumerate(pending):
                self._decode_body(chunk, self.req_done and i == last)

    def _trace_reason(self, head: RequestHead, tracing: Tracing) -> None:
        """HCM tracing: the x-request-id trace reason (http/trace_reason.py), after route selection
        as Envoy's mutateTracingRequestHeader; with a Zipkin provider, the B3 headers (no span reported)."""
        rid = self.request_id
        new, traced = trace_reason.decide_traced(
            rid,
            head.get(b"x-client-trace-id") is not None,
            head.get(b"x-envoy-force-trace") is not None,
            tracing,
            self.rt.cfg.request_id_extension,
            random.random(),
        )
        if new is not rid:
            head.set(b"x-request-id", new)
            self.request_id = new
        zipkin = tracing.zipkin
        if zipkin is None and not tracing.provider:
            zipkin = self.rt.default_zipkin  # the bootstrap's tracing.http (Envoy's default provider)
        if zipkin is not None:  # Zipkin provider: B3 context upstream (http/b3.py), no span reported
            for name, value in b3.propagate(head.get, traced, tracing.egress,
                                            zipkin.shared_span_context, zipkin.trace_id_128bit, _rand64):
                head.set(name, value)
        route = self.route
        self.trace_op = trace_reason.decorate(head, tracing, route.decorator_operation if route else "",
                                              route is not None and route.decorator_propagate)

    def _route_timers(self, route: Route) -> None:
        """The route's idle_timeout and max_stream_duration replace the connection manager's timers
        for this stream (Envoy's refreshIdleTimeout and refreshDurationTimeout at route selection)."""
        action = route.action
        timers = self.conn.timers
        if not isinstance(action, RouteAction) or not action.stream_timers or timers is None:
            return
        if action.idle_timeout is not None:
            timers.route_idle(self, action.idle_timeout)
        msd = action.max_stream_duration
        if msd is None:
            return
        # One pass for both headers (Istio gives every route a max_stream_duration).
        head = self.head
        grpc_timeout = content_type = None
        for k, v in head.headers:
            if k == b"grpc-timeout":
                grpc_timeout = v if grpc_timeout is None else grpc_timeout + b"," + v
            elif k == b"content-type" and content_type is None:
                content_type = v
        hcm_ms = self.rt.hcm_duration_ms
        duration = stream_duration_ms(msd, hcm_ms, grpc_timeout_ms(grpc_timeout) if grpc_timeout else None)
        if content_type is not None and _grpc_content_type(content_type):
            # A gRPC request tells its upstream the deadline it gets (before the time used so far).
            if duration is not None:
                head.set(b"grpc-timeout", format_grpc_timeout(duration))
            elif hcm_ms and grpc_timeout is not None:
                head.remove(b"grpc-timeout")  # an armed duration timer switched off by the route
        if duration is None and not hcm_ms:
            return  # no timer either way
        start = self.conn.msg_begin or self.rt.loop.time()
        timers.route_duration(self, None if duration is None else start + duration / 1000)

    def on_body(self, chunk: bytes) -> None:
        if self.alog is not None:
            self.alog.rx += len(chunk)
        if not self.started:
            if self.pending is None:
                self.pending = [chunk]
            else:
                self.pending.append(chunk)
            return
        self._decode_body(chunk, False)

    def on_end(self) -> None:
        self.req_done = True
        if self.alog is not None:
            self.alog.req_end = self.rt.loop.time()
        if not self.started:
            return
        if self.resp_done:
            self._finish()
            return
        if self.body_expected:
            self._decode_body(b"", True)  # (a body-less request already ended at its head)

    def _decode_body(self, chunk: bytes, end: bool) -> None:
        if self.resp_done:
            return
        for f in self.filters:
            if f.on_request_body(self, chunk, end) == STOP:
                break

    # -- response side --------------------------------------------------------------------------
    def send_head(self, status: int, headers: Headers, end: bool) -> None:
        """Response head from the router (upstream) or a filter; adds date/server/framing."""
        if self.resp_started:
            return
        self.resp_started = True
        self.status = status
        has_date = False
        has_length = False
        server_at = -1
        for i, (k, _) in enumerate(headers):
            if k == b"date":
                has_date = True
            elif k == b"server":
                server_at = i
            elif k == b"content-length":
                has_length = True
        self._finish_head(status, headers, end, has_date, server_at, has_length)

    def _finish_head(
        self, status: int, headers: Headers, end: bool, has_date: bool, server_at: int, has_length: bool
    ) -> None:
        rt = self.rt
        if rt.via:
            append_via(headers, rt.via)
        if self.trace_op is not None:
            trace_reason.decorate_response(headers, self.trace_op)
        if not has_date:
            headers.append((b"date", date.current()))
        mode = rt.server_mode
        if mode is ServerHeaderTransformation.OVERWRITE:
            if server_at >= 0:
                headers[server_at] = (b"server", rt.server)
            else:
                headers.append((b"server", rt.server))
        elif mode is ServerHeaderTransformation.APPEND_IF_ABSENT and server_at < 0:
            headers.append((b"server", rt.server))
        if rt.rid_response and self.request_id and self._rid_in_response():
            headers.append((b"x-request-id", self.request_id))
        conn = self.conn
        if conn.draining:
            self.close_after = True
        http10 = self.head.version == b"1.0"
        if self.close_after:
            conn.stop_after = True
            if status != 101:  # an upgraded stream: the relay ends with the connection
                headers.append((b"connection", b"close"))
        elif http10:
            headers.append((b"connection", b"keep-alive"))  # RFC 9112 section 9.3: 1.0 keep-alive is opt-in
        if not end and not has_length and not self.head_only and status not in (204, 304, 101):
            if http10:
                # A 1.0 client can't read chunked: close-delimited body (RFC 9112 section 6.3).
                if not self.close_after:
                    self.close_after = True
                    headers[-1] = (b"connection", b"close")
            else:
                self.chunked_out = True
                headers.append((b"transfer-encoding", b"chunked"))
        elif end and not has_length and status not in (204, 304) and not (100 <= status < 200):
            headers.append((b"content-length", b"0"))
        if self.alog is not None:
            access_log_emit.response_head(self, headers)
        conn.write(encode_response_head(status, headers, http10))
        if end:
            self._response_complete()

    def send_upstream_head(self, status: int, upstream: Headers, service_time: bytes) -> None:
        """The router's common case (no header mutations configured): one pass over the upstream's
        headers drops hop-by-hop ones and notes date/server/content-length, then the same framing
        as send_head.  Kept byte-for-byte equal to send_head's output by the differential tests."""
        if self.resp_started:
            return
        self.resp_started = True
        self.status = status
        headers: Headers = []
        append = headers.append
        has_date = has_length = False
        server_at = -1
        for h in upstream:
            k = h[0]
            if k in _RESPONSE_SPECIAL:
                if k in HOP_BY_HOP_RESPONSE:
                    continue
                if k == b"date":
                    has_date = True
                elif k == b"server":
                    server_at = len(headers)
                else:
                    has_length = True
            append(h)
        append((b"x-envoy-upstream-service-time", service_time))
        self._finish_head(status, headers, False, has_date, server_at, has_length)

    def send_body(self, data: bytes, end: bool) -> None:
        if self.resp_done:
            return
        if data and not self.head_only:
            if self.alog is not None:
                self.alog.tx += len(data)
            self.conn.write(encode_chunk(data) if self.chunked_out else data)
        if end:
            if self.chunked_out and not self.head_only:
                self.conn.write(LAST_CHUNK)
            self._response_complete()

    def flag(self, code: str) -> None:
        """Record an Envoy response flag (UH, UF, UC, URX, UT, NR, NC, SI, DPE, ...) for this request."""
        flags = self.flags
        if flags is None:
            self.flags = [code]
        elif code not in flags:
            flags.append(code)

    @property
    def response_flags(self) -> str:
        """%RESPONSE_FLAGS% as Envoy prints it: comma-separated short codes, or "-"."""
        return ",".join(self.flags) if self.flags else "-"

    def _rid_in_response(self) -> bool:
        """x-request-id goes back with the response: always_set_request_id_in_response, or an
        internal request asking for a trace (mutateResponseHeaders: x-envoy-force-trace)."""
        if self.rt.cfg.always_set_request_id_in_response:
            return True
        return getattr(self, "internal", False) and self.head.get(b"x-envoy-force-trace") is not None

    def local_reply(
        self,
        status: int,
        body: bytes | None,
        extra: Headers | None = None,
        close: bool = False,
        grpc_status: int | None = None,
    ) -> None:
        """Answer from the proxy itself (Envoy's sendLocalReply); ends the filter chain.  A gRPC
        request gets it as gRPC: HTTP 200, grpc-status (`grpc_status`, else the HTTP status mapped)
        and the body as grpc-message."""
        if self.resp_started:
            # Too late for a reply: reset the downstream (Envoy resets the stream).
            self.rt.stats.downstream_rq_tx_reset += 1
            self.conn.abort()
            self._response_complete()
            return
        if _is_grpc(self.head) and not any(k == b"grpc-status" for k, _ in extra or ()):
            from sidecar.http.filters.fault import grpc_status_for_http  # Grpc::Utility::httpToGrpcStatus

            code = grpc_status if grpc_status is not None else grpc_status_for_http(status)
            extra = [*(extra or ()), (b"content-type", b"application/grpc"), (b"grpc-status", b"%d" % code)]
            if body and not self.head_only:
                extra.append((b"grpc-message", _grpc_message(body)))
            status, body = 200, None
        self.resp_started = True
        self.status = status
        if close or (self.body_expected and not self.req_done) or self.conn.draining:
            # The rest of the request body was not read: the connection can't be reused.
            self.close_after = True
        if self.close_after:
            self.conn.stop_after = True
        rt = self.rt
        server = rt.server if rt.server_mode is not ServerHeaderTransformation.PASS_THROUGH else None
        if rt.rid_response and self.request_id and self._rid_in_response():
            extra = [*(extra or ()), (b"x-request-id", self.request_id)]
        if rt.via:
            extra = list(extra or ())
            append_via(extra, rt.via)
        if self.trace_op:
            extra = [*(extra or ()), (trace_reason.DECORATOR, self.trace_op)]  # Route.decorator, Ingress
        # A refused 1.0 request (426) is answered in 1.1, an accepted one in 1.0 (Envoy's codec).
        http10 = self.head.version == b"1.0" and rt.cfg.accept_http_10
        data = local_reply.encode(
            status, body, server, self.close_after, extra, head_only=self.head_only, http10=http10,
            keep_alive=http10 and not self.close_after,
        )
        if status == 204 and data.endswith(_EMPTY_LENGTH_END):
            # A 204 has no content-length (Envoy's codec; x-envoy-upstream-rq-timeout-alt-response).
            data = data[: -len(_EMPTY_LENGTH_END)] + b"\r\n"
        if self.alog is not None:
            self.alog.local_body = body  # RESPONSE_CODE_DETAILS reads the reset reason off it
            if body and not self.head_only:
                self.alog.tx += len(body)
        self.conn.write(data)
        self._response_complete()

    def _response_complete(self) -> None:
        if self.resp_done:
            return
        self.resp_done = True
        st = self.rt.stats
        st.downstream_rq_active -= 1
        st.response(self.status)
        if self.req_done or self.close_after:
            self._finish()

    def _finish(self) -> None:
        if self.alog is not None:
            access_log_emit.log_http(self, self.rt.loop.time())
        for f in self.filters:
            f.on_destroy(self)
        # Filters point back at the stream: drop them so refcounting frees both at once instead of
        # leaving a cycle for the garbage collector (one per request adds up).
        self.filters = ()
        self.conn.stream_done(self)

    def timeout(self, body: bytes, always_408: bool) -> None:
        """A stream timer fired (http/stream_timers.py): Envoy's 408 while the request is still
        arriving, 504 while waiting on the upstream, a reset once the response has started."""
        rt = self.rt
        # Envoy's flags: SI for stream_idle_timeout, DT for max_stream_duration; each its counter.
        if body == b"stream timeout":
            rt.stats.downstream_rq_idle_timeout += 1
            self.flag("SI")
        elif body.startswith(b"downstream duration"):
            rt.stats.downstream_rq_max_duration_reached += 1
            self.flag("DT")
        else:
            rt.stats.downstream_rq_timeout += 1
        if self.resp_started:
            self.conn.abort()
            return
        filters = self.filters
        self.filters = ()
        for f in filters:
            f.on_destroy(self)  # the router gives up its upstream request
        # Envoy's duration timer answers a gRPC request with DEADLINE_EXCEEDED (4).
        grpc = 4 if body == b"downstream duration timeout" else None
        if always_408 or not self.req_done:
            self.local_reply(408, body, close=True, grpc_status=grpc)
        else:
            self.local_reply(504, body, grpc_status=grpc)

    def reset(self) -> None:
        """The downstream went away: tell the filters (the router resets its upstream)."""
        if self.alog is not None:
            access_log_emit.log_http(self, self.rt.loop.time(), reset=True)
        if not self.resp_done:
            self.resp_done = True
            st = self.rt.stats
            st.downstream_rq_active -= 1
            st.downstream_rq_rx_reset += 1
        for f in self.filters:
            f.on_destroy(self)
        self.filters = ()

    # -- resume_request (added for the fault filter's delay, issue 3; no stream state of its own) --
    def resume_request(self, after: Any, end: bool, held: list[tuple[bytes, bool]] | None = None) -> None:
        """Continue a request that filter `after` stopped (its on_request_head returned STOP): the
        head (`end` as that filter saw it), then the body chunks it held meanwhile, go through the
        filters after it (Envoy's continueDecoding)."""
        if self.resp_done:
            return
        filters = self.filters
        try:
            rest = filters[filters.index(after) + 1 :]
        except ValueError:
            return  # the filters are gone (reset or timeout): nothing to continue
        head = self.head
        for f in rest:
            if f.on_request_head(self, head, end) == STOP:
                break
        for chunk, last in held or ():
            if self.resp_done:
                return
            for f in rest:
                if f.on_request_body(self, chunk, last) == STOP:
                    break
    # -- end resume_request ------------------------------------------------------------------------

    # -- flow control (called by the connection) --------------------------------------------------
    def on_downstream_pause(self) -> None:
        for f in self.filters:
            p = getattr(f, "on_downstream_pause", None)
            if p is not None:
                p()

    def on_downstream_resume(self) -> None:
        for f in self.filters:
            p = getattr(f, "on_downstream_resume", None)
            if p is not None:
                p()

"""envoy.filters.http.router: the terminal filter that forwards a request to a cluster.

It applies the route's action (direct response, redirect, or forwarding with rewrites and header
mutations), picks a host, borrows a pooled connection, streams the body both ways with flow control
and arms the route timeout and the per-try timers (per_try_timeout, per_try_idle_timeout).  An
internal request (http/edge.py) may steer retries and timeouts with Envoy's request headers
(`_steer`).  Route choice itself is routing/table.py; host choice is upstream/."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import TYPE_CHECKING

from sidecar.http import local_reply, upgrade
from sidecar.http.codec_h1 import HOP_BY_HOP_RESPONSE, LAST_CHUNK, encode_chunk, encode_request_head
from sidecar.http.edge import forwardable
from sidecar.http.events import Headers, RequestHead, ResponseHead
from sidecar.http.filters.base import STOP, PassThrough
from sidecar.http.filters.router_retry import _EXPECTED, RetryAttempts, _Extra
from sidecar.http.filters.shadow import ShadowRequest, shadow_authority
from sidecar.http.grpc_timeouts import global_timeout_ms, grpc_content_type, grpc_timeouts
from sidecar.http.header_mutation import apply_request_mutations, apply_response_mutations
from sidecar.http.timeouts import Deadline, expected_timeout_ms, format_grpc_timeout
from sidecar.http.timeouts import ms as to_ms
from sidecar.model.retry import RetryPolicy
from sidecar.model.route import (
    ClusterWeight,
    DirectResponseAction,
    HashPolicy,
    RedirectAction,
    Route,
    RouteAction,
)
from sidecar.routing import rewrite, weighted
from sidecar.upstream.outlier import LOCAL_ORIGIN_FAILURE
from sidecar.upstream.retry import Outcome, reset_delay

if TYPE_CHECKING:
    from sidecar.http.conn_manager import Stream
    from sidecar.http.protocol import Http1ServerConnection
    from sidecar.upstream.cluster_manager import ClusterState, Host
    from sidecar.upstream.pools.http1 import Http1Pool, Http1UpstreamConnection

_monotonic = time.monotonic
_getrandbits = random.getrandbits


def _grpc_timeout(head: RequestHead) -> bytes | None:
    """The grpc-timeout header; repeated, its values joined with ',' (as Envoy reads it)."""
    raw = None
    for k, v in head.headers:
        if k == b"grpc-timeout":
            raw = v if raw is None else raw + b"," + v
    return raw


class Router(RetryAttempts, PassThrough):
    __slots__ = (
        "attempt_headers",
        "backoff_timer",
        "body_chunked",
        "cluster",
        "conn",
        "counted",
        "counted_active",
        "done",
        "downstream",
        "extra",
        "hash_key",
        "host",
        "paused_downstream",
        "pending",
        "pending_bytes",
        "per_try",
        "replay",
        "replay_bytes",
        "request_complete",
        "retries_done",
        "retry",
        "retry_slot",
        "sent_at",
        "shadows",
        "started_at",
        "stream",
        "timeout",
        "timer",
        "tried",
        "tries",
        "weight",
    )
    # `extra` (an _Extra, made by _extra()) is set only for requests using the rarer features; it
    # is read with getattr where it may be absent, so that other requests never pay for it.

    def __init__(self) -> None:
        self.stream: Stream | None = None
        self.downstream: Http1ServerConnection | None = None
        self.cluster: ClusterState | None = None
        self.host: Host | None = None
        self.conn: Http1UpstreamConnection | None = None
        self.pending: list[bytes] | None = None
        self.pending_bytes = 0
        self.body_chunked = False
        self.done = False
        self.timer: Deadline | None = None
        self.timeout = 0.0
        self.sent_at = 0.0
        self.paused_downstream = False
        # True once the whole request went to the upstream: an upstream connection that answered
        # before that is mid-request and must not go back to the pool.
        self.request_complete = False
        self.hash_key: int | None = None  # the route's hash_policy value (hashing clusters)
        # request_mirror_policies chosen for this request: (cluster name, encoded head), then the body.
        self.shadows: list[bytes | tuple[str, bytes]] | None = None
        self.counted = False  # holds one of the cluster's max_requests
        self.counted_active = False  # counted in upstream_rq_active / host rq_active
        self.retry_slot = False  # holds one of the cluster's max_retries
        self.started_at = 0.0  # when the global timeout started (the request was complete)
        # Retries (upstream/retry.py): the policy, what was sent (for replay), the hosts tried.
        self.retry: RetryPolicy | None = None
        self.retries_done = 0
        self.replay: list[bytes] | None = None
        self.replay_bytes = 0
        self.tried: list[Host] | None = None
        self.per_try: Deadline | None = None
        # (per_try_timeout, per_try_idle_timeout) in seconds when either is on, else None.
        self.tries: tuple[float, float] | None = None
        self.backoff_timer: asyncio.TimerHandle | None = None
        # (method, path, authority, headers) when each attempt re-encodes its head (attempt count).
        self.attempt_headers: tuple[bytes, bytes, bytes, Headers] | None = None
        self.weight: ClusterWeight | None = None

    # -- request ------------------------------------------------------------------------------------
    def _grpc_timeouts(self, action: RouteAction, head: RequestHead) -> bool:
        """RouteAction.max_grpc_timeout (http/grpc_timeouts.py): for a gRPC request, the global and
        per-try timeouts from its grpc-timeout header, announced in x-envoy-expected-rq-timeout-ms
        and grpc-timeout.  False (nothing done) for any other request."""
        ct = head.get(b"content-type")
        if ct is None or not grpc_content_type(ct):
            return False
        raw = _grpc_timeout(head)
        retry = action.retry_policy
        per_try_cfg = retry.per_try_timeout if retry is not None else 0.0
        assert action.max_grpc_timeout is not None  # grpc_timeouts says so
        global_ms, per_try_ms, announce = grpc_timeouts(
            action.max_grpc_timeout, action.grpc_timeout_offset, per_try_cfg, raw
        )
        self.timeout = global_ms / 1000
        per_try_idle = retry.per_try_idle_timeout if retry is not None else 0.0
        self.tries = (per_try_ms / 1000, per_try_idle) if per_try_ms or per_try_idle else None
        if announce is not None:
            head.headers.append((_EXPECTED, b"%d" % (per_try_ms or global_ms)))
            head.set(b"grpc-timeout", announce)
        return True

    def _steer_grpc(
        self, head: RequestHead, action: RouteAction, retry: RetryPolicy | None, respect_expected: bool
    ) -> RetryPolicy | None:
        """An internal gRPC request on a max_grpc_timeout route: its grpc-timeout is the base that its
        x-envoy-* timeout headers may override (finalTimeout's order), and grpc-timeout announces
        what the attempt is expected to take (setTimeoutHeaders)."""
        ct = head.get(b"content-type")
        if ct is None or not grpc_content_type(ct):
            return self._steer(head, action, retry, respect_expected)
        assert action.max_grpc_timeout is not None
        base = global_timeout_ms(action.max_grpc_timeout, action.grpc_timeout_offset, _grpc_timeout(head))
        retry = self._steer(head, dataclasses.replace(action, timeout=base / 1000), retry, respect_expected)
        per_try = self.tries[0] if self.tries is not None else 0.0
        extra: _Extra | None = getattr(self, "extra", None)
        expected = expected_timeout_ms(to_ms(self.timeout), to_ms(per_try), 0, extra is not None and extra.hedging)
        if expected:
            head.set(b"grpc-timeout", format_grpc_timeout(expected))
        return retry

    def on_request_head(self, stream: Stream, head: RequestHead, end: bool) -> int:
        self.stream = stream
        self.downstream = stream.conn
        rt = stream.rt
        route = stream.route
        if route is None:
            stream.flag("NR")
            rt.stats.no_route += 1
            stream.local_reply(404, None)
            return STOP
        action = route.action
        t = type(action)
        if t is not RouteAction:
            if t is DirectResponseAction:
                assert isinstance(action, DirectResponseAction)
                rt.stats.rq_direct_response += 1
                extra: Headers = []
                apply_response_mutations(extra, stream, None)
                stream.local_reply(action.status, action.body, extra or None)
                return STOP
            assert isinstance(action, RedirectAction)
            # Envoy counts redirects under rq_direct_response too (rq_redirect stays 0).
            rt.stats.rq_direct_response += 1
            xfp = head.get(b"x-forwarded-proto")
            location = rewrite.redirect_location(
                action,
                head.scheme.decode(),
                head.authority.decode("latin-1"),
                head.path.decode("latin-1"),
                route,
                xfp.decode("latin-1") if xfp is not None else None,
            )
            extra = [(b"location", location.encode("latin-1"))]
            apply_response_mutations(extra, stream, None)
            stream.local_reply(action.response_code, None, extra)
            return STOP
        assert isinstance(action, RouteAction)
        cw = None
        if action.plain:
            name = action.cluster
        elif action.weighted_clusters:
            cw = weighted.pick(action.weighted_clusters, action.total_weight, _getrandbits(32))
            name = cw.name
        elif action.cluster_header:
            v = head.get(action.cluster_header.encode())
            name = v.decode("latin-1") if v is not None else ""
        else:
            name = action.cluster
        self.weight = cw
        cluster = rt.cluster_manager.clusters.get(name)
        if cluster is None:
            stream.flag("NC")
            rt.stats.no_cluster += 1
            stream.local_reply(action.cluster_not_found_response_code, None)
            return STOP
        self.cluster = cluster
        od = cluster.original_dst
        if od is not None:
            # ORIGINAL_DST (Passthrough/InboundPassthrough): the connection's original destination,
            # or original_dst_lb_config.use_http_header's value when configured.
            hdr = od.header
            host = od.pick(getattr(stream.conn, "original_dst", None), head.get(hdr) if hdr is not None else None)
        elif cluster.hashing:
            self.hash_key = self._hash_key(action, head)
            host = cluster.pick(self.hash_key)
        else:
            host = cluster.pick()
        if host is None:
            stream.flag("UH")
            cluster.stats.upstream_cx_none_healthy += 1
            self._reply(503, local_reply.NO_HEALTHY_UPSTREAM)
            return STOP
        self.host = host
        if not action.plain:
            self._rewrite(route, action, head, host, cw)
        retry = action.retry_policy
        if rt.trust is not None and getattr(stream, "internal", False):
            # An internal request: its x-envoy-* headers steer this router (before the route's
            # header mutations, as Envoy's finalTimeout runs before finalizeRequestHeaders).
            if action.grpc_timeouts:
                retry = self._steer_grpc(head, action, retry, rt.respect_expected)
            else:
                retry = self._steer(head, action, retry, rt.respect_expected)
        elif action.grpc_timeouts and self._grpc_timeouts(action, head):
            pass  # max_grpc_timeout on a gRPC request: its grpc-timeout sets the timeouts
        else:
            self.timeout = action.upstream_timeout
            self.tries = action.try_timers
            if action.timeout_header:
                # The per-try timeout when it is the tighter one, else the route timeout.  Control
                # headers from an external client were stripped at the edge (http/edge.py): append.
                head.headers.append((_EXPECTED, action.timeout_header))
        if rt.has_mutations:
            apply_request_mutations(head, stream, cw)
        out, chunked = forwardable(head.headers)
        if stream.upgrade is not None:
            # An upgrade (http/upgrade.py): Connection/Upgrade go upstream verbatim; no retries.
            out = upgrade.request_headers(head.headers, out)
            retry = None
        if chunked:
            out = [*out, (b"transfer-encoding", b"chunked")]
            self.body_chunked = True
        vhost = stream.vhost
        if retry is not None or (vhost is not None and vhost.include_request_attempt_count):
            # A retry re-encodes the head: its own attempt number and what is left of the timeout.
            self.attempt_headers = (head.method, head.path, head.authority, out)
            if vhost is not None and vhost.include_request_attempt_count:
                out = [*out, (b"x-envoy-attempt-count", b"1")]
        head_bytes = encode_request_head(head.method, head.path, head.authority, out)
        self.pending = [head_bytes]
        if action.mirror_policies:
            self._choose_shadows(action, head, out)
        if retry is not None:
            self.retry = retry
            self.replay = [head_bytes]
            if retry.avoid_previous_hosts:
                self.tried = [host]
        breaker = cluster.breaker
        if breaker.requests >= breaker.limits.max_requests:
            # circuit_breakers max_requests: Envoy's overflow reply, counted as a pending overflow.
            cluster.stats.upstream_rq_pending_overflow += 1
            self.on_upstream_overflow()
            return STOP
        breaker.requests += 1
        self.counted = True
        cs = cluster.stats
        cs.upstream_rq_total += 1
        cs.upstream_rq_active += 1
        host.rq_total += 1
        host.rq_active += 1
        self.counted_active = True
        if end:
            self._request_complete()
        self.pool_of(host).acquire(self)
        return STOP

    def pool_of(self, host: Host) -> Http1Pool:
        """The host's pool, or its pool for istio.alpn's upstream ALPN (model.istio.AlpnOverride;
        None on every connection manager without the filter: one attribute test)."""
        stream = self.stream
        alpn = stream.rt.cfg.upstream_alpn if stream is not None else None
        if alpn is None or not host.cluster.config.istio_alpn_override:
            return host.pool
        return host.pool_for(alpn.http10 if stream.head.version == b"1.0" else alpn.http11)  # type: ignore[union-attr]

    def _choose_shadows(self, action: RouteAction, head: RequestHead, out: Headers) -> None:
        """Which mirror policies this request hits (runtime_fraction), each with its shadow head."""
        shadows: list[bytes | tuple[str, bytes]] = []
        for mp in action.mirror_policies:
            if _getrandbits(32) % mp.denominator < mp.numerator:
                authority = shadow_authority(head.authority) if mp.host_suffix else head.authority
                shadows.append((mp.cluster, encode_request_head(head.method, head.path, authority, out)))
        if shadows:
            self.shadows = shadows

    def _send_shadows(self) -> None:
        """The downstream request is complete: mirror it (Envoy shadows only whole requests)."""
        shadows = self.shadows
        stream = self.stream
        self.shadows = None
        if shadows is None or stream is None:
            return
        heads = [s for s in shadows if isinstance(s, tuple)]
        body = [s for s in shadows if isinstance(s, bytes)]
        cm = stream.rt.cluster_manager
        for name, head in heads:
            cluster = cm.clusters.get(name)
            host = cluster.pick() if cluster is not None else None
            if cluster is None or host is None:
                continue
            ShadowRequest(cluster, host, [head, *body]).start(stream.rt.loop, self.timeout)

    def on_upstream_overflow(self) -> None:
        """A circuit breaker said no: 503 `... reset reason: overflow` with x-envoy-overloaded (UO)."""
        stream = self.stream
        assert stream is not None
        stream.flag("UO")
        self._cleanup()
        if self.cluster is not None:
            self.cluster.stats.response(503)
        extra: Headers = [(b"x-envoy-overloaded", b"true")]
        apply_response_mutations(extra, stream, self.weight)
        stream.local_reply(503, local_reply.UPSTREAM_RESET_PREFIX + local_reply.RESET_OVERFLOW, extra)

    def _hash_key(self, action: RouteAction, head: RequestHead) -> int | None:
        """RING_HASH / MAGLEV only: the route's hash_policy over this request (None: a random host)."""
        if not action.hash_policy:
            return None
        from sidecar.routing.hash_policy import request_hash  # only hashing clusters pay for it

        conn = self.downstream
        return request_hash(action.hash_policy, head, conn.peer_ip if conn is not None else b"", self._add_cookie)

    def _extra(self) -> _Extra:
        extra: _Extra | None = getattr(self, "extra", None)
        if extra is None:
            extra = self.extra = _Extra()
        return extra

    def _add_cookie(self, policy: HashPolicy) -> bytes:
        """A cookie hash policy with a ttl found no cookie: make one (Envoy's addDownstreamSetCookie,
        the same value for every request of this connection) and send it back in Set-Cookie."""
        from sidecar.routing.hash_policy import generated_cookie, set_cookie

        conn = self.downstream
        value = b""
        if conn is not None:
            local = conn.local_addr
            if b":" in conn.local_ip and not local.startswith(b"["):
                local = b"[%s]%s" % (conn.local_ip, local[len(conn.local_ip) :])  # Envoy's "[ip]:port"
            value = generated_cookie(conn.peer_addr, local)
        extra = self._extra()
        if extra.cookies is None:
            extra.cookies = []
        extra.cookies.append(set_cookie(policy, value))
        return value

    def _rewrite(
        self, route: Route, action: RouteAction, head: RequestHead, host: Host, cw: ClusterWeight | None
    ) -> None:
        """Path and host rewrites (Envoy's finalizeRequestHeaders): path first, then host."""
        path = head.path
        if action.prefix_rewrite or action.regex_rewrite is not None:
            rewritten = rewrite.rewritten_path(route, action, path.decode("latin-1"))
            if rewritten is not None:
                # Envoy sets x-envoy-original-path even when a regex rewrite changes nothing.
                head.set(b"x-envoy-original-path", path)
                head.path = rewritten.encode("latin-1")
        authority = head.authority
        new_host = b""
        if cw is not None and cw.host_rewrite_literal:
            new_host = cw.host_rewrite_literal.encode()
        elif action.host_rewrite_literal:
            new_host = action.host_rewrite_literal.encode()
        elif action.auto_host_rewrite and host.hostname:
            new_host = host.hostname.encode()
        elif action.host_rewrite_header:
            v = head.get(action.host_rewrite_header.encode())
            if v:
                new_host = v
        if new_host:
            if action.append_x_forwarded_host:
                xfh = head.get(b"x-forwarded-host")
                head.set(b"x-forwarded-host", authority if xfh is None else xfh + b"," + authority)
            # Envoy 1.40 keeps the original authority for the upstream (x-envoy-original-host).
            head.set(b"x-envoy-original-host", authority)
            head.authority = new_host

    def on_request_body(self, stream: Stream, chunk: bytes, end: bool) -> int:
        if self.done or self.cluster is None:
            return STOP
        data = chunk
        if self.body_chunked:
            data = encode_chunk(chunk) if chunk else b""
            if end:
                data += LAST_CHUNK
        if data:
            if self.shadows is not None:
                self.shadows.append(data)
            replay = self.replay
            if replay is not None:
                # Envoy buffers a retriable request's body up to the listener's buffer limit; past
                # it the request can no longer be retried.
                self.replay_bytes += len(data)
                if self.replay_bytes > stream.rt.buffer_limit:
                    self.replay = self.retry = None
                else:
                    replay.append(data)
            conn = self.conn
            if conn is not None:
                conn.send(data)
            elif self.pending is not None:
                pending = self.pending
                pending.append(data)
                self.pending_bytes += len(data)
                if self.pending_bytes > stream.rt.buffer_limit and not self.paused_downstream:
                    self.paused_downstream = True
                    stream.conn.pause_reading()
        if end:
            self._request_complete()
        return STOP

    def _request_complete(self) -> None:
        self.request_complete = True
        if self.shadows is not None:
            self._send_shadows()
        if self.stream is not None:
            self.started_at = self.stream.rt.loop.time()
        if self.tries is not None and self.conn is not None:
            self._arm_tries()
        # Envoy arms the route timeout when the downstream request is complete.
        if self.timeout > 0 and self.timer is None:
            stream = self.stream
            assert stream is not None
            self.timer = stream.rt.timeouts.add(self.timeout, self._on_timeout)

    # -- upstream events (pools/http1.UpstreamHandler) ------------------------------------------------
    def on_upstream_ready(self, conn: Http1UpstreamConnection) -> None:
        if self.done:
            conn.handler = None
            conn.pool.release(conn)
            return
        self.conn = conn
        stream = self.stream
        assert stream is not None
        conn.head_request = stream.head_only
        pending = self.pending
        self.pending = None
        self.sent_at = _monotonic()
        if pending:
            conn.send(b"".join(pending) if len(pending) > 1 else pending[0])
        if self.paused_downstream:
            self.paused_downstream = False
            stream.conn.resume_reading()
        if self.tries is not None and self.request_complete:
            # Envoy starts the per-try timers once the request is complete and has a connection.
            self._arm_tries()

    def on_upstream_failure(self, reason: bytes) -> None:
        if self.done:
            return
        stream = self.stream
        assert stream is not None and self.host is not None and self.cluster is not None
        self.conn = None
        self.host.rq_error += 1
        if self.cluster.detector is not None and reason != local_reply.RESET_OVERFLOW:
            self.cluster.report(self.host, LOCAL_ORIGIN_FAILURE)  # outlier detection: local origin
        if stream.resp_started:
            self._cleanup()
            stream.local_reply(503, None)  # resets the downstream
            return
        self.cluster.stats.upstream_rq_rx_reset += 1
        # UF: the connection could not be made; UC: it was terminated before a response.
        stream.flag("UF" if reason == local_reply.RESET_CONNECTION_FAILURE else "UC")
        if self.retry is not None:
            outcome = Outcome.CONNECT_FAILURE if reason == local_reply.RESET_CONNECTION_FAILURE else Outcome.RESET
            if self._maybe_retry(outcome, 0, None, False):
                return
        # Envoy: an unparseable upstream response is 502 (protocol error), other resets 503.
        status = 502 if reason == local_reply.RESET_PROTOCOL_ERROR else 503
        prefix = local_reply.UPSTREAM_RESET_PREFIX
        if self.retries_done:
            stream.flag("URX")  # retries ran out
            prefix = local_reply.UPSTREAM_RETRIED_PREFIX
        self._reply(status, prefix + reason)

    def on_upstream_headers(self, status: int, headers: Headers) -> None:
        stream = self.stream
        if stream is None or self.done:
            return
        assert self.cluster is not None
        self.cluster.stats.response(status)
        if self.cluster.detector is not None and self.host is not None:
            self.cluster.report(self.host, status)
        retry = self.retry
        if retry is not None and (retry.reads_headers or status >= retry.status_floor):
            grpc = None
            limited = False
            for k, v in headers:
                if k == b"grpc-status":
                    grpc = int(v) if v.isdigit() else None
                elif k == b"x-envoy-ratelimited":
                    limited = True
            matched = False
            if retry.retriable_headers:
                view = ResponseHead(status, headers)
                matched = any(m.matches(view, "") for m in retry.retriable_headers)  # type: ignore[attr-defined]
            after = None
            if retry.reset_headers:
                view = ResponseHead(status, headers)
                after = reset_delay(retry, view.get, time.time())
            if self._maybe_retry(Outcome.RESPONSE, status, grpc, limited, matched, after):
                return
        if self.per_try is not None:
            # (a per-try timeout does nothing once the response started; per_try_idle runs on)
            self.per_try.cancel()
            self.per_try = None
        if stream.upgrade is not None:
            # No x-envoy-upstream-service-time: the request is not complete (Envoy sets it after).
            kept = upgrade.response_headers(status, headers)
            if stream.rt.has_mutations:
                apply_response_mutations(kept, stream, self.weight)
            stream.send_head(status, kept, False)
            return
        ms = b"%d" % int((_monotonic() - self.sent_at) * 1000)
        if self.hash_key is not None:
            extra: _Extra | None = getattr(self, "extra", None)
            cookies = extra.cookies if extra is not None else None
            if cookies:
                # One Set-Cookie per host choice, as Envoy computes the hash for each attempt.
                headers = [*headers, *((b"set-cookie", c) for c in cookies * (self.retries_done + 1))]
        vhost = stream.vhost
        if vhost is not None and vhost.include_attempt_count_in_response:
            headers = [*headers, (b"x-envoy-attempt-count", b"%d" % (self.retries_done + 1))]
        if stream.rt.has_mutations:
            out: Headers = [h for h in headers if h[0] not in HOP_BY_HOP_RESPONSE]
            out.append((b"x-envoy-upstream-service-time", ms))
            apply_response_mutations(out, stream, self.weight)
            stream.send_head(status, out, False)
        else:
            stream.send_upstream_head(status, headers, ms)

    def on_upstream_body(self, data: bytes) -> None:
        stream = self.stream
        if stream is not None and not self.done:
            stream.send_body(data, False)

    def on_upstream_end(self) -> None:
        stream = self.stream
        if stream is None or self.done:
            return
        self.conn = None
        assert self.host is not None
        self.host.rq_success += 1
        self._cleanup()
        stream.send_body(b"", True)

    def on_upstream_pause(self) -> None:
        # The upstream socket's write buffer is full: stop reading the downstream.
        stream = self.stream
        if stream is not None and not self.paused_downstream:
            self.paused_downstream = True
            stream.conn.pause_reading()

    def on_upstream_resume(self) -> None:
        stream = self.stream
        if stream is not None and self.paused_downstream:
            self.paused_downstream = False
            stream.conn.resume_reading()

    # -- downstream flow control (from the stream) -------------------------------------------------------
    def on_downstream_pause(self) -> None:
        if self.conn is not None:
            self.conn.pause_reading()

    def on_downstream_resume(self) -> None:
        if self.conn is not None:
            self.conn.resume_reading()

    # -- retries ----------------------------------------------------------------------------------
    # -- endings --------------------------------------------------------------------------------
    def _on_timeout(self, per_try: bool = False) -> None:
        """The route timeout (or, with `per_try`, the last attempt's per-try timeout): 504
        `upstream request timeout` with UT, a 204 when x-envoy-upstream-rq-timeout-alt-response
        asked for it, or a reset once the response has started."""
        if not per_try:
            self.timer = None
        if self.done:
            return
        stream = self.stream
        assert stream is not None and self.cluster is not None
        stream.flag("UT")
        if not per_try:
            self.cluster.stats.upstream_rq_timeout += 1
            if self.host is not None:
                self.host.rq_timeout += 1
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.detach()
            if self.cluster.detector is not None and self.host is not None:
                self.cluster.report(self.host, LOCAL_ORIGIN_FAILURE)  # an attempt timed out
        if stream.resp_started:
            self._cleanup()
            stream.local_reply(504, None)  # headers already sent: this resets the downstream
            return
        extra: _Extra | None = getattr(self, "extra", None)
        if extra is not None and extra.alt_timeout:
            self._reply(204, b"")  # Envoy's timeout_response_code_ NoContent: no body
            return
        self._reply(504, local_reply.UPSTREAM_TIMEOUT)

    def _reply(self, status: int, body: bytes) -> None:
        stream = self.stream
        assert stream is not None
        self._cleanup()
        if self.cluster is not None:
            self.cluster.stats.response(status)  # Envoy counts its own 5xx for the cluster too
        extra: Headers = []
        apply_response_mutations(extra, stream, self.weight)
        stream.local_reply(status, body, extra or None)

    def _cleanup(self) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.tries is not None:
            self._cancel_per_try()
        if self.retry is not None and self.backoff_timer is not None:
            self.backoff_timer.cancel()
            self.backoff_timer = None
        cluster = self.cluster
        if cluster is not None:
            if self.counted:
                cluster.breaker.requests -= 1
                self.counted = False
            if self.retry_slot:
                cluster.breaker.retries -= 1
                self.retry_slot = False
        if self.conn is None and self.host is not None:
            pool = self.pool_of(self.host)
            if pool.waiting:
                pool.cancel_wait(self)
        if cluster is not None and self.host is not None and self.counted_active:
            cluster.stats.upstream_rq_active -= 1
            self.host.rq_active -= 1
            self.counted_active = False

    def on_destroy(self, stream: Stream) -> None:
        if not self.done:
            # The downstream went away mid-request: reset the upstream request.
            self._cleanup()
            if self.cluster is not None:
                self.cluster.stats.upstream_rq_tx_reset += 1
            conn = self.conn
            self.conn = None
            if conn is not None:
                conn.detach()
        if self.paused_downstream:
            self.paused_downstream = False
            stream.conn.resume_reading()
        self.stream = None  # break the stream <-> filter cycle (see Stream._finish)
        self.downstream = None


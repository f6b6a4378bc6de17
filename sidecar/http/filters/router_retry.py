"""The router's retries and per-try timers: a mixin of http/filters/router.py's Router.

Kept apart so that router.py reads as the request's way out and back; the decisions themselves are
pure and live in upstream/retry.py (decide_retry, steer) and http/timeouts.py (final_timeouts,
expected_timeout_ms).  This module owns: an internal request's steering headers (`_steer`), whether
and when a failed attempt is retried (`_maybe_retry`, `_retry_attempt`: back-off, previous_hosts,
the re-encoded head with the attempt's announced timeout), and the per_try_timeout /
per_try_idle_timeout timers of each attempt.  The state it works on is Router's (its __slots__)."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from sidecar.http import local_reply
from sidecar.http.codec_h1 import encode_request_head
from sidecar.http.events import Headers, RequestHead
from sidecar.http.grpc_timeouts import grpc_content_type
from sidecar.http.timeouts import Deadline, expected_timeout_ms, final_timeouts, format_grpc_timeout
from sidecar.http.timeouts import ms as to_ms
from sidecar.model.retry import RetryPolicy
from sidecar.model.route import ClusterWeight, RouteAction
from sidecar.upstream.outlier import LOCAL_ORIGIN_FAILURE
from sidecar.upstream.retry import Outcome, Refused, decide_retry, steer

if TYPE_CHECKING:
    from sidecar.http.conn_manager import Stream
    from sidecar.http.protocol import Http1ServerConnection
    from sidecar.upstream.cluster_manager import ClusterState, Host
    from sidecar.upstream.pools.http1 import Http1UpstreamConnection

_EXPECTED = b"x-envoy-expected-rq-timeout-ms"
_RQ_TIMEOUT = b"x-envoy-upstream-rq-timeout-ms"
# The request headers an internal request steers the router with (FilterUtility::finalTimeout,
# RetryStateImpl::create, Filter::decodeHeaders); all but x-envoy-expected-rq-timeout-ms are consumed.
_STEERING = frozenset(
    {
        _EXPECTED,
        _RQ_TIMEOUT,
        b"x-envoy-upstream-rq-per-try-timeout-ms",
        b"x-envoy-upstream-rq-timeout-alt-response",
        b"x-envoy-retry-on",
        b"x-envoy-retry-grpc-on",
        b"x-envoy-max-retries",
        b"x-envoy-retriable-status-codes",
        b"x-envoy-retriable-header-names",
        b"x-envoy-hedge-on-per-try-timeout",  # (hedging is not implemented: the header just goes)
        b"x-envoy-upstream-alt-stat-name",  # (alternate stat names neither)
    }
)


class _Extra:
    """What few requests need: x-envoy-upstream-rq-timeout-alt-response (204 on timeout),
    x-envoy-hedge-on-per-try-timeout, the Set-Cookie values of generated hash cookies, and the
    per_try_idle_timeout timer with the time it started."""

    __slots__ = ("alt_timeout", "cookies", "hedging", "idle_since", "try_idle")

    def __init__(self) -> None:
        self.alt_timeout = False
        self.hedging = False
        self.cookies: list[bytes] | None = None
        self.idle_since = 0.0
        self.try_idle: Deadline | asyncio.TimerHandle | None = None


class RetryAttempts:
    """Router's retry and per-try-timer methods (see the module doc)."""

    if not TYPE_CHECKING:
        __slots__ = ()  # (hidden from mypy, which would then refuse assignments to Router's slots)

    if TYPE_CHECKING:  # Router's state and the methods of its own these call
        stream: Stream | None
        downstream: Http1ServerConnection | None
        cluster: ClusterState | None
        host: Host | None
        conn: Http1UpstreamConnection | None
        done: bool
        retry: RetryPolicy | None
        retries_done: int
        retry_slot: bool
        replay: list[bytes] | None
        pending: list[bytes] | None
        tried: list[Host] | None
        hash_key: int | None
        counted_active: bool
        backoff_timer: asyncio.TimerHandle | None
        per_try: Deadline | asyncio.TimerHandle | None
        tries: tuple[float, float] | None
        timeout: float
        started_at: float
        request_complete: bool
        attempt_headers: tuple[bytes, bytes, bytes, Headers] | None
        weight: ClusterWeight | None

        def _extra(self) -> _Extra: ...
        def _reply(self, status: int, body: bytes) -> None: ...
        def _on_timeout(self, per_try: bool = False) -> None: ...

    def _steer(
        self, head: RequestHead, action: RouteAction, retry: RetryPolicy | None, respect_expected: bool
    ) -> RetryPolicy | None:
        """An internal request's steering headers: the route's timeouts as FilterUtility::finalTimeout
        makes them, x-envoy-expected-rq-timeout-ms announced (in place), the retry policy merged with
        the x-envoy-retry-* headers (upstream/retry.steer), a 204 on timeout when asked.  The headers
        are consumed, as Envoy's router does (x-envoy-upstream-rq-timeout-ms stays when
        respect_expected_rq_timeout took an egress Envoy's x-envoy-expected-rq-timeout-ms instead)."""
        values: dict[bytes, bytes] = {}
        for k, v in head.headers:
            if k in _STEERING:
                # A repeated header reads as its values joined with ',' (Envoy's inline headers).
                values[k] = values[k] + b"," + v if k in values else v
        per_try_route = retry.per_try_timeout if retry is not None else 0.0
        global_ms, per_try_ms, _ = final_timeouts(
            to_ms(action.upstream_timeout),
            to_ms(per_try_route),
            values.get(_EXPECTED),
            values.get(_RQ_TIMEOUT),
            values.get(b"x-envoy-upstream-rq-per-try-timeout-ms"),
            respect_expected,
        )
        if values:
            keep = {_EXPECTED, _RQ_TIMEOUT} if respect_expected and _EXPECTED in values else {_EXPECTED}
            head.headers = [h for h in head.headers if h[0] not in _STEERING or h[0] in keep]
        self.timeout = global_ms / 1000
        per_try_idle = retry.per_try_idle_timeout if retry is not None else 0.0
        self.tries = (per_try_ms / 1000, per_try_idle) if per_try_ms or per_try_idle else None
        # x-envoy-hedge-on-per-try-timeout (FilterUtility::finalHedgingParams) only changes what is
        # announced here: sidecar does not hedge, a per-try timeout resets the attempt.
        hedge = values.get(b"x-envoy-hedge-on-per-try-timeout")
        if hedge == b"true":
            self._extra().hedging = True
        expected = expected_timeout_ms(global_ms, per_try_ms, 0, hedge == b"true")
        if expected:
            head.set(_EXPECTED, b"%d" % expected)
        if b"x-envoy-upstream-rq-timeout-alt-response" in values:
            self._extra().alt_timeout = True
        if not values:
            return retry
        return steer(
            retry,
            values.get(b"x-envoy-retry-on"),
            values.get(b"x-envoy-retry-grpc-on"),
            values.get(b"x-envoy-max-retries"),
            values.get(b"x-envoy-retriable-status-codes"),
            values.get(b"x-envoy-retriable-header-names"),
        )


    def _maybe_retry(
        self,
        outcome: Outcome,
        status: int,
        grpc: int | None,
        limited: bool,
        headers_match: bool = False,
        reset_after: float | None = None,
    ) -> bool:
        """Retry this request if the policy says so: True when a new attempt is scheduled (the
        current upstream connection, if any, is given up), False to let the outcome stand."""
        retry = self.retry
        stream = self.stream
        assert stream is not None and self.cluster is not None
        if retry is None or stream.resp_started or self.replay is None:
            return False  # never once response headers went downstream; never a body we dropped
        breaker = self.cluster.breaker
        budget = self.retry_slot or breaker.can_retry()
        decision = decide_retry(
            retry, self.retries_done, outcome, status, grpc, limited, budget, random.random(), headers_match, reset_after
        )
        if decision is None:
            return False
        cs = self.cluster.stats
        if decision is Refused.OVERFLOW:
            cs.upstream_rq_retry_overflow += 1
            return False
        if isinstance(decision, Refused):
            cs.upstream_rq_retry_limit_exceeded += 1
            if outcome is Outcome.RESPONSE:
                stream.flag("URX")
            return False
        if not self.retry_slot:
            breaker.retries += 1  # max_retries counts requests with a retry in progress
            self.retry_slot = True
        self._cancel_per_try()
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.detach()  # the rest of this attempt's response is not wanted
        if self.counted_active and self.host is not None:
            self.host.rq_active -= 1
            cs.upstream_rq_active -= 1
            self.counted_active = False
        self.pending = None
        self.backoff_timer = stream.rt.loop.call_later(decision, self._retry_attempt)
        return True


    def _retry_attempt(self) -> None:
        self.backoff_timer = None
        stream = self.stream
        if self.done or stream is None:
            return
        cluster = self.cluster
        retry = self.retry
        assert cluster is not None and retry is not None and self.replay is not None
        self.retries_done += 1
        # A hashing cluster keeps the request's hash (Envoy retries on the same host unless a host
        # predicate rejects it; the re-picks below then go elsewhere).
        if cluster.original_dst is not None:
            host = self.host  # the original destination is the only host there is
        else:
            host = cluster.pick(self.hash_key) if cluster.hashing else cluster.pick()
        tried = self.tried
        if tried is not None and host is not None:
            # retry_host_predicate previous_hosts: re-pick up to host_selection_retry_max_attempts.
            for _ in range(retry.host_selection_retry_max_attempts):
                if host not in tried:
                    break
                host = cluster.pick()
            if host is not None:
                tried.append(host)
        cs = cluster.stats
        cs.upstream_rq_retry += 1
        if host is None:
            cluster.stats.upstream_cx_none_healthy += 1
            self._reply(503, local_reply.NO_HEALTHY_UPSTREAM)
            return
        self.host = host
        replay = list(self.replay)
        if self.attempt_headers is not None:
            method, path, authority, out = self.attempt_headers
            out = list(out)
            # Envoy announces what is left (setTimeoutHeaders): the per-try timeout, else the global
            # one, never past the global one's remainder since the request completed.
            elapsed = int((stream.rt.loop.time() - self.started_at) * 1000) if self.request_complete else 0
            per_try = self.tries[0] if self.tries is not None else 0.0
            extra: _Extra | None = getattr(self, "extra", None)
            hedging = extra is not None and extra.hedging
            expected = expected_timeout_ms(to_ms(self.timeout), to_ms(per_try), elapsed, hedging)
            if expected:
                # grpc-timeout too, for a gRPC request on a max_grpc_timeout route (setTimeoutHeaders:
                # "the upstream gRPC server is aware of the actual timeout").
                route = stream.route
                action = route.action if route is not None else None
                regrpc = isinstance(action, RouteAction) and action.grpc_timeouts and _is_grpc(out)
                for i, (k, _) in enumerate(out):
                    if k == _EXPECTED:
                        out[i] = (k, b"%d" % expected)
                    elif regrpc and k == b"grpc-timeout":
                        out[i] = (k, format_grpc_timeout(expected))
            vhost = stream.vhost
            if vhost is not None and vhost.include_request_attempt_count:
                out.append((b"x-envoy-attempt-count", b"%d" % (self.retries_done + 1)))
            replay[0] = encode_request_head(method, path, authority, out)
        self.pending = replay
        cs.upstream_rq_total += 1
        cs.upstream_rq_active += 1
        host.rq_total += 1
        host.rq_active += 1
        self.counted_active = True
        self.pool_of(host).acquire(self)  # type: ignore[attr-defined]  # a Router (UpstreamHandler)


    def _arm_tries(self) -> None:
        """This attempt's per_try_timeout and per_try_idle_timeout (UpstreamRequest::setupPerTryTimeout)."""
        stream = self.stream
        assert self.tries is not None and stream is not None
        self._cancel_per_try()
        per_try, idle = self.tries
        timeouts = stream.rt.timeouts
        if per_try > 0:
            self.per_try = timeouts.add(per_try, self._on_per_try_timeout)
        if idle > 0:
            extra = self._extra()
            extra.idle_since = stream.rt.loop.time()
            extra.try_idle = timeouts.add(idle, self._on_per_try_idle)


    def _cancel_per_try(self) -> None:
        if self.per_try is not None:
            self.per_try.cancel()
            self.per_try = None
        extra: _Extra | None = getattr(self, "extra", None)
        if extra is not None and extra.try_idle is not None:
            extra.try_idle.cancel()
            extra.try_idle = None


    def _on_per_try_timeout(self) -> None:
        self.per_try = None
        if self.done or self.cluster is None:
            return
        self.cluster.stats.upstream_rq_per_try_timeout += 1
        self._per_try_expired()


    def _on_per_try_idle(self) -> None:
        """The per-try idle timer: act if no response bytes came for per_try_idle_timeout (the
        downstream connection's `last_io` is refreshed by every upstream read), else look again
        when that would be."""
        extra = self._extra()
        extra.try_idle = None
        stream = self.stream
        if self.done or self.cluster is None or stream is None or self.tries is None:
            return
        loop = stream.rt.loop
        down = self.downstream
        last = extra.idle_since if down is None else max(extra.idle_since, down.last_io)
        due = last + self.tries[1]
        if due > loop.time() + 0.0005:
            extra.try_idle = loop.call_at(due, self._on_per_try_idle)
            return
        cs = self.cluster.stats
        if hasattr(cs, "upstream_rq_per_try_idle_timeout"):
            cs.upstream_rq_per_try_idle_timeout += 1
        self._per_try_expired()


    def _per_try_expired(self) -> None:
        """Filter::onPerTryTimeoutCommon: this attempt is reset and retried like a reset (a timeout
        retry); out of retries, Envoy answers as for the global timeout (UT)."""
        assert self.cluster is not None
        host = self.host
        if host is not None:
            host.rq_timeout += 1
        if self._maybe_retry(Outcome.TIMEOUT, 0, None, False):
            if self.cluster.detector is not None and host is not None:
                self.cluster.report(host, LOCAL_ORIGIN_FAILURE)  # (not retried: _on_timeout reports)
            return
        self._on_timeout(per_try=True)


def _is_grpc(headers: Headers) -> bool:
    for k, v in headers:
        if k == b"content-type":
            return grpc_content_type(v)
    return False

"""envoy.filters.http.fault: delays, then aborts, with Envoy's semantics (extensions.filters.http.fault.v3).

Two halves.  The pure core (`FaultSettings`, `Percent` and the decision functions `applies`,
`delay_ms`, `abort_status`, `overflow`) takes the request and a random draw in [0, 1) and imports
nothing with side effects; the translator (translate/rds.py `translate_fault`) builds `FaultSettings`.
The filter (`FaultFilter`, built per stream from a `FaultRuntime` per connection manager) draws
`random.random()`, arms the delay with `loop.call_later` and answers aborts with Envoy's local reply
`fault filter abort`.

Envoy's order (fault_filter.cc decodeHeaders): the route's typed_per_filter_config replaces the
filter-level settings whole; upstream_cluster, downstream_nodes and the header matchers must all
match; then a delay (one draw against the delay percentage) and, if none, an abort (one draw against
the abort percentage).  After a delay the abort is drawn again.  A fault is only started while
`active_faults` is below max_active_faults (else `faults_overflow`); a request counts once."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sidecar.http.filters.base import CONTINUE, STOP, PassThrough

if TYPE_CHECKING:
    from sidecar.http.conn_manager import Stream
    from sidecar.http.events import RequestHead
    from sidecar.observe.stats import Stats

FAULT_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
BODY = b"fault filter abort"  # Envoy's local reply body for an injected abort

# Request headers read when header_abort / header_delay are configured (Envoy's HeaderNames).
DELAY_HEADER = "x-envoy-fault-delay-request"
DELAY_PERCENT_HEADER = "x-envoy-fault-delay-request-percentage"
ABORT_HEADER = "x-envoy-fault-abort-request"
ABORT_GRPC_HEADER = "x-envoy-fault-abort-grpc-request"
ABORT_PERCENT_HEADER = "x-envoy-fault-abort-request-percentage"
DOWNSTREAM_NODE_HEADER = "x-envoy-downstream-service-node"

# type.v3.FractionalPercent.DenominatorType: HUNDRED, TEN_THOUSAND, MILLION.
DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}
_UINT32_MAX = 2**32 - 1


class FaultRequest(Protocol):
    """What the decisions read of a request (http/events.RequestHead answers it)."""

    def header(self, name: str) -> str | None: ...


class FaultMatcher(Protocol):
    """A compiled route header matcher (routing/matchers.HeaderMatcher)."""

    def matches(self, request: Any, path: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Percent:
    """type.v3.FractionalPercent: numerator out of denominator (100, 10000 or 1000000)."""

    numerator: int = 0
    denominator: int = 100

    def hit(self, rand: float) -> bool:
        # Envoy: random_value % denominator < numerator; a numerator above the denominator is 100%.
        return int(rand * self.denominator) < self.numerator


NEVER = Percent(0, 100)


@dataclass(frozen=True, slots=True)
class FaultSettings:
    """One HTTPFault, translated.  `delay` / `abort` None: that fault is not configured.

    Envoy: a FaultAbort / FaultDelay without `percentage` has the proto default, 0% (never)."""

    delay: Percent | None = None
    delay_ms: int = 0  # fixed_delay in milliseconds (Envoy truncates to ms)
    delay_from_header: bool = False  # header_delay: x-envoy-fault-delay-request
    abort: Percent | None = None
    abort_http: int = 0  # http_status (0 when grpc_status or header_abort)
    abort_grpc: int | None = None  # grpc_status
    abort_from_header: bool = False  # header_abort: x-envoy-fault-abort-request / -grpc-request
    upstream_cluster: str = ""
    headers: tuple[FaultMatcher, ...] = ()
    downstream_nodes: frozenset[str] = frozenset()
    max_active_faults: int | None = None  # None: unlimited
    # The typed config's type URL (what the filter registry is keyed by).
    type_url: str = FAULT_TYPE_URL

    @property
    def inert(self) -> bool:
        """Nothing can ever be injected: no fault configured, or only at 0% (a header percentage is
        capped by the configured one, HeaderPercentageProvider, so it cannot raise a 0% either)."""
        return (self.delay is None or self.delay.numerator == 0) and (
            self.abort is None or self.abort.numerator == 0
        )


def parse_uint(value: str | None, limit: int = 2**64 - 1) -> int | None:
    """absl::SimpleAtoi for an unsigned header value: optional whitespace and '+', decimal digits."""
    if value is None:
        return None
    text = value.strip(" \t")
    if text.startswith("+"):
        text = text[1:]
    if not text.isascii() or not text.isdigit():
        return None
    n = int(text)
    return n if n <= limit else None


def header_percent(configured: Percent, value: str | None) -> Percent:
    """HeaderPercentageProvider: the header's numerator, capped by the configured one, over the
    configured denominator; a missing or unparseable header leaves the configured percentage."""
    n = parse_uint(value, _UINT32_MAX)
    if n is None:
        return configured
    return Percent(min(n, configured.numerator), configured.denominator)


def applies(s: FaultSettings, request: FaultRequest, cluster: str | None, path: str = "") -> bool:
    """upstream_cluster (the route's cluster), downstream_nodes and the header matchers."""
    if s.upstream_cluster and cluster != s.upstream_cluster:
        return False
    if s.downstream_nodes:
        node = request.header(DOWNSTREAM_NODE_HEADER)
        if node is None or node not in s.downstream_nodes:
            return False
    return all(m.matches(request, path) for m in s.headers)


def delay_ms(s: FaultSettings, request: FaultRequest, rand: float) -> int:
    """The delay to inject in milliseconds, 0 for none (FaultFilter::delayDuration)."""
    p = s.delay
    if p is None:
        return 0
    if s.delay_from_header:
        p = header_percent(p, request.header(DELAY_PERCENT_HEADER))
    if not p.hit(rand):
        return 0
    if s.delay_from_header:
        ms = parse_uint(request.header(DELAY_HEADER))
        return ms or 0
    return s.delay_ms


def abort_status(s: FaultSettings, request: FaultRequest, rand: float) -> tuple[int, int | None] | None:
    """(HTTP status, gRPC status or None) to abort with, or None (FaultFilter::abortStatus).  A gRPC
    status comes with HTTP 200; an HTTP status, when there is one, wins over a gRPC one."""
    p = s.abort
    if p is None:
        return None
    if s.abort_from_header:
        p = header_percent(p, request.header(ABORT_PERCENT_HEADER))
    if not p.hit(rand):
        return None
    if s.abort_from_header:
        code = parse_uint(request.header(ABORT_HEADER))
        if code is not None and 200 <= code < 600:  # HeaderAbortProvider: [200, 600) only
            return code, None
        grpc = parse_uint(request.header(ABORT_GRPC_HEADER), _UINT32_MAX)
        return (200, grpc) if grpc is not None else None
    if s.abort_http:
        return s.abort_http, None
    if s.abort_grpc is not None:
        return 200, s.abort_grpc
    return None


def overflow(s: FaultSettings, active: int) -> bool:
    """max_active_faults reached (a fuzzy limit in Envoy too: no compare-and-swap)."""
    return s.max_active_faults is not None and active >= s.max_active_faults


def grpc_status_for_http(status: int) -> int:
    """Grpc::Utility::httpToGrpcStatus, for a gRPC request answered with an HTTP status."""
    if status == 400:
        return 13  # INTERNAL
    if status == 401:
        return 16  # UNAUTHENTICATED
    if status == 403:
        return 7  # PERMISSION_DENIED
    if status == 404:
        return 12  # UNIMPLEMENTED
    if status in (429, 502, 503, 504):
        return 14  # UNAVAILABLE
    return 2  # UNKNOWN


def is_grpc(request: FaultRequest) -> bool:
    """Envoy's Grpc::Common::isGrpcRequestHeaders (content-type application/grpc[+...|;...])."""
    ct = request.header("content-type")
    if ct is None or not ct.startswith("application/grpc"):
        return False
    return len(ct) == 16 or ct[16] in "+;"


# --- the filter ------------------------------------------------------------------------------------

_COUNTERS = ("aborts_injected", "delays_injected", "faults_overflow", "response_rl_injected")
_GAUGES = ("active_faults",)


class FaultStats:
    """http.<stat_prefix>.fault.* (Envoy's ALL_FAULT_FILTER_STATS), plain ints in the stats block."""

    __slots__ = (*_COUNTERS, *_GAUGES)
    aborts_injected: int
    delays_injected: int
    faults_overflow: int
    response_rl_injected: int
    active_faults: int

    def __init__(self, stats: Stats | None, prefix: str) -> None:
        for attr in self.__slots__:
            setattr(self, attr, 0)
        if stats is not None:
            stats.block(self, prefix, _COUNTERS, _GAUGES)


class FaultRuntime:
    """One fault filter of one connection manager: its name (the key of typed_per_filter_config),
    its filter-level settings and its stats."""

    __slots__ = ("name", "rand", "settings", "stats")

    def __init__(
        self,
        name: str,
        settings: FaultSettings,
        stats: FaultStats,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.settings = settings
        self.stats = stats
        self.rand = rand


def _route_cluster(stream: Stream, head: RequestHead) -> str | None:
    route = stream.route
    if route is None:
        return None
    action = route.action
    cluster = getattr(action, "cluster", "")
    if cluster:
        return str(cluster)
    header = getattr(action, "cluster_header", "")
    if header:
        return head.header(str(header))
    return None  # weighted clusters are picked later, by the router


class FaultFilter(PassThrough):
    __slots__ = ("active", "end", "held", "rt", "settings", "timer")

    def __init__(self, rt: FaultRuntime) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.active = False
        self.timer: Any = None
        self.held: list[tuple[bytes, bool]] | None = None
        self.end = False

    def on_request_head(self, stream: Stream, head: RequestHead, end: bool) -> int:
        rt = self.rt
        s = rt.settings
        route = stream.route
        if route is not None and route.typed_per_filter_config:
            # Route-level configuration replaces the filter's whole (most specific wins).
            for name, cfg in route.typed_per_filter_config:
                if name == rt.name and isinstance(cfg, FaultSettings):
                    s = cfg
                    break
        if s.inert:
            return CONTINUE
        path = head.path.decode("latin-1") if s.headers else ""  # only header matchers read it
        if not applies(s, head, _route_cluster(stream, head), path):
            return CONTINUE
        self.settings = s
        ms = delay_ms(s, head, rt.rand()) if s.delay is not None else 0  # a draw only when configured
        if ms and self._activate(s):
            rt.stats.delays_injected += 1
            stream.flag("DI")  # Envoy's response flag for an injected delay
            self.end = end
            self.held = []
            self.timer = stream.rt.loop.call_later(ms / 1000.0, self._delay_over, stream)
            return STOP
        status = abort_status(s, head, rt.rand()) if s.abort is not None else None
        if status is not None and self._activate(s):
            self._abort(stream, head, *status)
            return STOP
        return CONTINUE

    def on_request_body(self, stream: Stream, chunk: bytes, end: bool) -> int:
        held = self.held
        if held is None:
            return CONTINUE
        # Envoy: StopIterationAndWatermark while the delay runs; replayed on resume.
        held.append((chunk, end))
        return STOP

    def on_destroy(self, stream: Stream) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.held = None
        if self.active:
            self.active = False
            self.rt.stats.active_faults -= 1

    def _activate(self, s: FaultSettings) -> bool:
        """FaultFilter::tryIncActiveFaults: a request counts once, checked against the limit once."""
        if self.active:
            return True
        st = self.rt.stats
        if overflow(s, st.active_faults):
            st.faults_overflow += 1
            return False
        st.active_faults += 1
        self.active = True
        return True

    def _delay_over(self, stream: Stream) -> None:
        self.timer = None
        held = self.held or []
        self.held = None
        head = stream.head
        status = abort_status(self.settings, head, self.rt.rand())
        if status is not None:
            self._abort(stream, head, *status)
            return
        # A finished delay is no longer an active fault (postDelayInjection).
        if self.active:
            self.active = False
            self.rt.stats.active_faults -= 1
        stream.resume_request(self, self.end, held)

    def _abort(self, stream: Stream, head: RequestHead, http: int, grpc: int | None) -> None:
        self.rt.stats.aborts_injected += 1
        stream.flag("FI")  # Envoy's response flag for an injected abort
        if is_grpc(head):
            # sendLocalReply on a gRPC request: HTTP 200, the status in grpc-status, no body.
            code = grpc if grpc is not None else grpc_status_for_http(http)
            extra = [
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"%d" % code),
                (b"grpc-message", BODY),
            ]
            stream.local_reply(200, None, extra)
            return
        stream.local_reply(http, BODY)


class FaultFactory:
    """Makes the fault filter of each stream.  `needed_by` lets the connection manager leave the
    filter out of the chain for a route configuration in which it can do nothing (see registry)."""

    __slots__ = ("rt",)

    def __init__(self, rt: FaultRuntime) -> None:
        self.rt = rt

    def __call__(self) -> FaultFilter:
        return FaultFilter(self.rt)

    def needed_by(self, route_config: Any) -> bool:
        """False when no fault can ever be injected: filter-level settings at 0% (or none) and no
        route of `route_config` with typed_per_filter_config for this filter."""
        if not self.rt.settings.inert:
            return True
        name = self.rt.name
        for vh in route_config.virtual_hosts:
            for route in vh.routes:
                for key, _ in route.typed_per_filter_config:
                    if key == name:
                        return True
        return False


def fault_factory(rt: FaultRuntime) -> FaultFactory:
    return FaultFactory(rt)

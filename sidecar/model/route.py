"""Route configuration: virtual hosts, routes and their actions (Envoy's config.route.v3).

The matchers inside a `RouteMatch` are compiled objects from `sidecar.routing.matchers` (RE2 regexes
built once at translate time); this module only names their shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from sidecar.model.retry import RetryPolicy


class RequestView(Protocol):
    """What route matching may read of a request.  Names are lowercase; pseudo-headers `:method`,
    `:authority`, `:scheme` and `:path` are answered too.  Several values of one header come back
    joined with ',' as Envoy's header matcher sees them."""

    def header(self, name: str) -> str | None: ...


class PathMatcher(Protocol):
    def matches(self, path: str) -> bool: ...


class RequestMatcher(Protocol):
    """A header or query-parameter matcher."""

    def matches(self, request: RequestView, path: str) -> bool: ...


class AppendAction(Enum):
    APPEND_IF_EXISTS_OR_ADD = "APPEND_IF_EXISTS_OR_ADD"
    ADD_IF_ABSENT = "ADD_IF_ABSENT"
    OVERWRITE_IF_EXISTS_OR_ADD = "OVERWRITE_IF_EXISTS_OR_ADD"
    OVERWRITE_IF_EXISTS = "OVERWRITE_IF_EXISTS"


@dataclass(frozen=True, slots=True)
class HeaderValueOption:
    """One header to add.  `name` is lowercase bytes; `value` is the literal value (format commands
    such as %DOWNSTREAM_REMOTE_ADDRESS% are expanded by http/header_mutation.py when `dynamic`)."""

    name: bytes
    value: bytes
    append_action: AppendAction = AppendAction.APPEND_IF_EXISTS_OR_ADD
    keep_empty_value: bool = False
    dynamic: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMutations:
    """request_headers_to_add/remove and response_headers_to_add/remove at one level."""

    request_headers_to_add: tuple[HeaderValueOption, ...] = ()
    request_headers_to_remove: tuple[bytes, ...] = ()
    response_headers_to_add: tuple[HeaderValueOption, ...] = ()
    response_headers_to_remove: tuple[bytes, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.request_headers_to_add
            or self.request_headers_to_remove
            or self.response_headers_to_add
            or self.response_headers_to_remove
        )


NO_MUTATIONS = HeaderMutations()


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path: PathMatcher
    # Header matchers first, then query parameter matchers: all must match.
    requirements: tuple[RequestMatcher, ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterWeight:
    name: str
    weight: int
    mutations: HeaderMutations = NO_MUTATIONS
    host_rewrite_literal: str = ""


@dataclass(frozen=True, slots=True)
class RegexRewrite:
    """pattern is a compiled RE2 regex (re2.compile); substitution uses \\1 style groups."""

    pattern: object
    substitution: str


class HashPolicyKind(Enum):
    HEADER = "header"
    COOKIE = "cookie"
    SOURCE_IP = "source_ip"
    QUERY_PARAMETER = "query_parameter"


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """One RouteAction.hash_policy entry (routing/hash_policy.py evaluates it).  `name` is the
    lowercase header name, the cookie name or the query parameter name ("" for source_ip).

    A cookie policy with a `ttl` (whole seconds, as Envoy keeps it) generates the cookie when the
    request has none and sends it back in Set-Cookie with `path` and `attributes` ((name, value),
    value "" for a bare attribute such as Secure); without a ttl those two are moot and kept empty."""

    kind: HashPolicyKind
    name: str = ""
    terminal: bool = False
    ttl: int | None = None
    path: str = ""
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """One request_mirror_policies entry: the cluster, the runtime_fraction default (numerator out of
    denominator; 100% when unset) and whether the shadow's host keeps its "-shadow" suffix."""

    cluster: str
    numerator: int = 100
    denominator: int = 100
    host_suffix: bool = True


@dataclass(frozen=True, slots=True)
class MaxStreamDuration:
    """RouteAction.max_stream_duration (seconds; None where the field is unset).  Its presence alone
    switches the route to Envoy's "new timeouts": the route `timeout` is then not used by the router,
    and the connection manager's stream duration timer is what bounds the request
    (http/timeouts.stream_duration)."""

    # Overrides the HCM's common_http_protocol_options.max_stream_duration; 0 disables it.
    max_stream_duration: float | None = None
    # Use the request's grpc-timeout header as the duration, capped by this (0: no cap).
    grpc_timeout_header_max: float | None = None
    # Subtracted from the grpc-timeout header value.
    grpc_timeout_header_offset: float = 0.0


@dataclass(frozen=True, slots=True)
class RouteAction:
    cluster: str = ""
    weighted_clusters: tuple[ClusterWeight, ...] = ()
    total_weight: int = 0
    cluster_header: str = ""
    # Envoy: SERVICE_UNAVAILABLE (503) unless NOT_FOUND (404) / INTERNAL_SERVER_ERROR (500).
    cluster_not_found_response_code: int = 503
    prefix_rewrite: str = ""
    regex_rewrite: RegexRewrite | None = None
    host_rewrite_literal: str = ""
    auto_host_rewrite: bool = False
    host_rewrite_header: str = ""
    append_x_forwarded_host: bool = False
    # Envoy's default route timeout is 15 s; 0 disables it.
    timeout: float = 15.0
    # idle_timeout: replaces the HCM's stream_idle_timeout for requests of this route (0 disables
    # it); None when unset.
    idle_timeout: float | None = None
    max_stream_duration: MaxStreamDuration | None = None
    # RouteAction.hash_policy, for RING_HASH / MAGLEV clusters (empty: a random host).
    hash_policy: tuple[HashPolicy, ...] = ()
    # request_mirror_policies: shadow copies of the request (response discarded).
    mirror_policies: tuple[MirrorPolicy, ...] = ()
    # The route's retry_policy, else the virtual host's (Envoy: the route's wins whole, no merge).
    retry_policy: RetryPolicy | None = None
    # max_grpc_timeout / grpc_timeout_offset (deprecated, istiod sets max_grpc_timeout 0s): with
    # max_grpc_timeout set and no max_stream_duration, a gRPC request's grpc-timeout (0 or absent:
    # infinite) minus the offset, capped by max_grpc_timeout unless 0, is the router's global
    # timeout, and the grpc-timeout sent upstream says what is expected (FilterUtility::finalTimeout
    # and setTimeoutHeaders; http/filters/router.py grpc_route_timeout).
    max_grpc_timeout: float | None = None
    grpc_timeout_offset: float | None = None
    # RouteAction.upgrade_configs: (upgrade type lowercased, enabled) overriding the connection
    # manager's upgrade_types for this route.
    upgrade_configs: tuple[tuple[str, bool], ...] = ()
    # Derived once here so the router reads one flag per request instead of six fields:
    # `plain` = one named cluster and no path or host rewrite; `upstream_timeout` = the router's
    # global timeout (Envoy's finalTimeout: 0 under max_stream_duration); `per_try` and
    # `per_try_idle` = the retry policy's per-try timeouts (a per-try timeout not below the global
    # one is dropped); `timeout_header` = x-envoy-expected-rq-timeout-ms (b"" when there is none);
    # `stream_timers` = the connection manager has a per-route timer to set (idle, duration).
    plain: bool = field(init=False, compare=False, default=False)
    upstream_timeout: float = field(init=False, compare=False, default=0.0)
    per_try: float = field(init=False, compare=False, default=0.0)
    per_try_idle: float = field(init=False, compare=False, default=0.0)
    timeout_header: bytes = field(init=False, compare=False, default=b"")
    stream_timers: bool = field(init=False, compare=False, default=False)
    # (per_try, per_try_idle) when either is set, else None: the router's one test per request.
    try_timers: tuple[float, float] | None = field(init=False, compare=False, default=None)
    # max_grpc_timeout applies (Envoy ignores it under max_stream_duration, the "new timeouts").
    grpc_timeouts: bool = field(init=False, compare=False, default=False)

    def __post_init__(self) -> None:
        plain = not (
            self.weighted_clusters
            or self.cluster_header
            or self.prefix_rewrite
            or self.regex_rewrite is not None
            or self.host_rewrite_literal
            or self.auto_host_rewrite
            or self.host_rewrite_header
        )
        object.__setattr__(self, "plain", plain)
        upstream = 0.0 if self.max_stream_duration is not None else self.timeout
        retry = self.retry_policy
        per_try = retry.per_try_timeout if retry is not None else 0.0
        if upstream > 0 and per_try >= upstream:
            per_try = 0.0  # Envoy: a per-try timeout >= the global timeout is ignored
        object.__setattr__(self, "upstream_timeout", upstream)
        object.__setattr__(self, "per_try", per_try)
        per_try_idle = retry.per_try_idle_timeout if retry is not None else 0.0
        object.__setattr__(self, "per_try_idle", per_try_idle)
        object.__setattr__(self, "try_timers", (per_try, per_try_idle) if per_try or per_try_idle else None)
        expected = per_try or upstream
        header = b"%d" % round(expected * 1000) if expected > 0 else b""
        object.__setattr__(self, "timeout_header", header)
        timers = self.idle_timeout is not None or self.max_stream_duration is not None
        object.__setattr__(self, "stream_timers", timers)
        grpc = self.max_grpc_timeout is not None and self.max_stream_duration is None
        object.__setattr__(self, "grpc_timeouts", grpc)


@dataclass(frozen=True, slots=True)
class RedirectAction:
    scheme: str = ""  # https_redirect sets "https"
    host: str = ""
    port: int = 0
    path: str = ""
    prefix_rewrite: str = ""
    regex_rewrite: RegexRewrite | None = None
    response_code: int = 301
    strip_query: bool = False


@dataclass(frozen=True, slots=True)
class DirectResponseAction:
    status: int
    body: bytes | None = None


Action = RouteAction | RedirectAction | DirectResponseAction


@dataclass(frozen=True, slots=True)
class Route:
    match: RouteMatch
    action: Action
    name: str = ""
    mutations: HeaderMutations = NO_MUTATIONS
    # The prefix the route matched on, for prefix_rewrite ("" when the route is not a prefix route).
    match_prefix: str = ""
    typed_per_filter_config: tuple[tuple[str, object], ...] = ()
    # Route.decorator: the tracing span's operation name, and whether it is propagated in
    # x-envoy-decorator-operation (only under HCM tracing: http/trace_reason.decorate).
    decorator_operation: str = ""
    decorator_propagate: bool = True


class RequireTls(Enum):
    NONE = "NONE"
    EXTERNAL_ONLY = "EXTERNAL_ONLY"
    ALL = "ALL"


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    mutations: HeaderMutations = NO_MUTATIONS
    require_tls: RequireTls = RequireTls.NONE
    include_request_attempt_count: bool = False
    include_attempt_count_in_response: bool = False
    retry_policy: RetryPolicy | None = None


class RouteSelector(Protocol):
    def select(self, authority: str, path: str, request: RequestView) -> tuple[VirtualHost, Route] | None: ...

    def select_cached(
        self, authority: bytes, path: bytes, request: RequestView
    ) -> tuple[VirtualHost, Route] | None: ...


@dataclass(frozen=True, slots=True)
class InternalAddressConfig:
    """HttpConnectionManager.internal_address_config: which downstream addresses make a request
    internal (http/edge.py).  `cidr_ranges` are canonical "net/len" strings; when there are none,
    Envoy falls back to its legacy test (RFC 1918 IPv4, 127.0.0.1, fd00::/8 and ::1).  Without an
    internal_address_config at all (None on the connection manager) no request is internal.

    It belongs with the connection manager (model/listener.py); it lives here until it moves."""

    unix_sockets: bool = False
    cidr_ranges: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteConfiguration:
    name: str
    virtual_hosts: tuple[VirtualHost, ...] = ()
    mutations: HeaderMutations = NO_MUTATIONS
    internal_only_headers: tuple[bytes, ...] = ()
    ignore_port_in_host_matching: bool = False
    most_specific_header_mutations_wins: bool = False
    # Built by translate/ from virtual_hosts (sidecar.routing.table.RouteTable).
    table: RouteSelector | None = field(default=None, compare=False)

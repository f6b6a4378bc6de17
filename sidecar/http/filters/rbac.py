"""envoy.filters.http.rbac: allow or deny each request by policy (extensions.filters.http.rbac.v3).

As Envoy's RoleBasedAccessControlFilter::decodeHeaders: the route's (else the virtual host's)
typed_per_filter_config RBACPerRoute, when there is one, replaces the filter's config whole (an
RBACPerRoute without `rbac` disables the filter there).  The shadow rules are evaluated first and
only counted; then the rules: allowed continues, denied answers Envoy's local reply 403
`RBAC: access denied` (to a gRPC request: 200 with grpc-status 7 and that grpc-message).  A config without `rules` enforces nothing and counts nothing.

Stats (RBAC::generateStats, checked against Envoy 1.40): `http.<stat_prefix>.rbac.[<rules_stat_prefix>.]`
allowed / denied and `http.<stat_prefix>.rbac.[<shadow_rules_stat_prefix>.]` shadow_allowed /
shadow_denied (the shadow prefix is not under the rules prefix); with track_per_rule_stats also
`...policy.<name>.allowed|denied|shadow_allowed|shadow_denied` for the matched policy.  Counters are
shared by name, so two RBAC filters with the same prefix (Istio's DENY and ALLOW filters) add up.

Not kept (no consumer here): the dynamic metadata Envoy sets (shadow_effective_policy_id,
shadow_engine_result, the LOG action's envoy.common access_log_hint) and the response code details."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sidecar.http.filters.base import CONTINUE, STOP, PassThrough
from sidecar.http.filters.fault import grpc_status_for_http, is_grpc
from sidecar.model.rbac import HttpRbac, IpAddress, PeerNames, RbacPerRoute
from sidecar.rbac.engine import evaluate, parse_ip
from sidecar.rbac.peer import connection_identity, connection_server_name
from sidecar.rbac.stats import RbacStats

if TYPE_CHECKING:
    from sidecar.http.conn_manager import Stream
    from sidecar.http.events import RequestHead
    from sidecar.model.listener import HttpConnectionManager

RBAC_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
DENIED_BODY = b"RBAC: access denied"  # Envoy's local reply body for a denied request
GRPC_DENIED = [
    (b"content-type", b"application/grpc"),
    (b"grpc-status", b"%d" % grpc_status_for_http(403)),  # 7, PERMISSION_DENIED
    (b"grpc-message", DENIED_BODY),
]


def last_xff_address(xff: str | None, skip: int) -> IpAddress | None:
    """Http::Utility::getLastAddressFromXFF: the address `skip` entries from the end of
    x-forwarded-for (trimmed), or None when there are too few entries or it is not an IP."""
    if xff is None:
        return None
    for _ in range(skip):
        cut = xff.rfind(",")
        if cut < 0:
            return None
        xff = xff[:cut]
    cut = xff.rfind(",")
    if cut >= 0 and cut + 1 < len(xff):
        xff = xff[cut + 1 :]
    return parse_ip(xff.strip(" \t\f\v\n\r"))


class HttpRequestView:
    """engine.RequestView of one request on one downstream connection; addresses parsed on demand."""

    __slots__ = ("cfg", "conn", "head")

    def __init__(self, conn: Any, head: RequestHead, cfg: HttpConnectionManager | None) -> None:
        self.conn = conn
        self.head = head
        self.cfg = cfg

    def header(self, name: str) -> str | None:
        return self.head.header(name)

    def header_values(self, name: str) -> list[str] | None:
        return self.head.header_values(name)

    def request_path(self) -> str | None:
        return self.head.path.decode("latin-1")

    def source_address(self) -> IpAddress | None:
        return parse_ip(getattr(self.conn, "peer_ip", None))

    def remote_address(self) -> IpAddress | None:
        """ConnectionManagerUtility::mutateRequestHeaders' final remote address.  Without
        use_remote_address: the XFF entry xff_num_trusted_hops from the end (the default XFF
        original-IP detection).  With it: xff_num_trusted_hops - 1 from the end of the header as the
        client sent it (our x-forwarded-for already has the peer appended, so one more unless
        skip_xff_append).  Either way the peer when that finds nothing."""
        cfg = self.cfg
        found = None
        if cfg is not None:
            hops = cfg.xff_num_trusted_hops
            if not cfg.use_remote_address:
                found = last_xff_address(self.head.header("x-forwarded-for"), hops)
            elif hops > 0:
                skip = hops - 1 if cfg.skip_xff_append else hops
                found = last_xff_address(self.head.header("x-forwarded-for"), skip)
        return found if found is not None else self.source_address()

    def destination_address(self) -> IpAddress | None:
        return parse_ip(getattr(self.conn, "local_ip", None))

    def destination_port(self) -> int | None:
        local = getattr(self.conn, "local_addr", b"")
        _, sep, port = local.rpartition(b":")
        return int(port) if sep and port.isdigit() else None

    def server_name(self) -> str:
        return connection_server_name(self.conn)

    def peer_identity(self) -> PeerNames | None:
        return connection_identity(self.conn)


def route_override(stream: Stream, name: str) -> RbacPerRoute | None:
    """The most specific RBACPerRoute for filter `name`: the route's, else the virtual host's."""
    for level in (stream.route, stream.vhost):
        for key, cfg in getattr(level, "typed_per_filter_config", ()):
            if key == name and isinstance(cfg, RbacPerRoute):
                return cfg
    return None


class RbacRuntime:
    """One RBAC filter of one connection manager: its name (the typed_per_filter_config key), its
    config, its stats and the connection manager config (for remote_ip's x-forwarded-for rules)."""

    __slots__ = ("config", "hcm", "name", "stats")

    def __init__(
        self, name: str, config: HttpRbac, stats: RbacStats, hcm: HttpConnectionManager | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.stats = stats
        self.hcm = hcm


class RbacFilter(PassThrough):
    """Stateless per stream, so one instance serves every stream of a connection manager."""

    __slots__ = ("rt",)

    def __init__(self, rt: RbacRuntime) -> None:
        self.rt = rt

    def on_request_head(self, stream: Stream, head: RequestHead, end: bool) -> int:
        rt = self.rt
        cfg: HttpRbac | None = rt.config
        if stream.route is not None or stream.vhost is not None:
            override = route_override(stream, rt.name)
            if override is not None:
                cfg = override.rbac
        if cfg is None or (cfg.rules is None and cfg.shadow_rules is None):
            return CONTINUE  # "no engine, allowed by default"
        view = HttpRequestView(stream.conn, head, rt.hcm)
        st = rt.stats
        per_rule = cfg.track_per_rule_stats
        if cfg.shadow_rules is not None:
            ok, pid = evaluate(cfg.shadow_rules, view)
            (st.shadow_allowed if ok else st.shadow_denied).inc()
            if pid and per_rule:
                st.policy(pid, "shadow_allowed" if ok else "shadow_denied", shadow=True)
        if cfg.rules is None:
            return CONTINUE
        ok, pid = evaluate(cfg.rules, view)
        if ok:
            st.allowed.inc()
            if pid and per_rule:
                st.policy(pid, "allowed")
            return CONTINUE
        if is_grpc(head):
            # sendLocalReply on a gRPC request: HTTP 200, PERMISSION_DENIED in grpc-status.
            stream.local_reply(200, None, GRPC_DENIED)
        else:
            stream.local_reply(403, DENIED_BODY)
        st.denied.inc()
        if pid and per_rule:
            st.policy(pid, "denied")
        return STOP


def rbac_factory(rt: RbacRuntime) -> Callable[[], RbacFilter]:
    filt = RbacFilter(rt)
    return lambda: filt

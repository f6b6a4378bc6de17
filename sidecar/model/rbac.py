"""Role based access control: policies, their permission and principal trees, and the configs of
envoy.filters.http.rbac and envoy.filters.network.rbac (config.rbac.v3, extensions.filters.*.rbac.v3).

Permissions and principals share one node vocabulary, as Envoy's RBAC matchers do (matchers.h: one
AndMatcher serves both `and_rules` and `and_ids`).  String and header matchers inside the nodes are the
compiled objects of `sidecar.routing.matchers`, built by translate/rbac.py; this module only names
their shape.  Evaluation lives in sidecar/rbac/engine.py.  No I/O, no protobuf."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Action(Enum):
    """config.rbac.v3.RBAC.Action."""

    ALLOW = "ALLOW"
    DENY = "DENY"
    LOG = "LOG"  # always allowed; a matched policy only sets an access-log hint


class EnforcementType(Enum):
    """extensions.filters.network.rbac.v3.RBAC.EnforcementType."""

    ONE_TIME_ON_FIRST_BYTE = "ONE_TIME_ON_FIRST_BYTE"
    CONTINUOUS = "CONTINUOUS"


class StringMatch(Protocol):
    """A compiled type.matcher.v3.StringMatcher (routing.matchers.ExactMatcher and friends)."""

    def match(self, value: str) -> bool: ...


class HeaderMatch(Protocol):
    """A compiled config.route.v3.HeaderMatcher (routing.matchers.HeaderMatcher)."""

    def matches(self, request: Any, path: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Cidr:
    """config.core.v3.CidrRange, truncated as Envoy's CidrRange::create does: the address is masked to
    `prefix_len` bits and a length beyond the family's width means all of them.  An IPv4 range never
    holds an IPv6 address, nor the reverse (no v4-mapped folding)."""

    version: int
    network: int
    mask: int
    prefix_len: int

    @classmethod
    def of(cls, address: IpAddress, prefix_len: int) -> Cidr:
        width = address.max_prefixlen
        n = min(prefix_len, width)
        mask = ((1 << n) - 1) << (width - n)
        return cls(address.version, int(address) & mask, mask, n)

    def contains(self, address: IpAddress | None) -> bool:
        return (
            address is not None
            and address.version == self.version
            and int(address) & self.mask == self.network
        )


# --- nodes: Permission.rule and Principal.identifier ----------------------------------------------


@dataclass(frozen=True, slots=True)
class AnyNode:
    """`any: true` (both trees)."""


ANY = AnyNode()


@dataclass(frozen=True, slots=True)
class AndNode:
    """and_rules / and_ids: every item matches."""

    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class OrNode:
    """or_rules / or_ids: some item matches."""

    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class NotNode:
    """not_rule / not_id."""

    item: Node


@dataclass(frozen=True, slots=True)
class HeaderNode:
    """header: a route HeaderMatcher on the request headers (`:method`, `:path` ... included).  The
    network filter has no headers: it sees every header as missing."""

    matcher: HeaderMatch


@dataclass(frozen=True, slots=True)
class UrlPathNode:
    """url_path: type.matcher.v3.PathMatcher, the string matcher on :path without query and fragment
    (Matchers::PathMatcher::match).  No :path (the network filter) never matches."""

    matcher: StringMatch


@dataclass(frozen=True, slots=True)
class DestinationIpNode:
    """destination_ip: the downstream connection's local address."""

    cidr: Cidr


@dataclass(frozen=True, slots=True)
class DestinationPortNode:
    """destination_port: the downstream connection's local port."""

    port: int


@dataclass(frozen=True, slots=True)
class DestinationPortRangeNode:
    """destination_port_range: start <= local port < end."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class RequestedServerNameNode:
    """requested_server_name: the SNI of the downstream connection ("" without TLS or SNI)."""

    matcher: StringMatch


@dataclass(frozen=True, slots=True)
class AuthenticatedNode:
    """authenticated: the connection is TLS and, when `principal_name` is set, some URI SAN, else some
    DNS SAN, else the subject of the peer certificate matches it (AuthenticatedMatcher::matches)."""

    principal_name: StringMatch | None = None


@dataclass(frozen=True, slots=True)
class SourceIpNode:
    """source_ip (deprecated in Envoy): the connection's remote address."""

    cidr: Cidr


@dataclass(frozen=True, slots=True)
class DirectRemoteIpNode:
    """direct_remote_ip: the downstream peer address (the same as source_ip without PROXY protocol)."""

    cidr: Cidr


@dataclass(frozen=True, slots=True)
class RemoteIpNode:
    """remote_ip: the downstream remote address as the connection manager decided it (x-forwarded-for
    rules; for the network filter the peer address)."""

    cidr: Cidr


Node = (
    AnyNode
    | AndNode
    | OrNode
    | NotNode
    | HeaderNode
    | UrlPathNode
    | DestinationIpNode
    | DestinationPortNode
    | DestinationPortRangeNode
    | RequestedServerNameNode
    | AuthenticatedNode
    | SourceIpNode
    | DirectRemoteIpNode
    | RemoteIpNode
)


# --- policies and the filter configs -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """config.rbac.v3.Policy: some permission and some principal match (each list is an OR)."""

    permissions: tuple[Node, ...]
    principals: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Rbac:
    """config.rbac.v3.RBAC.  `policies` are sorted by name: Envoy keeps them in a std::map and the first
    matching policy in that order is the effective policy id."""

    action: Action = Action.ALLOW
    policies: tuple[tuple[str, Policy], ...] = ()


@dataclass(frozen=True, slots=True)
class HttpRbac:
    """extensions.filters.http.rbac.v3.RBAC.  `rules` None: nothing is enforced (Envoy builds no engine,
    counts nothing); an Rbac with no policies is a real engine (ALLOW denies all, DENY allows all)."""

    rules: Rbac | None = None
    shadow_rules: Rbac | None = None
    rules_stat_prefix: str = ""
    shadow_rules_stat_prefix: str = ""
    track_per_rule_stats: bool = False


@dataclass(frozen=True, slots=True)
class RbacPerRoute:
    """extensions.filters.http.rbac.v3.RBACPerRoute: replaces the filter's config on a route or virtual
    host; `rbac` None disables the filter there."""

    rbac: HttpRbac | None = None


@dataclass(frozen=True, slots=True)
class NetworkRbac:
    """extensions.filters.network.rbac.v3.RBAC: checked when the first bytes of a connection arrive
    (and on every read with CONTINUOUS); a denied connection is closed, after `delay_deny` seconds
    when that is set."""

    stat_prefix: str
    rules: Rbac | None = None
    shadow_rules: Rbac | None = None
    shadow_rules_stat_prefix: str = ""
    enforcement_type: EnforcementType = EnforcementType.ONE_TIME_ON_FIRST_BYTE
    delay_deny: float = 0.0


class PeerNames(Protocol):
    """What `authenticated` reads of a peer certificate.  PeerIdentity below has it, and so does the
    TLS layer's sidecar.tls.identity.PeerIdentity (a superset): either may be given."""

    @property
    def uri_sans(self) -> tuple[str, ...]: ...

    @property
    def dns_sans(self) -> tuple[str, ...]: ...

    @property
    def subject(self) -> str: ...


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What `authenticated` reads of a TLS connection's peer certificate, in certificate order.
    `subject` is the RFC 2253 string ("" when there is no certificate or its subject is empty, as for
    SPIFFE workload certificates).  A TLS connection without a client certificate has all three empty."""

    uri_sans: tuple[str, ...] = ()
    dns_sans: tuple[str, ...] = ()
    subject: str = ""

"""The RBAC engine: does a request (or a connection) match a policy, and is it allowed.

Envoy's semantics (source/extensions/filters/common/rbac/engine_impl.cc and matchers.cc):
- A policy matches when some permission and some principal match.  Policies are tried in name order
  (a std::map); the first match is the effective policy id.
- ALLOW: allowed iff some policy matched (so no policies at all denies everything).
  DENY: allowed iff none matched.  LOG: always allowed; a match only asks for the access log
  (Envoy sets dynamic metadata envoy.common/access_log_hint).
- Shadow rules are a second engine evaluated the same way; the filters count its answer and never
  enforce it.

Pure: it reads the request only through `RequestView` and imports no I/O."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.model.rbac import (
    Action,
    AndNode,
    AnyNode,
    AuthenticatedNode,
    DestinationIpNode,
    DestinationPortNode,
    DestinationPortRangeNode,
    DirectRemoteIpNode,
    HeaderNode,
    IpAddress,
    Node,
    NotNode,
    OrNode,
    PeerNames,
    Policy,
    Rbac,
    RemoteIpNode,
    RequestedServerNameNode,
    SourceIpNode,
    UrlPathNode,
)
from sidecar.routing.matchers import path_end


class RequestView(Protocol):
    """What RBAC may read of a request or a connection.

    `header` answers lowercase names and the pseudo-headers `:method`, `:path`, `:authority` and
    `:scheme` (several values joined with ','); a view may also have `header_values(name)` for a
    repeated header (routing.matchers.MultiValueRequestView).  The network filter answers None to
    every header and to `request_path`."""

    def header(self, name: str) -> str | None: ...

    def request_path(self) -> str | None:
        """:path as received, query included; None when there is none."""
        ...

    def source_address(self) -> IpAddress | None:
        """The connection's remote (peer) address: source_ip and direct_remote_ip."""
        ...

    def remote_address(self) -> IpAddress | None:
        """The downstream remote address after the x-forwarded-for rules: remote_ip."""
        ...

    def destination_address(self) -> IpAddress | None:
        """The connection's local address (the original destination when redirected)."""
        ...

    def destination_port(self) -> int | None: ...

    def server_name(self) -> str:
        """The requested server name (SNI); "" without TLS."""
        ...

    def peer_identity(self) -> PeerNames | None:
        """None on a plaintext connection; the peer certificate's names on a TLS one (all empty
        when the peer sent no certificate)."""
        ...


# --- node evaluation ---------------------------------------------------------------------------------


def matches(node: Node, req: RequestView) -> bool:
    """Does `node` (a permission or a principal) match the request?"""
    return _MATCH[type(node)](node, req)


def _any(node: Any, req: RequestView) -> bool:
    return True


def _and(node: AndNode, req: RequestView) -> bool:
    for item in node.items:
        if not _MATCH[type(item)](item, req):
            return False
    return True


def _or(node: OrNode, req: RequestView) -> bool:
    for item in node.items:
        if _MATCH[type(item)](item, req):
            return True
    return False


def _not(node: NotNode, req: RequestView) -> bool:
    item = node.item
    return not _MATCH[type(item)](item, req)


def _header(node: HeaderNode, req: RequestView) -> bool:
    # Http::HeaderUtility::matchHeaders, the same as route matching (routing.matchers.HeaderMatcher).
    return node.matcher.matches(req, "")


def _url_path(node: UrlPathNode, req: RequestView) -> bool:
    path = req.request_path()
    if path is None:
        return False
    end = path_end(path)  # Http::PathUtil::removeQueryAndFragment
    return node.matcher.match(path if end == len(path) else path[:end])


def _destination_ip(node: DestinationIpNode, req: RequestView) -> bool:
    return node.cidr.contains(req.destination_address())


def _destination_port(node: DestinationPortNode, req: RequestView) -> bool:
    return req.destination_port() == node.port


def _destination_port_range(node: DestinationPortRangeNode, req: RequestView) -> bool:
    port = req.destination_port()
    return port is not None and node.start <= port < node.end


def _server_name(node: RequestedServerNameNode, req: RequestView) -> bool:
    return node.matcher.match(req.server_name())


def _authenticated(node: AuthenticatedNode, req: RequestView) -> bool:
    peer = req.peer_identity()
    if peer is None:  # not TLS: "connection was not authenticated"
        return False
    m = node.principal_name
    if m is None:  # any TLS connection, even one without a client certificate
        return True
    for uri in peer.uri_sans:
        if m.match(uri):
            return True
    for dns in peer.dns_sans:
        if m.match(dns):
            return True
    return m.match(peer.subject)


def _source_ip(node: SourceIpNode | DirectRemoteIpNode, req: RequestView) -> bool:
    return node.cidr.contains(req.source_address())


def _remote_ip(node: RemoteIpNode, req: RequestView) -> bool:
    return node.cidr.contains(req.remote_address())


_MATCH: dict[type, Callable[[Any, RequestView], bool]] = {
    AnyNode: _any,
    AndNode: _and,
    OrNode: _or,
    NotNode: _not,
    HeaderNode: _header,
    UrlPathNode: _url_path,
    DestinationIpNode: _destination_ip,
    DestinationPortNode: _destination_port,
    DestinationPortRangeNode: _destination_port_range,
    RequestedServerNameNode: _server_name,
    AuthenticatedNode: _authenticated,
    SourceIpNode: _source_ip,
    DirectRemoteIpNode: _source_ip,
    RemoteIpNode: _remote_ip,
}


def policy_matches(policy: Policy, req: RequestView) -> bool:
    """PolicyMatcher::matches: some permission and some principal (each list is an OR)."""
    for perm in policy.permissions:
        if _MATCH[type(perm)](perm, req):
            break
    else:
        return False
    for principal in policy.principals:
        if _MATCH[type(principal)](principal, req):
            return True
    return False


def matched_policy(rbac: Rbac, req: RequestView) -> str | None:
    """The name of the first matching policy in name order, or None."""
    for name, policy in rbac.policies:
        if policy_matches(policy, req):
            return name
    return None


def evaluate(rbac: Rbac, req: RequestView) -> tuple[bool, str | None]:
    """(allowed, matched policy id or None) under `rbac.action` (handleAction)."""
    matched = matched_policy(rbac, req)
    action = rbac.action
    if action is Action.ALLOW:
        return matched is not None, matched
    if action is Action.DENY:
        return matched is None, matched
    return True, matched  # LOG


def log_hint(rbac: Rbac, matched: str | None) -> bool | None:
    """Envoy's envoy.common/access_log_hint for an enforced engine: True/False under LOG, None
    (not set) under ALLOW and DENY."""
    if rbac.action is not Action.LOG:
        return None
    return matched is not None


def response_detail(policy_id: str | None) -> str:
    """RESPONSE_CODE_DETAILS / CONNECTION_TERMINATION_DETAILS of a deny (RBAC::responseDetail):
    whitespace in the name becomes '_' so access log fields stay one token."""
    name = "none" if not policy_id else "".join("_" if c in " \t\n\v\f\r" else c for c in policy_id)
    return f"rbac_access_denied_matched_policy[{name}]"


# --- a plain view: connections (the network filter) and tests ------------------------------------------


def parse_ip(text: str | bytes | None) -> IpAddress | None:
    """An IP address from its text (no port, no brackets), or None when it is not one."""
    if not text:
        return None
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ConnectionView:
    """A RequestView of a connection with no HTTP request (what the network filter evaluates):
    every header and the path are missing; remote_ip is the peer address."""

    source: IpAddress | None = None
    destination: IpAddress | None = None
    port: int | None = None
    sni: str = ""
    peer: PeerNames | None = None

    def header(self, name: str) -> str | None:
        return None

    def request_path(self) -> str | None:
        return None

    def source_address(self) -> IpAddress | None:
        return self.source

    def remote_address(self) -> IpAddress | None:
        return self.source

    def destination_address(self) -> IpAddress | None:
        return self.destination

    def destination_port(self) -> int | None:
        return self.port

    def server_name(self) -> str:
        return self.sni

    def peer_identity(self) -> PeerNames | None:
        return self.peer

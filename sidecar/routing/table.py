"""The route table: virtual host by authority, then the first matching route (Envoy's RouteMatcher).

Built once per RouteConfiguration by translate/rds.py; `select` is pure and runs per request.
Virtual host lookup copies RouteMatcher::findVirtualHost (config_impl.cc): the authority is
ASCII-lowercased (after dropping its port when ignore_port_in_host_matching), then tried as an
exact domain, then against `*suffix` domains longest first, then `prefix*` domains longest first,
then the `*` virtual host.  A wildcard needs at least one character of its own, so `*.foo.com`
does not match `.foo.com`.  Domains with a port only match an authority with that same port
text; there is no second try without the port.  Must not know protobuf or the action kinds."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sidecar.model.route import RequestView, RequireTls, Route, RouteMatch, VirtualHost
from sidecar.routing.matchers import PrefixPathMatcher, ascii_lower
from sidecar.routing.rewrite import SSL_REDIRECT_ACTION

# What a virtual host with require_tls answers to a plain-text request (VirtualHostImpl's
# ssl_redirect_route_): a 301 to https://<authority><path>, see rewrite.SSL_REDIRECT_ACTION.
SSL_REDIRECT_ROUTE = Route(match=RouteMatch(path=PrefixPathMatcher("")), action=SSL_REDIRECT_ACTION)

_WildcardIndex = tuple[tuple[int, dict[str, VirtualHost]], ...]
_MISS = object()
_CACHE_SIZE = 1024


def port_start(host: str) -> int:
    """Index of the ':' before a port, or -1 (Http::HeaderUtility::getPortStart; "[v6]" aware)."""
    colon = host.rfind(":")
    if colon < 0:
        return -1
    bracket = host.rfind("]")
    return colon if bracket < 0 or bracket < colon else -1


class DuplicateDomainError(ValueError):
    def __init__(self, domain: str, vhost_index: int, domain_index: int, reason: str) -> None:
        super().__init__(reason)
        self.domain = domain
        self.vhost_index = vhost_index
        self.domain_index = domain_index


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class RouteTable:
    exact: dict[str, VirtualHost]
    # (length of the fixed part, {fixed part: virtual host}), longest first.
    suffixes: _WildcardIndex
    prefixes: _WildcardIndex
    default: VirtualHost | None
    ignore_port_in_host_matching: bool = False
    # True when the choice depends on nothing but (authority, path): no virtual host requires TLS and
    # no route has header / query parameter / gRPC requirements.  select_cached may then remember it.
    cacheable: bool = False
    _cache: dict[tuple[bytes, bytes], Any] = field(default_factory=dict, compare=False)

    @classmethod
    def build(
        cls, virtual_hosts: Iterable[VirtualHost], ignore_port_in_host_matching: bool = False
    ) -> RouteTable:
        """Index the domains.  Raises DuplicateDomainError for a repeated domain (after
        lowercasing) or a second `*`, which Envoy refuses."""
        exact: dict[str, VirtualHost] = {}
        suffixes: dict[int, dict[str, VirtualHost]] = {}
        prefixes: dict[int, dict[str, VirtualHost]] = {}
        default: VirtualHost | None = None
        for vi, vhost in enumerate(virtual_hosts):
            for di, raw in enumerate(vhost.domains):
                domain = ascii_lower(raw)
                if domain == "*":
                    if default is not None:
                        raise DuplicateDomainError(raw, vi, di, "Only a single wildcard domain is permitted")
                    default = vhost
                    continue
                if domain.startswith("*"):
                    index, key = suffixes.setdefault(len(domain) - 1, {}), domain[1:]
                elif domain.endswith("*"):
                    index, key = prefixes.setdefault(len(domain) - 1, {}), domain[:-1]
                else:
                    index, key = exact, domain
                if key in index:
                    reason = (
                        f"Only unique values for domains are permitted. Duplicate entry of domain {domain}"
                    )
                    raise DuplicateDomainError(raw, vi, di, reason)
                index[key] = vhost
        vhosts = [*exact.values(), *(v for _, i in suffixes.items() for v in i.values())]
        vhosts += [v for _, i in prefixes.items() for v in i.values()]
        if default is not None:
            vhosts.append(default)
        cacheable = all(
            v.require_tls is RequireTls.NONE and all(not r.match.requirements for r in v.routes) for v in vhosts
        )
        return cls(
            exact=exact,
            suffixes=tuple(sorted(suffixes.items(), reverse=True)),
            prefixes=tuple(sorted(prefixes.items(), reverse=True)),
            default=default,
            ignore_port_in_host_matching=ignore_port_in_host_matching,
            cacheable=cacheable,
        )

    def __repr__(self) -> str:
        suffixes = ["*" + k for _, index in self.suffixes for k in index]
        prefixes = [k + "*" for _, index in self.prefixes for k in index]
        default = [] if self.default is None else ["*"]
        return f"RouteTable({[*self.exact, *suffixes, *prefixes, *default]!r})"

    def find_virtual_host(self, authority: str) -> VirtualHost | None:
        if not self.exact and not self.suffixes and not self.prefixes:
            return self.default
        if self.ignore_port_in_host_matching:
            colon = port_start(authority)
            if colon >= 0:
                authority = authority[:colon]
        host = ascii_lower(authority)
        vhost = self.exact.get(host)
        if vhost is not None:
            return vhost
        size = len(host)
        for length, index in self.suffixes:
            if length < size:
                vhost = index.get(host[size - length :])
                if vhost is not None:
                    return vhost
        for length, index in self.prefixes:
            if length < size:
                vhost = index.get(host[:length])
                if vhost is not None:
                    return vhost
        return self.default

    def select_cached(
        self, authority: bytes, path: bytes, request: RequestView
    ) -> tuple[VirtualHost, Route] | None:
        """`select` for the request path: when the table is `cacheable`, the answer for an
        (authority, path) pair is remembered (at most _CACHE_SIZE pairs; the table is replaced,
        cache and all, when the route configuration changes)."""
        if not self.cacheable:
            return self.select(authority.decode("latin-1"), path.decode("latin-1"), request)
        key = (authority, path)
        cache = self._cache
        hit = cache.get(key, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[no-any-return]
        sel = self.select(authority.decode("latin-1"), path.decode("latin-1"), request)
        if len(cache) >= _CACHE_SIZE:
            cache.clear()  # paths with ids or queries: start over rather than track recency
        cache[key] = sel
        return sel

    def select(self, authority: str, path: str, request: RequestView) -> tuple[VirtualHost, Route] | None:
        """The virtual host and the first of its routes whose path and requirements all match."""
        vhost = self.find_virtual_host(authority)
        if vhost is None:
            return None
        if vhost.require_tls is not RequireTls.NONE:
            forwarded_proto = request.header("x-forwarded-proto")
            if not forwarded_proto:
                # Envoy routes nothing without x-forwarded-proto (the HCM always sets it).
                return None
            if _needs_tls_redirect(vhost, forwarded_proto, request):
                return vhost, SSL_REDIRECT_ROUTE
        for route in vhost.routes:
            match = route.match
            if not match.path.matches(path):
                continue
            for requirement in match.requirements:
                if not requirement.matches(request, path):
                    break
            else:
                return vhost, route
        return None


def _needs_tls_redirect(vhost: VirtualHost, forwarded_proto: str, request: RequestView) -> bool:
    """VirtualHostImpl::getRouteFromEntries: ALL redirects unless x-forwarded-proto is https;
    EXTERNAL_ONLY also lets `x-envoy-internal: true` requests through."""
    if forwarded_proto == "https":
        return False
    if vhost.require_tls is RequireTls.EXTERNAL_ONLY:
        return request.header("x-envoy-internal") != "true"
    return True

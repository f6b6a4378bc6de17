"""RouteAction.hash_policy -> the 64-bit request hash that RING_HASH and MAGLEV clusters pick by.

Envoy's Http::HashPolicyImpl (source/common/http/hash_policy.cc):
- header: every value of the header, sorted, chained through xxHash64 (each value's hash seeds the
  next), so the order of repeated headers does not matter;
- cookie: xxHash64 of the first cookie of that name in the Cookie headers (surrounding quotes
  dropped).  When there is none and the policy has a `ttl`, the caller's `add_cookie` makes one (the
  router's addDownstreamSetCookie: 16 hex digits of xxHash64 over the downstream connection's
  remote then local "ip:port", the same for every request of a connection) and the hash is taken of
  that value; `set_cookie` formats the Set-Cookie header sent back with the upstream's response;
- connection_properties.source_ip: xxHash64 of the downstream peer's IP as text;
- query_parameter: xxHash64 of the first `name=value` value of the raw (undecoded) query string.
Policies are combined in order: hash = rotl64(hash, 1) ^ new (the first one as is); once a hash
exists, a `terminal` policy that has been evaluated stops the walk.  No hash at all: None, and the
load balancer takes a random host.

Pure: reads the request head and the peer IP it is given."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from sidecar.model.route import HashPolicy, HashPolicyKind
from sidecar.upstream.lb.ring_hash import xxhash64

_MASK = (1 << 64) - 1


class HeadView(Protocol):
    """What hashing reads of a request (http.events.RequestHead has these)."""

    @property
    def headers(self) -> list[tuple[bytes, bytes]]: ...
    @property
    def path(self) -> bytes: ...
    @property
    def authority(self) -> bytes: ...
    @property
    def method(self) -> bytes: ...
    @property
    def scheme(self) -> bytes: ...


def _header(head: HeadView, name: str) -> int | None:
    if name[0] == ":" or name == "host":
        pseudo = {
            ":authority": head.authority,
            "host": head.authority,
            ":path": head.path,
            ":method": head.method,
            ":scheme": head.scheme,
        }.get(name)
        return None if pseudo is None else xxhash64(pseudo)
    key = name.encode("latin-1")
    values = sorted(v for k, v in head.headers if k == key)
    if not values:
        return None
    h = 0
    for v in values:
        h = xxhash64(v, h)
    return h


def cookie_value(head: HeadView, name: str) -> bytes | None:
    """Envoy's Utility::parseCookieValue: first `name=value` among the Cookie headers' pairs."""
    key = name.encode("latin-1")
    for k, v in head.headers:
        if k != b"cookie":
            continue
        for part in v.split(b";"):
            part = part.strip(b" \t")
            eq = part.find(b"=")
            if eq < 0 or part[:eq] != key:
                continue
            value = part[eq + 1 :]
            if len(value) >= 2 and value[0] == 0x22 and value[-1] == 0x22:
                value = value[1:-1]
            return value
    return None


def query_value(path: bytes, name: str) -> bytes | None:
    """Envoy's QueryParamsMulti::parseQueryString(...).getFirstValue(name): no percent-decoding; a
    parameter without `=` has the empty value."""
    q = path.find(b"?")
    if q < 0:
        return None
    key = name.encode("latin-1")
    for param in path[q + 1 :].split(b"&"):
        eq = param.find(b"=")
        k, v = (param, b"") if eq < 0 else (param[:eq], param[eq + 1 :])
        if k == key:
            return v
    return None


AddCookie = Callable[[HashPolicy], bytes]


def generated_cookie(remote_addr: bytes, local_addr: bytes) -> bytes:
    """The value Envoy gives a generated hash cookie: Hex::uint64ToHex(xxHash64(remote + local)),
    both addresses as Envoy prints them ("1.2.3.4:80", "[::1]:80")."""
    return b"%016x" % xxhash64(remote_addr + local_addr)


def set_cookie(policy: HashPolicy, value: bytes) -> bytes:
    """Http::Utility::makeSetCookieValue(name, value, path, ttl, httponly=true, attributes):
    `name="value"`, then Max-Age unless the ttl is 0, Path when set, the attributes (`; name` or
    `; name=value`), and HttpOnly last."""
    out = b'%s="%s"' % (policy.name.encode("latin-1"), value)
    if policy.ttl:
        out += b"; Max-Age=%d" % policy.ttl
    if policy.path:
        out += b"; Path=" + policy.path.encode("latin-1")
    for name, attr in policy.attributes:
        out += b"; " + name.encode("latin-1")
        if attr:
            out += b"=" + attr.encode("latin-1")
    return out + b"; HttpOnly"


def evaluate(policy: HashPolicy, head: HeadView, peer_ip: bytes, add_cookie: AddCookie | None = None) -> int | None:
    kind = policy.kind
    if kind is HashPolicyKind.HEADER:
        return _header(head, policy.name)
    if kind is HashPolicyKind.COOKIE:
        value = cookie_value(head, policy.name)
        # An empty cookie counts as absent (Envoy tests `value.empty()`).
        if not value and policy.ttl is not None and add_cookie is not None:
            value = add_cookie(policy)
        return xxhash64(value) if value else None
    if kind is HashPolicyKind.SOURCE_IP:
        return xxhash64(peer_ip) if peer_ip else None
    value = query_value(head.path, policy.name)
    return None if value is None else xxhash64(value)


def request_hash(
    policies: Sequence[HashPolicy], head: HeadView, peer_ip: bytes, add_cookie: AddCookie | None = None
) -> int | None:
    """The combined hash of `policies` for this request, or None when none produced a value."""
    h: int | None = None
    for p in policies:
        new = evaluate(p, head, peer_ip, add_cookie)
        if new is not None:
            # Rotating the previous value keeps two equal policies from cancelling out.
            h = new if h is None else (((h << 1) | (h >> 63)) & _MASK) ^ new
        if p.terminal and h is not None:
            break
    return h

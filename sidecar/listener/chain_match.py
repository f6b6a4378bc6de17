"""Filter chain selection: Envoy's FilterChainMatch precedence, compiled once per listener config.

Envoy (source/common/listener_manager/filter_chain_manager_impl.cc) builds a tree with one level per
criterion, in this fixed order, and walks it keeping only the most specific branch at each level:

  destination_port (exact, else "any") -> prefix_ranges (longest prefix of the destination IP) ->
  server_names (exact, then `*.suffix` from the longest suffix, then none) -> transport_protocol
  (exact, else none) -> application_protocols (the first offered protocol that some chain names, else
  none) -> direct_source_prefix_ranges (longest prefix) -> source_type (LOCAL for a loopback or
  same-IP peer, EXTERNAL otherwise, each only when some chain asks for it; else ANY) ->
  source_prefix_ranges (longest prefix) -> source_ports (exact, else any).

There is no backtracking: once a level picked a branch, a dead end below it means "no match", and
the listener's default_filter_chain (or, without one, closing the connection) follows.  Two chains
that end at the same leaf are a configuration error, as in Envoy.

Pure: no sockets, no clock.  The destination is the connection's local address after the original_dst
listener filter restored it; the caller passes strings and `is_local_source`."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sidecar.model.listener import FilterChain, FilterChainMatch, SourceType

T = TypeVar("T")

# Envoy matches a non-IP address (a Unix socket) as 255.255.255.255: only catch-all ranges match it.
_FAKE = (False, 0xFFFFFFFF)
# An empty range list is the catch-all for both families (makeCidrListEntry); it is kept under the
# key "" and expanded when the Lpm is built.
_CATCH_ALL = ("0.0.0.0/0", "::/0")


class OverlappingMatch(ValueError):
    """Two filter chains reach the same leaf.  `index` is the chain (position in filter_chains) that
    was being added; `reason` is Envoy's wording."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def parse_ip(text: str) -> tuple[bool, int]:
    """(is_ipv6, address as an int); a non-IP string (a pipe) gives Envoy's fake 255.255.255.255."""
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return _FAKE
    return a.version == 6, int(a)


def canonical_cidr(text: str) -> str:
    """`addr/len` with host bits cleared ("10.1.2.3/8" -> "10.0.0.0/8"), as Envoy's CidrRange keys
    its maps; raises ValueError for a malformed range."""
    return str(ipaddress.ip_network(text, strict=False))


class Lpm(Generic[T]):
    """Longest-prefix match over IPv4 and IPv6 ranges, returning only the longest match's value
    (Envoy's LcTrie built with exclusive=true).  One dict per prefix length, tried longest first:
    a lookup costs one mask and one dict probe per distinct length."""

    __slots__ = ("v4", "v6")

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        by_len: dict[tuple[bool, int], dict[int, T]] = {}
        # "" (no ranges configured) first: a chain that names 0.0.0.0/0 itself takes that slot, as
        # Envoy's trie resolves the two (observed on envoy 1.40, either chain order).
        ordered = sorted(entries, key=lambda e: e[0] != "")
        for cidr, value in ordered:
            for text in _CATCH_ALL if cidr == "" else (cidr,):
                net = ipaddress.ip_network(text)
                by_len.setdefault((net.version == 6, net.prefixlen), {})[int(net.network_address)] = value
        self.v4 = _levels(by_len, False, 32)
        self.v6 = _levels(by_len, True, 128)

    def get(self, key: tuple[bool, int]) -> T | None:
        v6, addr = key
        for mask, table in self.v6 if v6 else self.v4:
            hit = table.get(addr & mask)
            if hit is not None:
                return hit
        return None


def _levels(
    by_len: dict[tuple[bool, int], dict[int, T]], v6: bool, bits: int
) -> tuple[tuple[int, dict[int, T]], ...]:
    lengths = sorted((n for f, n in by_len if f is v6), reverse=True)
    full = (1 << bits) - 1
    return tuple(((full >> (bits - n)) << (bits - n), by_len[(v6, n)]) for n in lengths)


@dataclass(frozen=True, slots=True)
class _SourceTypes:
    """One direct-source branch: the source-IP tables per source_type (None when no chain uses it)."""

    any: Lpm[dict[int, FilterChain]] | None
    local: Lpm[dict[int, FilterChain]] | None
    external: Lpm[dict[int, FilterChain]] | None


_AppLevel = dict[str, Lpm[_SourceTypes]]
_ServerNames = dict[str, dict[str, _AppLevel]]


class ChainTable:
    """The compiled FilterChainMatch tree of one listener; `select` is the per-connection lookup."""

    __slots__ = ("default", "ports")

    def __init__(self, ports: dict[int, Lpm[_ServerNames]], default: FilterChain | None) -> None:
        self.ports = ports
        self.default = default

    def select(
        self,
        dest_ip: str,
        dest_port: int,
        server_name: str,
        transport_protocol: str,
        app_protos: tuple[str, ...],
        source_ip: str,
        source_port: int,
        is_local_source: bool,
        direct_source_ip: str | None = None,
    ) -> FilterChain | None:
        """The chain for one connection, else the default chain (None: close the connection).
        `server_name` must be lowercase (the tls_inspector lowercases it, as Envoy's socket does)."""
        ips = self.ports.get(dest_port)
        if ips is None:
            ips = self.ports.get(0)
        if ips is None:
            return self.default
        names = ips.get(parse_ip(dest_ip))
        if names is None:
            return self.default
        protocols = names.get(server_name)
        if protocols is None:
            # Wildcards from the most specific: ".b.example.com", ".example.com", ".com"; never the
            # whole name, never a bare ".".
            pos = server_name.find(".", 1)
            while 0 <= pos < len(server_name) - 1:
                protocols = names.get(server_name[pos:])
                if protocols is not None:
                    break
                pos = server_name.find(".", pos + 1)
            else:
                protocols = names.get("")
        if protocols is None:
            return self.default
        apps = protocols.get(transport_protocol)
        if apps is None:
            apps = protocols.get("")
            if apps is None:
                return self.default
        direct = None
        for proto in app_protos:
            direct = apps.get(proto)
            if direct is not None:
                break
        else:
            direct = apps.get("")
        if direct is None:
            return self.default
        src = parse_ip(source_ip)
        types = direct.get(src if direct_source_ip is None else parse_ip(direct_source_ip))
        if types is None:
            return self.default
        sources = types.local if is_local_source else types.external
        if sources is None:
            sources = types.any
            if sources is None:
                return self.default
        ports = sources.get(src)
        if ports is None:
            return self.default
        chain = ports.get(source_port)
        if chain is None and source_port != 0:
            chain = ports.get(0)
        return chain if chain is not None else self.default


# -- compile --------------------------------------------------------------------------------------------
# The tree is first built from plain dicts keyed as Envoy keys its maps (canonical CIDR strings, ""
# for "no requirement"), which is where overlaps show, then its IP levels become Lpm tables.

_Leaf = dict[int, int]  # source port -> chain index
_BySource = dict[str, _Leaf]
_ByType = dict[SourceType, _BySource]
_ByDirect = dict[str, _ByType]
_ByApp = dict[str, _ByDirect]
_ByTransport = dict[str, _ByApp]
_ByName = dict[str, _ByTransport]
_ByDest = dict[str, _ByName]


def compile_chains(
    chains: Sequence[FilterChain], default: FilterChain | None, listener: str = ""
) -> ChainTable:
    """Build the lookup table; raises OverlappingMatch when two chains share a leaf (`listener` is
    the address used in the message, "127.0.0.1:10000")."""
    tree: dict[int, _ByDest] = {}
    for index, chain in enumerate(chains):
        m = chain.match
        overlap = OverlappingMatch(
            index,
            f"error adding listener '{listener}': multiple filter chains with overlapping matching "
            "rules are defined",
        )
        by_dest = tree.setdefault(m.destination_port, {})
        for dest in m.prefix_ranges or ("",):
            by_name = by_dest.setdefault(dest, {})
            for name in m.server_names or ("",):
                # "*.example.com" is kept as ".example.com", the form select() probes.
                key = name[1:] if name.startswith("*.") else name
                by_app = by_name.setdefault(key, {}).setdefault(m.transport_protocol, {})
                for app in m.application_protocols or ("",):
                    by_direct = by_app.setdefault(app, {})
                    for direct in m.direct_source_prefix_ranges or ("",):
                        by_source = by_direct.setdefault(direct, {}).setdefault(m.source_type, {})
                        _add_sources(by_source, m, index, overlap)
    ports = {port: Lpm((d, _names(n, chains)) for d, n in by_dest.items()) for port, by_dest in tree.items()}
    return ChainTable(ports, default)


def _add_sources(by_source: _BySource, m: FilterChainMatch, index: int, overlap: OverlappingMatch) -> None:
    for source in m.source_prefix_ranges or ("",):
        leaf = by_source.setdefault(source, {})
        for port in m.source_ports or (0,):
            # Even the same chain twice (a repeated port or range) is refused, as Envoy's try_emplace.
            if port in leaf:
                raise overlap
            leaf[port] = index


def _names(by_name: _ByName, chains: Sequence[FilterChain]) -> _ServerNames:
    return {
        name: {
            tp: {
                app: Lpm((d, _types(t, chains)) for d, t in by_direct.items())
                for app, by_direct in by_app.items()
            }
            for tp, by_app in by_transport.items()
        }
        for name, by_transport in by_name.items()
    }


def _types(by_type: _ByType, chains: Sequence[FilterChain]) -> _SourceTypes:
    def table(kind: SourceType) -> Lpm[dict[int, FilterChain]] | None:
        by_source = by_type.get(kind)
        if not by_source:
            return None
        return Lpm((s, {p: chains[i] for p, i in leaf.items()}) for s, leaf in by_source.items())

    return _SourceTypes(
        table(SourceType.ANY), table(SourceType.SAME_IP_OR_LOOPBACK), table(SourceType.EXTERNAL)
    )

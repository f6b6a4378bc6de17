"""listener.chain_match: Envoy's FilterChainMatch precedence, as case tables and as a property against a
brute-force reading of the rules (filter_chain_manager_impl.cc), plus the overlap refusals."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sidecar.listener.chain_match import ChainTable, Lpm, OverlappingMatch, compile_chains
from sidecar.model.listener import FilterChain, FilterChainMatch, SourceType

ANY, LOCAL, EXTERNAL = SourceType.ANY, SourceType.SAME_IP_OR_LOOPBACK, SourceType.EXTERNAL


def fc(name: str, **match: object) -> FilterChain:
    return FilterChain(name=name, filters=(), match=FilterChainMatch(**match))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Conn:
    dest_ip: str = "10.0.0.1"
    dest_port: int = 80
    sni: str = ""
    transport: str = "raw_buffer"
    alpn: tuple[str, ...] = ()
    src_ip: str = "192.168.1.1"
    src_port: int = 40000
    local: bool = False


def pick(table: ChainTable, c: Conn) -> str | None:
    chain = table.select(c.dest_ip, c.dest_port, c.sni, c.transport, c.alpn, c.src_ip, c.src_port, c.local)
    return None if chain is None else chain.name


def names(chains: Sequence[FilterChain], default: FilterChain | None = None) -> ChainTable:
    return compile_chains(chains, default, "0.0.0.0:15001")


# -- case tables ---------------------------------------------------------------------------------------
ISTIO_INBOUND = [
    # The shape of Istio's virtualInbound (15006): per-port chains by transport and ALPN, catch-alls.
    fc("tls-9080", destination_port=9080, transport_protocol="tls", application_protocols=("istio-http/1.1",)),
    fc("plain-http-9080", destination_port=9080, transport_protocol="raw_buffer", application_protocols=("http/1.1",)),
    fc("plain-tcp-9080", destination_port=9080, transport_protocol="raw_buffer"),
    fc("blackhole-15006", destination_port=15006),
    fc("passthrough-tls", transport_protocol="tls"),
    fc("passthrough-plain", transport_protocol="raw_buffer"),
]


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        (Conn(dest_port=9080, transport="tls", alpn=("istio-http/1.1", "istio")), "tls-9080"),
        (Conn(dest_port=9080, transport="raw_buffer", alpn=("http/1.1",)), "plain-http-9080"),
        (Conn(dest_port=9080, transport="raw_buffer"), "plain-tcp-9080"),
        # A port with chains never falls back to the port-less chains: TLS without a matching ALPN
        # on 9080 finds nothing under 9080 and gets the default (none here).
        (Conn(dest_port=9080, transport="tls", alpn=("h2",)), None),
        (Conn(dest_port=15006), "blackhole-15006"),
        (Conn(dest_port=1234, transport="tls"), "passthrough-tls"),
        (Conn(dest_port=1234), "passthrough-plain"),
        (Conn(dest_port=1234, transport="quic"), None),
    ],
)
def test_istio_inbound_shape(conn: Conn, expected: str | None) -> None:
    assert pick(names(ISTIO_INBOUND), conn) == expected


def test_no_match_takes_the_default_chain_even_under_a_specific_port() -> None:
    default = fc("default")
    t = names([fc("80-tls", destination_port=80, transport_protocol="tls"), fc("any")], default)
    assert pick(t, Conn(dest_port=80, transport="tls")) == "80-tls"
    assert pick(t, Conn(dest_port=80)) == "default"  # not "any": no backtracking to port 0
    assert pick(t, Conn(dest_port=81)) == "any"


@pytest.mark.parametrize(
    ("dest", "expected"),
    [
        ("10.1.2.3", "host"),
        ("10.1.2.4", "sixteen"),
        ("10.2.0.0", "eight"),
        ("11.0.0.1", "empty"),
        ("fd00::1", "v6"),
        ("fe80::1", "empty"),
        ("not-an-ip", "empty"),  # a pipe: Envoy's fake 255.255.255.255 only matches catch-alls
    ],
)
def test_destination_longest_prefix(dest: str, expected: str) -> None:
    t = names(
        [
            fc("eight", prefix_ranges=("10.0.0.0/8",)),
            fc("sixteen", prefix_ranges=("10.1.0.0/16",)),
            fc("host", prefix_ranges=("10.1.2.3/32",)),
            fc("v6", prefix_ranges=("fd00::/8",)),
            fc("empty"),
        ]
    )
    assert pick(t, Conn(dest_ip=dest)) == expected


def test_explicit_catch_all_range_wins_over_no_ranges() -> None:
    # Observed on envoy 1.40, in either order: prefix_ranges 0.0.0.0/0 beats no prefix_ranges.
    for order in (1, -1):
        t = names([fc("explicit", prefix_ranges=("0.0.0.0/0",)), fc("none")][::order])
        assert pick(t, Conn(dest_ip="1.2.3.4")) == "explicit"
        assert pick(t, Conn(dest_ip="::1")) == "none"


@pytest.mark.parametrize(
    ("sni", "expected"),
    [
        ("www.example.com", "exact"),
        ("a.b.example.com", "b-wildcard"),
        ("x.b.example.com", "b-wildcard"),
        ("b.example.com", "wildcard"),  # "*.b.example.com" does not match b.example.com itself
        ("example.com", "com"),
        ("foo.org", "catch-all"),
        ("", "catch-all"),
        ("x.com", "com"),
    ],
)
def test_server_names(sni: str, expected: str) -> None:
    t = names(
        [
            fc("exact", server_names=("www.example.com",)),
            fc("wildcard", server_names=("*.example.com",)),
            fc("b-wildcard", server_names=("*.b.example.com",)),
            fc("com", server_names=("*.com",), transport_protocol="tls"),
            fc("catch-all"),
        ]
    )
    assert pick(t, Conn(sni=sni, transport="tls")) == expected


def test_server_name_branch_is_final() -> None:
    # www.example.com picks the exact branch; its chain wants TLS, so a plaintext connection with that
    # SNI matches nothing (it does not go back to the catch-all name).
    t = names([fc("exact-tls", server_names=("www.example.com",), transport_protocol="tls"), fc("any")])
    assert pick(t, Conn(sni="www.example.com", transport="raw_buffer")) is None
    assert pick(t, Conn(sni="other", transport="raw_buffer")) == "any"


def test_application_protocols_in_the_connection_order() -> None:
    t = names([fc("h2", application_protocols=("h2",)), fc("h11", application_protocols=("http/1.1",)), fc("none")])
    assert pick(t, Conn(alpn=("http/1.1", "h2"))) == "h11"
    assert pick(t, Conn(alpn=("h2", "http/1.1"))) == "h2"
    assert pick(t, Conn(alpn=("spdy",))) == "none"
    assert pick(t, Conn()) == "none"


@pytest.mark.parametrize(
    ("src", "local", "expected"),
    [
        ("127.0.0.2", True, "local"),
        ("10.9.9.9", False, "external-10"),
        ("192.168.0.1", False, "external"),
    ],
)
def test_source_type_then_source_prefix(src: str, local: bool, expected: str) -> None:
    t = names(
        [
            fc("local", source_type=LOCAL),
            fc("external-10", source_type=EXTERNAL, source_prefix_ranges=("10.0.0.0/8",)),
            fc("external", source_type=EXTERNAL),
            fc("any"),
        ]
    )
    assert pick(t, Conn(src_ip=src, local=local)) == expected


def test_local_without_local_chains_uses_any() -> None:
    t = names([fc("external", source_type=EXTERNAL), fc("any")])
    assert pick(t, Conn(local=True)) == "any"
    # EXTERNAL chains exist but none matches this source: no fallback to ANY.
    t = names([fc("external-10", source_type=EXTERNAL, source_prefix_ranges=("10.0.0.0/8",)), fc("any")])
    assert pick(t, Conn(src_ip="192.168.0.1")) is None


def test_source_ports_and_direct_source() -> None:
    t = names(
        [
            fc("port", source_ports=(1111, 2222)),
            fc("other-ports"),
            fc("direct", direct_source_prefix_ranges=("172.16.0.0/12",)),
        ]
    )
    assert pick(t, Conn(src_port=2222)) == "port"
    assert pick(t, Conn(src_port=3333)) == "other-ports"
    assert pick(t, Conn(src_ip="172.16.5.5", src_port=1111)) == "direct"


# -- overlaps -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "chains",
    [
        [fc("a", server_names=("a.com", "b.com")), fc("b", server_names=("b.com",))],
        [fc("a", source_ports=(5, 5))],
        [fc("a", prefix_ranges=("10.0.0.0/8", "10.0.0.0/8"))],
        [fc("a"), fc("b", transport_protocol="")],
    ],
)
def test_overlapping_chains_are_refused(chains: list[FilterChain]) -> None:
    with pytest.raises(OverlappingMatch) as e:
        names(chains)
    assert e.value.reason == (
        "error adding listener '0.0.0.0:15001': multiple filter chains with overlapping matching rules are defined"
    )
    assert e.value.index == len(chains) - 1


def test_lpm_returns_only_the_longest_match() -> None:
    lpm = Lpm([("10.0.0.0/8", "a"), ("10.1.0.0/16", "b"), ("", "c")])
    assert lpm.get((False, int(ipaddress.IPv4Address("10.1.0.1")))) == "b"
    assert lpm.get((False, int(ipaddress.IPv4Address("10.2.0.1")))) == "a"
    assert lpm.get((True, 1)) == "c"


# -- a brute-force reference ----------------------------------------------------------------------------
def _best(ranges: tuple[str, ...], ip: str) -> tuple[int, bool] | None:
    """The (prefix length, explicit) of a chain's most specific range containing `ip`."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        addr = ipaddress.ip_address("255.255.255.255")
    if not ranges:
        return (0, False)
    found = [ipaddress.ip_network(r).prefixlen for r in ranges if addr in ipaddress.ip_network(r)]
    return (max(found), True) if found else None


def _longest(cands: list[FilterChain], ip: str, field: str) -> list[FilterChain]:
    scored = [(s, c) for c in cands if (s := _best(getattr(c.match, field), ip)) is not None]
    if not scored:
        return []
    top = max(s for s, _ in scored)
    return [c for s, c in scored if s == top]


def reference(chains: list[FilterChain], default: FilterChain | None, c: Conn) -> FilterChain | None:
    """Filter the candidates criterion by criterion, keeping the most specific group each time."""
    cands = [x for x in chains if x.match.destination_port == c.dest_port] or [
        x for x in chains if x.match.destination_port == 0
    ]
    cands = _longest(cands, c.dest_ip, "prefix_ranges")
    exact = [x for x in cands if c.sni and c.sni in x.match.server_names]
    if not exact and c.sni:
        parts = c.sni.split(".")
        for i in range(1, len(parts)):
            suffix = "." + ".".join(parts[i:])
            if suffix == "." or not parts[i]:
                continue
            exact = [x for x in cands if "*" + suffix in x.match.server_names]
            if exact:
                break
    cands = exact or [x for x in cands if not x.match.server_names]
    cands = [x for x in cands if x.match.transport_protocol == c.transport] or [
        x for x in cands if not x.match.transport_protocol
    ]
    by_alpn: list[FilterChain] = []
    for p in c.alpn:
        by_alpn = [x for x in cands if p in x.match.application_protocols]
        if by_alpn:
            break
    cands = by_alpn or [x for x in cands if not x.match.application_protocols]
    cands = _longest(cands, c.src_ip, "direct_source_prefix_ranges")
    wanted = LOCAL if c.local else EXTERNAL
    cands = [x for x in cands if x.match.source_type is wanted] or [x for x in cands if x.match.source_type is ANY]
    cands = _longest(cands, c.src_ip, "source_prefix_ranges")
    cands = [x for x in cands if c.src_port in x.match.source_ports] or [x for x in cands if not x.match.source_ports]
    assert len(cands) <= 1, cands
    return cands[0] if cands else default


PORTS = st.sampled_from([0, 80, 443])
CIDRS = st.lists(
    st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "0.0.0.0/0", "fd00::/8", "::/0"]),
    max_size=2,
    unique=True,
)
SNIS = st.lists(st.sampled_from(["a.example.com", "*.example.com", "*.com", "b.example.com"]), max_size=2, unique=True)
MATCHES = st.builds(
    FilterChainMatch,
    destination_port=PORTS,
    prefix_ranges=CIDRS.map(tuple),
    server_names=SNIS.map(tuple),
    transport_protocol=st.sampled_from(["", "tls", "raw_buffer"]),
    application_protocols=st.lists(st.sampled_from(["h2", "http/1.1"]), max_size=2, unique=True).map(tuple),
    direct_source_prefix_ranges=st.sampled_from([(), ("192.168.0.0/16",)]),
    source_type=st.sampled_from([ANY, LOCAL, EXTERNAL]),
    source_prefix_ranges=CIDRS.map(tuple),
    source_ports=st.sampled_from([(), (1000,), (1000, 2000)]),
)
CONNS = st.builds(
    Conn,
    dest_ip=st.sampled_from(["10.1.2.3", "10.1.9.9", "10.9.9.9", "8.8.8.8", "fd00::1", "2001:db8::1"]),
    dest_port=st.sampled_from([80, 443, 8080]),
    sni=st.sampled_from(["", "a.example.com", "c.example.com", "x.com", "example.org"]),
    transport=st.sampled_from(["tls", "raw_buffer"]),
    alpn=st.lists(st.sampled_from(["h2", "http/1.1", "istio"]), max_size=3, unique=True).map(tuple),
    src_ip=st.sampled_from(["10.1.2.3", "192.168.1.1", "127.0.0.1", "fd00::9"]),
    src_port=st.sampled_from([1000, 2000, 3000]),
    local=st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(MATCHES, min_size=1, max_size=6), st.booleans(), st.lists(CONNS, min_size=1, max_size=8))
def test_select_agrees_with_the_reference(matches: list[FilterChainMatch], with_default: bool, conns: list[Conn]) -> None:
    chains = [FilterChain(name=f"c{i}", filters=(), match=m) for i, m in enumerate(matches)]
    default = FilterChain(name="default", filters=()) if with_default else None
    try:
        table = names(chains, default)
    except OverlappingMatch:
        assume(False)
        return
    for c in conns:
        assert table.select(
            c.dest_ip, c.dest_port, c.sni, c.transport, c.alpn, c.src_ip, c.src_port, c.local
        ) is reference(chains, default, c)

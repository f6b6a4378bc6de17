"""Istio's native nftables mode: the ruleset for an InitConfig as an `nft -f` script (pure; no I/O).

Owns: the rules istio builds in tools/istio-nftables/pkg/capture/run.go (three `inet` tables,
istio-proxy-nat / istio-proxy-mangle / istio-proxy-raw, their base and regular chains, rule text and
order), and the script layout of knftables' Transaction.String() that istio's golden files record:
per table `add table`, `flush table`, `add chain` for each chain that has rules (in istio's fixed
order), then `add rule` / `insert rule ... index N` (an insert into a chain with too few rules
becomes an append, as istio's addIstioTableRules does).
`render(cfg, replace=True)` swaps `flush table` for `delete table` + `add table`: a re-run then leaves
exactly the new ruleset (no stale chains), in one atomic `nft -f` transaction.
Must not know how the script is run (apply.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from init.config import (
    InitConfig,
    NetworkRange,
    effective_redirect_dns,
    parse_intercept_filter,
    separate_v4_v6,
    split,
)
from init.rules import DNS_AGENT_PORT, OUTBOUND_MARK

NAT, MANGLE, RAW = "istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"
TABLES = (NAT, MANGLE, RAW)
# (chain, base-chain spec or "") in istio's declaration order, per table (addIstio*TableRules).
CHAINS: dict[str, tuple[tuple[str, str], ...]] = {
    NAT: (
        ("prerouting", "{ type nat hook prerouting priority -100 ; }"),
        ("output", "{ type nat hook output priority -100 ; }"),
        ("istio-inbound", ""), ("istio-redirect", ""), ("istio-in-redirect", ""), ("istio-output", ""),
        ("istio-output-dns", ""),
    ),
    MANGLE: (
        ("prerouting", "{ type filter hook prerouting priority -150 ; }"),
        ("output", "{ type route hook output priority -150 ; }"),
        ("istio-divert", ""), ("istio-tproxy", ""), ("istio-inbound", ""), ("istio-drop", ""),
    ),
    RAW: (
        ("prerouting", "{ type filter hook prerouting priority -300 ; }"),
        ("output", "{ type filter hook output priority -300 ; }"),
        ("istio-inbound", ""), ("istio-output-dns", ""),
    ),
}
C = "counter"


@dataclass(frozen=True, slots=True)
class NftRule:
    table: str
    chain: str
    rule: str
    index: int | None = None  # 0-based insert position, None to append


class _Builder:
    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.rules: list[NftRule] = []

    def add(self, chain: str, table: str, *words: str) -> None:
        self.rules.append(NftRule(table, chain, " ".join(words)))

    def add6(self, chain: str, table: str, *words: str) -> None:  # AppendV6RuleIfSupported
        if self.ipv6:
            self.add(chain, table, *words)

    def insert(self, chain: str, table: str, index: int, *words: str) -> None:
        self.rules.append(NftRule(table, chain, " ".join(words), index))

    def insert6(self, chain: str, table: str, index: int, *words: str) -> None:
        if self.ipv6:
            self.insert(chain, table, index, *words)


def build(cfg: InitConfig) -> list[NftRule]:
    """istio-nftables capture Run: the rules, in order, for all three tables. Raises ConfigError."""
    ex4, ex6 = separate_v4_v6(cfg.outbound_ip_ranges_exclude)
    in4, in6 = separate_v4_v6(cfg.outbound_ip_ranges_include)
    dns = effective_redirect_dns(cfg)
    loop, tun = cfg.host_ipv4_loopback_cidr, cfg.inbound_tunnel_port
    b = _Builder(cfg.enable_ipv6)
    for nic in split(cfg.exclude_interfaces):
        b.add("prerouting", NAT, "iifname", nic, C, "return")
        b.add("output", NAT, "oifname", nic, C, "return")
    if cfg.tproxy:
        for nic in split(cfg.exclude_interfaces):
            b.add("prerouting", MANGLE, "iifname", nic, C, "return")
            b.add("output", MANGLE, "oifname", nic, C, "return")
    for nic in split(cfg.reroute_virtual_interfaces):
        b.insert("prerouting", NAT, 0, "iifname", nic, C, "return")
    if cfg.drop_invalid:
        b.add("prerouting", MANGLE, "meta l4proto tcp", "ct state", "invalid", C, "jump", "istio-drop")
        b.add("istio-drop", MANGLE, C, "drop")
    b.add("istio-inbound", NAT, "meta l4proto tcp", "tcp dport", tun, C, "return")
    b.add("istio-redirect", NAT, "meta l4proto tcp", C, "redirect to", ":" + cfg.proxy_port)
    b.add("istio-in-redirect", NAT, "meta l4proto tcp", C, "redirect to", ":" + cfg.inbound_capture_port)
    _inbound(b, cfg)
    b.add("output", NAT, C, "jump", "istio-output")
    for port in split(cfg.outbound_ports_exclude):
        b.add("istio-output", NAT, "tcp dport", port, C, "return")
        b.add("istio-output", NAT, "udp dport", port, C, "return")
    b.add("istio-output", NAT, "oifname", "lo", "ip saddr", "127.0.0.6/32", C, "return")
    b.add6("istio-output", NAT, "oifname", "lo", "ip6 saddr", "::6/128", C, "return")
    no_loopback_include = not in4.has_loopback and not in6.has_loopback
    for key, ids in (("skuid", cfg.proxy_uid), ("skgid", cfg.proxy_gid)):
        for owner in split(ids):
            # Only the uid rule skips DNS (istio's gid rule never has the 53 exception).
            ports = "{ 53, " + tun + " }" if dns and key == "skuid" else tun
            b.add("istio-output", NAT, "oifname", "lo", "meta l4proto tcp", "ip daddr", "!=", loop,
                  "tcp dport", "!=", ports, key, owner, C, "jump", "istio-in-redirect")
            b.add6("istio-output", NAT, "oifname", "lo", "meta l4proto tcp", "ip6 daddr", "!=", "::1/128",
                   "tcp dport", "!=", ports, key, owner, C, "jump", "istio-in-redirect")
            if no_loopback_include:
                if dns:
                    b.add("istio-output", NAT, "oifname", "lo", "meta l4proto tcp", "tcp dport", "!=", "53",
                          key, "!=", owner, C, "return")
                else:
                    b.add("istio-output", NAT, "oifname", "lo", key, "!=", owner, C, "return")
            b.add("istio-output", NAT, key, owner, C, "return")
    groups = parse_intercept_filter(cfg.owner_groups_include, cfg.owner_groups_exclude)
    if groups.except_:
        for group in groups.values:
            b.add("istio-output", NAT, "skgid", group, C, "return")
    else:
        b.add("istio-output", NAT, *[w for g in groups.values for w in ("skgid", "!=", g)], C, "return")
    if dns:
        _dns(b, cfg)
    b.add("istio-output", NAT, "ip daddr", loop, C, "return")
    b.add6("istio-output", NAT, "ip6 daddr", "::1/128", C, "return")
    for cidr in ex4.cidrs:
        b.add("istio-output", NAT, "ip daddr", cidr, C, "return")
    for cidr in ex6.cidrs:
        b.add6("istio-output", NAT, "ip6 daddr", cidr, C, "return")
    for port in split(cfg.outbound_ports_include):
        b.add("istio-output", NAT, "tcp dport", port, C, "jump", "istio-redirect")
    _outbound_include(b, cfg, in4, in6)
    if cfg.tproxy:
        _tproxy_marks(b, cfg)
    return b.rules


def _inbound(b: _Builder, cfg: InitConfig) -> None:
    include = cfg.inbound_ports_include
    if not include:
        return
    if not cfg.tproxy:
        b.add("prerouting", NAT, "meta l4proto tcp", C, "jump", "istio-inbound")
        if include == "*":
            for port in split(cfg.inbound_ports_exclude):
                b.add("istio-inbound", NAT, "meta l4proto tcp", "tcp dport", port, C, "return")
            b.add("istio-inbound", NAT, "meta l4proto tcp", C, "jump", "istio-in-redirect")
        else:
            for port in split(include):
                b.add("istio-inbound", NAT, "meta l4proto tcp", "tcp dport", port, C, "jump", "istio-in-redirect")
        return
    mark, port_to = cfg.inbound_tproxy_mark, ":" + cfg.inbound_capture_port
    b.add("istio-divert", MANGLE, C, "meta mark set", mark)
    b.add("istio-divert", MANGLE, C, "accept")
    b.add("istio-tproxy", MANGLE, "meta l4proto tcp", "ip daddr", "!=", cfg.host_ipv4_loopback_cidr,
          "tproxy ip to", port_to, "meta mark set", mark, C, "accept")
    b.add6("istio-tproxy", MANGLE, "meta l4proto tcp", "ip6 daddr", "!=", "::1/128",
           "tproxy ip6 to", port_to, "meta mark set", mark, C, "accept")
    b.add("prerouting", MANGLE, "meta l4proto tcp", C, "jump", "istio-inbound")
    if include == "*":
        for port in split(cfg.inbound_ports_exclude):
            b.add("istio-inbound", MANGLE, "meta l4proto tcp", "tcp dport", port, C, "return")
        b.add("istio-inbound", MANGLE, "meta l4proto tcp", "ct state", "related,established", C,
              "jump", "istio-divert")
        b.add("istio-inbound", MANGLE, "meta l4proto tcp", C, "jump", "istio-tproxy")
        return
    for port in split(include):
        b.add("istio-inbound", MANGLE, "meta l4proto tcp", "ct state", "related,established", "tcp dport", port,
              C, "jump", "istio-divert")
        b.add("istio-inbound", MANGLE, "meta l4proto tcp", "tcp dport", port, C, "jump", "istio-tproxy")


def _outbound_include(b: _Builder, cfg: InitConfig, in4: NetworkRange, in6: NetworkRange) -> None:
    nics = split(cfg.reroute_virtual_interfaces)
    if in4.is_wildcard or in6.is_wildcard:  # one inet rule covers both families
        b.add("istio-output", NAT, C, "jump", "istio-redirect")
        for nic in nics:
            b.insert("prerouting", NAT, 0, "iifname", nic, C, "jump", "istio-redirect")
        return
    for cidr in in4.cidrs:
        for nic in nics:
            b.insert("prerouting", NAT, 0, "iifname", nic, "ip daddr", cidr, C, "jump", "istio-redirect")
        b.add("istio-output", NAT, "ip daddr", cidr, C, "jump", "istio-redirect")
    for cidr in in6.cidrs:
        for nic in nics:
            b.insert6("prerouting", NAT, 0, "iifname", nic, "ip6 daddr", cidr, C, "jump", "istio-redirect")
        b.add6("istio-output", NAT, "ip6 daddr", cidr, C, "jump", "istio-redirect")


def _dns(b: _Builder, cfg: InitConfig) -> None:
    all_dns, s4, s6 = cfg.capture_all_dns, cfg.dns_servers_v4, cfg.dns_servers_v6
    to = ":" + DNS_AGENT_PORT
    b.add("output", RAW, C, "jump", "istio-output-dns")
    if all_dns or s4 or s6:
        b.add("istio-output", NAT, C, "jump", "istio-output-dns")
    for proto in ("tcp", "udp"):
        if all_dns:
            b.add("istio-output-dns", NAT, *(("meta l4proto tcp",) if proto == "tcp" else ()), f"{proto} dport", "53",
                  C, "redirect", "to", to)
            continue
        for s in s4:
            b.add("istio-output-dns", NAT, "ip daddr", s + "/32", f"{proto} dport", "53", C, "redirect", "to", to)
        for s in s6:
            b.add6("istio-output-dns", NAT, "ip6 daddr", s + "/128", f"{proto} dport", "53", C, "redirect", "to", to)
    for key, ids in (("skuid", cfg.proxy_uid), ("skgid", cfg.proxy_gid)):
        for owner in split(ids):
            b.add("istio-output-dns", RAW, "udp dport", "53", "meta", key, owner, C, "ct", "zone", "set", "1")
            b.add("istio-output-dns", RAW, "udp sport", DNS_AGENT_PORT, "meta", key, owner, C, "ct", "zone", "set", "2")
    if all_dns:
        b.add("prerouting", RAW, C, "jump", "istio-inbound")
        b.add("istio-output-dns", RAW, "udp dport", "53", C, "ct", "zone", "set", "2")
        b.add("istio-inbound", RAW, "udp sport", "53", C, "ct", "zone", "set", "1")
        return
    if s4 or s6:
        b.add("prerouting", RAW, C, "jump", "istio-inbound")
    for s in s4:
        b.add("istio-output-dns", RAW, "udp dport", "53", "ip daddr", s + "/32", C, "ct", "zone", "set", "2")
        b.add("istio-inbound", RAW, "udp sport", "53", "ip saddr", s + "/32", C, "ct", "zone", "set", "1")
    for s in s6:
        b.add6("istio-output-dns", RAW, "udp dport", "53", "ip6 daddr", s + "/128", C, "ct", "zone", "set", "2")
        b.add6("istio-inbound", RAW, "udp sport", "53", "ip6 saddr", s + "/128", C, "ct", "zone", "set", "1")


def _tproxy_marks(b: _Builder, cfg: InitConfig) -> None:
    mark, loop = cfg.inbound_tproxy_mark, cfg.host_ipv4_loopback_cidr
    b.add("prerouting", MANGLE, "meta l4proto tcp", "mark", mark, C, "ct mark set mark")
    b.add("output", MANGLE, "oifname", "lo", "meta l4proto tcp", "mark", mark, C, "return")
    for key, ids in (("skuid", cfg.proxy_uid), ("skgid", cfg.proxy_gid)):
        for owner in split(ids):
            b.add("output", MANGLE, "oifname", "lo", "meta l4proto tcp", "ip daddr", "!=", loop, key, owner, C,
                  "meta mark set", OUTBOUND_MARK)
            b.add6("output", MANGLE, "oifname", "lo", "meta l4proto tcp", "ip6 daddr", "!=", "::1/128", key, owner,
                   C, "meta mark set", OUTBOUND_MARK)
    b.add("output", MANGLE, "meta l4proto tcp", "ct", "mark", mark, C, "meta mark set", "ct", "mark")
    b.insert("istio-inbound", MANGLE, 0, "meta l4proto tcp", "mark", mark, C, "return")
    b.insert("istio-inbound", MANGLE, 1, "iifname", "lo", "meta l4proto tcp", "ip saddr", "127.0.0.6/32", C, "return")
    b.insert6("istio-inbound", MANGLE, 1, "iifname", "lo", "meta l4proto tcp", "ip6 saddr", "::6/128", C, "return")
    b.insert("istio-inbound", MANGLE, 2, "iifname", "lo", "meta l4proto tcp", "mark", "!=", OUTBOUND_MARK, C,
             "return")


def render(cfg: InitConfig, *, replace: bool = False) -> str:
    """The `nft -f` script. Cleanup mode gives `cleanup_script()`. replace=False is istio's exact text."""
    if cfg.cleanup_only:
        return cleanup_script()
    return render_rules(build(cfg), replace=replace)


def render_rules(rules: list[NftRule], *, replace: bool = False) -> str:
    out: list[str] = []
    for table in TABLES:
        mine = [r for r in rules if r.table == table]
        if not mine:
            continue  # istio creates no table whose chains would all be empty
        # Deviation from istio: a jump target is declared even when it has no rules.  istio only
        # declares chains with rules, so IPv4-only with only IPv6 DNS servers makes a jump to an
        # undeclared istio-output-dns and nft rejects the whole transaction.
        used = {r.chain for r in mine} | {r.rule.split()[-1] for r in mine if " jump " in f" {r.rule} "}
        chains = [(name, spec) for name, spec in CHAINS[table] if name in used]
        out.append(f"add table inet {table}")
        if replace:
            out += [f"delete table inet {table}", f"add table inet {table}"]
        else:
            out.append(f"flush table inet {table}")
        out += [f"add chain inet {table} {name}" + (f" {spec}" if spec else "") for name, spec in chains]
        count: dict[str, int] = {}
        for r in mine:
            n = count.get(r.chain, 0)
            if r.index is not None and n and r.index < n:
                out.append(f"insert rule inet {table} {r.chain} index {r.index} {r.rule}")
            else:
                out.append(f"add rule inet {table} {r.chain} {r.rule}")
            count[r.chain] = n + 1
    return "".join(line + "\n" for line in out)


def cleanup_script() -> str:
    """Delete istio's three tables; `add` first so that a missing table is not an error."""
    return "".join(f"add table inet {t}\ndelete table inet {t}\n" for t in TABLES)

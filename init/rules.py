"""iptables rules for an InitConfig, and their iptables-restore text (pure; no I/O).

Owns: the rule list istio-iptables builds (tools/istio-iptables/pkg/capture/run.go `Run`,
`handleInboundPortsInclude`, `SetupDNSRedir`, `addDNSConntrackZones`, ...) for IPv4 and IPv6, in
istio's order, and istio's restore layout (builder `buildRestore`): per table, sorted by name, a
`-N` for every non-built-in chain in order of first use (then for jump targets never used as a
chain), then the rules as `-A CHAIN ...` / `-I CHAIN N ...`.  The same flags give the same text as
istio (checked against istio's golden files).  Also a small parser of that text (for tests and for
apply.py).  Must not know how the text is applied (apply.py) or what is installed (iptables_state.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from init.config import (
    InitConfig,
    NetworkRange,
    effective_redirect_dns,
    parse_intercept_filter,
    separate_v4_v6,
    split,
)

# constants.BuiltInChainsAndTargetsMap: never declared with -N.
BUILTIN = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING", "ACCEPT", "RETURN", "DROP"})
# Every chain istio-iptables can create (constants.go); cleanup removes these and nothing else.
ISTIO_CHAINS = frozenset(
    {"ISTIO_OUTPUT", "ISTIO_OUTPUT_DNS", "ISTIO_INBOUND", "ISTIO_DIVERT", "ISTIO_TPROXY", "ISTIO_REDIRECT",
     "ISTIO_IN_REDIRECT", "ISTIO_DROP"}
)
OUTBOUND_MARK = "1338"  # constants.OutboundMark: envoy outbound -> app by pod IP, in TPROXY mode
DNS_AGENT_PORT = "15053"  # constants.IstioAgentDNSListenerPort
_V = "PLACEHOLDER_IP_VERSION_SPECIFIC"  # constants.IPVersionSpecific


@dataclass(frozen=True, slots=True)
class Rule:
    table: str
    chain: str
    spec: tuple[str, ...]  # matches and target, e.g. ("-p", "tcp", "-j", "RETURN")
    position: int | None = None  # None: append (-A); else insert at this 1-based position (-I)

    @property
    def params(self) -> tuple[str, ...]:
        head = ("-A", self.chain) if self.position is None else ("-I", self.chain, str(self.position))
        return head + self.spec

    @property
    def jump(self) -> str | None:
        """The target when it is the rule's last word (`-j X` at the end), as istio's buildRestore reads it."""
        return self.spec[-1] if len(self.spec) >= 2 and self.spec[-2] == "-j" else None


@dataclass(frozen=True, slots=True)
class RuleSet:
    v4: tuple[Rule, ...]
    v6: tuple[Rule, ...]  # empty unless IPv6 is enabled


class _Builder:
    """istio's IptablesRuleBuilder: v6 variants are dropped unless IPv6 is enabled."""

    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.v4: list[Rule] = []
        self.v6: list[Rule] = []

    def append(self, chain: str, table: str, *spec: str) -> None:
        self.append_v4(chain, table, *spec)
        self.append_v6(chain, table, *spec)

    def append_v4(self, chain: str, table: str, *spec: str) -> None:
        self.v4.append(Rule(table, chain, spec))

    def append_v6(self, chain: str, table: str, *spec: str) -> None:
        if self.ipv6:
            self.v6.append(Rule(table, chain, spec))

    def insert(self, chain: str, table: str, position: int, *spec: str) -> None:
        self.insert_v4(chain, table, position, *spec)
        self.insert_v6(chain, table, position, *spec)

    def insert_v4(self, chain: str, table: str, position: int, *spec: str) -> None:
        self.v4.append(Rule(table, chain, spec, position))

    def insert_v6(self, chain: str, table: str, position: int, *spec: str) -> None:
        if self.ipv6:
            self.v6.append(Rule(table, chain, spec, position))

    def versioned(self, v4: str, v6: str, chain: str, table: str, *spec: str) -> None:
        """AppendVersionedRule: the placeholder becomes the family's own address."""
        self.append_v4(chain, table, *(v4 if s == _V else s for s in spec))
        self.append_v6(chain, table, *(v6 if s == _V else s for s in spec))


def build(cfg: InitConfig) -> RuleSet:
    """The rules istio-iptables installs for `cfg` (capture/run.go Run). Raises ConfigError."""
    b = _Builder(cfg.enable_ipv6)
    ex4, ex6 = separate_v4_v6(cfg.outbound_ip_ranges_exclude)
    in4, in6 = separate_v4_v6(cfg.outbound_ip_ranges_include)
    dns = effective_redirect_dns(cfg)
    loop = cfg.host_ipv4_loopback_cidr
    for nic in split(cfg.exclude_interfaces):  # shortCircuitExcludeInterfaces
        b.append("PREROUTING", "nat", "-i", nic, "-j", "RETURN")
        b.append("OUTPUT", "nat", "-o", nic, "-j", "RETURN")
    if cfg.tproxy:
        for nic in split(cfg.exclude_interfaces):
            b.append("PREROUTING", "mangle", "-i", nic, "-j", "RETURN")
            b.append("OUTPUT", "mangle", "-o", nic, "-j", "RETURN")
    for nic in split(cfg.reroute_virtual_interfaces):  # shortCircuitKubeInternalInterface
        b.insert("PREROUTING", "nat", 1, "-i", nic, "-j", "RETURN")
    if cfg.drop_invalid:
        b.append("PREROUTING", "mangle", "-m", "conntrack", "--ctstate", "INVALID", "-j", "ISTIO_DROP")
        b.append("ISTIO_DROP", "mangle", "-j", "DROP")
    # The tunnel port (15008, HBONE) is never captured inbound.
    b.append("ISTIO_INBOUND", "nat", "-p", "tcp", "--dport", cfg.inbound_tunnel_port, "-j", "RETURN")
    b.append("ISTIO_REDIRECT", "nat", "-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg.proxy_port)
    b.append("ISTIO_IN_REDIRECT", "nat", "-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg.inbound_capture_port)
    _inbound(b, cfg)
    b.append("OUTPUT", "nat", "-j", "ISTIO_OUTPUT")
    for port in split(cfg.outbound_ports_exclude):  # before connections back to self are redirected
        b.append("ISTIO_OUTPUT", "nat", "-p", "tcp", "--dport", port, "-j", "RETURN")
        b.append("ISTIO_OUTPUT", "nat", "-p", "udp", "--dport", port, "-j", "RETURN")
    # 127.0.0.6 / ::6: the inbound passthrough cluster binds its upstream connections there.
    b.versioned("127.0.0.6/32", "::6/128", "ISTIO_OUTPUT", "nat", "-o", "lo", "-s", _V, "-j", "RETURN")
    no_loopback_include = not in4.has_loopback and not in6.has_loopback
    for uid in split(cfg.proxy_uid):
        # app -> VIP -> envoy outbound -> envoy inbound (over lo) -> app: send the proxy's lo traffic inbound.
        if dns:
            b.versioned(loop, "::1/128", "ISTIO_OUTPUT", "nat", "-o", "lo", "!", "-d", _V, "-p", "tcp",
                        "-m", "multiport", "!", "--dports", "53," + cfg.inbound_tunnel_port,
                        "-m", "owner", "--uid-owner", uid, "-j", "ISTIO_IN_REDIRECT")
        else:
            b.versioned(loop, "::1/128", "ISTIO_OUTPUT", "nat", "-o", "lo", "!", "-d", _V, "-p", "tcp",
                        "!", "--dport", cfg.inbound_tunnel_port,
                        "-m", "owner", "--uid-owner", uid, "-j", "ISTIO_IN_REDIRECT")
        if no_loopback_include:  # app -> app over lo is left alone, unless loopback was asked for
            if dns:
                b.append("ISTIO_OUTPUT", "nat", "-o", "lo", "-p", "tcp", "!", "--dport", "53",
                         "-m", "owner", "!", "--uid-owner", uid, "-j", "RETURN")
            else:
                b.append("ISTIO_OUTPUT", "nat", "-o", "lo", "-m", "owner", "!", "--uid-owner", uid, "-j", "RETURN")
        # The proxy's own traffic, any protocol, any destination, is never captured (no loops).
        b.append("ISTIO_OUTPUT", "nat", "-m", "owner", "--uid-owner", uid, "-j", "RETURN")
    for gid in split(cfg.proxy_gid):
        b.versioned(loop, "::1/128", "ISTIO_OUTPUT", "nat", "-o", "lo", "!", "-d", _V, "-p", "tcp",
                    "!", "--dport", cfg.inbound_tunnel_port,
                    "-m", "owner", "--gid-owner", gid, "-j", "ISTIO_IN_REDIRECT")
        if no_loopback_include:
            if dns:
                b.append("ISTIO_OUTPUT", "nat", "-o", "lo", "-p", "tcp", "!", "--dport", "53",
                         "-m", "owner", "!", "--gid-owner", gid, "-j", "RETURN")
            else:
                b.append("ISTIO_OUTPUT", "nat", "-o", "lo", "-m", "owner", "!", "--gid-owner", gid, "-j", "RETURN")
        b.append("ISTIO_OUTPUT", "nat", "-m", "owner", "--gid-owner", gid, "-j", "RETURN")
    groups = parse_intercept_filter(cfg.owner_groups_include, cfg.owner_groups_exclude)
    if groups.except_:  # handleCaptureByOwnerGroup
        for group in groups.values:
            b.append("ISTIO_OUTPUT", "nat", "-m", "owner", "--gid-owner", group, "-j", "RETURN")
    else:
        none_of = [w for g in groups.values for w in ("-m", "owner", "!", "--gid-owner", g)]
        b.append("ISTIO_OUTPUT", "nat", *none_of, "-j", "RETURN")
    if dns:
        _dns(b, cfg)
    # Envoy-aware apps and container-to-container traffic use localhost: never captured.
    b.versioned(loop, "::1/128", "ISTIO_OUTPUT", "nat", "-d", _V, "-j", "RETURN")
    for cidr in ex4.cidrs:  # exclusions before inclusions
        b.append_v4("ISTIO_OUTPUT", "nat", "-d", cidr, "-j", "RETURN")
    for cidr in ex6.cidrs:
        b.append_v6("ISTIO_OUTPUT", "nat", "-d", cidr, "-j", "RETURN")
    for port in split(cfg.outbound_ports_include):
        b.append("ISTIO_OUTPUT", "nat", "-p", "tcp", "--dport", port, "-j", "ISTIO_REDIRECT")
    _outbound_include(b, cfg, in4, b.append_v4, b.insert_v4)
    _outbound_include(b, cfg, in6, b.append_v6, b.insert_v6)
    if cfg.tproxy:
        _tproxy_marks(b, cfg)
    return RuleSet(tuple(b.v4), tuple(b.v6))


def _inbound(b: _Builder, cfg: InitConfig) -> None:
    """handleInboundPortsInclude: nothing when no inbound ports are listed."""
    if not cfg.inbound_ports_include:
        return
    table = "nat"
    if cfg.tproxy:
        table = "mangle"
        # Marked packets are routed to lo (ip rule fwmark), where TPROXY hands them to envoy.
        b.append("ISTIO_DIVERT", "mangle", "-j", "MARK", "--set-mark", cfg.inbound_tproxy_mark)
        b.append("ISTIO_DIVERT", "mangle", "-j", "ACCEPT")
        b.versioned(cfg.host_ipv4_loopback_cidr, "::1/128", "ISTIO_TPROXY", "mangle", "!", "-d", _V, "-p", "tcp",
                    "-j", "TPROXY", "--tproxy-mark", cfg.inbound_tproxy_mark + "/0xffffffff",
                    "--on-port", cfg.inbound_capture_port)
    b.append("PREROUTING", table, "-p", "tcp", "-j", "ISTIO_INBOUND")
    if cfg.inbound_ports_include == "*":
        for port in split(cfg.inbound_ports_exclude):
            b.append("ISTIO_INBOUND", table, "-p", "tcp", "--dport", port, "-j", "RETURN")
        if cfg.tproxy:
            b.append("ISTIO_INBOUND", "mangle", "-p", "tcp", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                     "-j", "ISTIO_DIVERT")
            b.append("ISTIO_INBOUND", "mangle", "-p", "tcp", "-j", "ISTIO_TPROXY")
        else:
            b.append("ISTIO_INBOUND", "nat", "-p", "tcp", "-j", "ISTIO_IN_REDIRECT")
        return
    for port in split(cfg.inbound_ports_include):
        if cfg.tproxy:
            b.append("ISTIO_INBOUND", "mangle", "-p", "tcp", "--dport", port, "-m", "conntrack", "--ctstate",
                     "RELATED,ESTABLISHED", "-j", "ISTIO_DIVERT")
            b.append("ISTIO_INBOUND", "mangle", "-p", "tcp", "--dport", port, "-j", "ISTIO_TPROXY")
        else:
            b.append("ISTIO_INBOUND", "nat", "-p", "tcp", "--dport", port, "-j", "ISTIO_IN_REDIRECT")


def _outbound_include(
    b: _Builder, cfg: InitConfig, rng: NetworkRange, append: Callable[..., None], insert: Callable[..., None]
) -> None:
    """handleOutboundIncludeRules, once per family."""
    nics = split(cfg.reroute_virtual_interfaces)
    if rng.is_wildcard:
        append("ISTIO_OUTPUT", "nat", "-j", "ISTIO_REDIRECT")
        for nic in nics:
            insert("PREROUTING", "nat", 1, "-i", nic, "-j", "ISTIO_REDIRECT")
        return
    for cidr in rng.cidrs:
        for nic in nics:
            insert("PREROUTING", "nat", 1, "-i", nic, "-d", cidr, "-j", "ISTIO_REDIRECT")
        append("ISTIO_OUTPUT", "nat", "-d", cidr, "-j", "ISTIO_REDIRECT")


def _dns(b: _Builder, cfg: InitConfig) -> None:
    """SetupDNSRedir + addDNSConntrackZones: DNS to the agent on 15053, UDP split into conntrack zones."""
    all_dns, s4, s6 = cfg.capture_all_dns, cfg.dns_servers_v4, cfg.dns_servers_v6
    b.append("OUTPUT", "raw", "-j", "ISTIO_OUTPUT_DNS")
    if all_dns or s4:
        b.append_v4("ISTIO_OUTPUT", "nat", "-j", "ISTIO_OUTPUT_DNS")
    if all_dns or s6:
        b.append_v6("ISTIO_OUTPUT", "nat", "-j", "ISTIO_OUTPUT_DNS")
    for proto, to in (("tcp", "--to-ports"), ("udp", "--to-port")):  # istio spells them differently
        if all_dns:
            b.append("ISTIO_OUTPUT_DNS", "nat", "-p", proto, "--dport", "53", "-j", "REDIRECT", to, DNS_AGENT_PORT)
            continue
        for s in s4:
            b.append_v4("ISTIO_OUTPUT_DNS", "nat", "-p", proto, "--dport", "53", "-d", s + "/32",
                        "-j", "REDIRECT", to, DNS_AGENT_PORT)
        for s in s6:
            b.append_v6("ISTIO_OUTPUT_DNS", "nat", "-p", proto, "--dport", "53", "-d", s + "/128",
                        "-j", "REDIRECT", to, DNS_AGENT_PORT)
    # Proxy -> upstream resolvers in zone 1, proxy -> app answers in zone 2.
    for flag, ids in (("--uid-owner", cfg.proxy_uid), ("--gid-owner", cfg.proxy_gid)):
        for owner in split(ids):
            b.append("ISTIO_OUTPUT_DNS", "raw", "-p", "udp", "--dport", "53", "-m", "owner", flag, owner,
                     "-j", "CT", "--zone", "1")
            b.append("ISTIO_OUTPUT_DNS", "raw", "-p", "udp", "--sport", DNS_AGENT_PORT, "-m", "owner", flag, owner,
                     "-j", "CT", "--zone", "2")
    if all_dns:
        b.append("PREROUTING", "raw", "-j", "ISTIO_INBOUND")
        b.append("ISTIO_OUTPUT_DNS", "raw", "-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2")
        b.append("ISTIO_INBOUND", "raw", "-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1")
        return
    if s4:
        b.append_v4("PREROUTING", "raw", "-j", "ISTIO_INBOUND")
    for s in s4:
        b.append_v4("ISTIO_OUTPUT_DNS", "raw", "-p", "udp", "--dport", "53", "-d", s + "/32", "-j", "CT", "--zone", "2")
        b.append_v4("ISTIO_INBOUND", "raw", "-p", "udp", "--sport", "53", "-s", s + "/32", "-j", "CT", "--zone", "1")
    if s6:
        b.append_v6("PREROUTING", "raw", "-j", "ISTIO_INBOUND")
    for s in s6:
        b.append_v6("ISTIO_OUTPUT_DNS", "raw", "-p", "udp", "--dport", "53", "-d", s + "/128",
                    "-j", "CT", "--zone", "2")
        b.append_v6("ISTIO_INBOUND", "raw", "-p", "udp", "--sport", "53", "-s", s + "/128",
                    "-j", "CT", "--zone", "1")


def _tproxy_marks(b: _Builder, cfg: InitConfig) -> None:
    """The TPROXY tail of Run: connection marks so envoy->app and app->app traffic is not re-captured."""
    mark, loop = cfg.inbound_tproxy_mark, cfg.host_ipv4_loopback_cidr
    b.append("PREROUTING", "mangle", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "CONNMARK", "--save-mark")
    b.append("OUTPUT", "mangle", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN")
    for flag, ids in (("--uid-owner", cfg.proxy_uid), ("--gid-owner", cfg.proxy_gid)):
        for owner in split(ids):
            b.versioned(loop, "::1/128", "OUTPUT", "mangle", "!", "-d", _V, "-p", "tcp", "-o", "lo",
                        "-m", "owner", flag, owner, "-j", "MARK", "--set-mark", OUTBOUND_MARK)
    b.append("OUTPUT", "mangle", "-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "CONNMARK", "--restore-mark")
    b.insert("ISTIO_INBOUND", "mangle", 1, "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN")
    b.insert_v4("ISTIO_INBOUND", "mangle", 2, "-p", "tcp", "-s", "127.0.0.6/32", "-i", "lo", "-j", "RETURN")
    b.insert_v6("ISTIO_INBOUND", "mangle", 2, "-p", "tcp", "-s", "::6/128", "-i", "lo", "-j", "RETURN")
    b.insert("ISTIO_INBOUND", "mangle", 3, "-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark", OUTBOUND_MARK,
             "-j", "RETURN")


def possibly_installed(cfg: InitConfig) -> RuleSet:
    """Every rule `cfg`'s values could have put in place in either interception mode and family:
    where a re-run or a cleanup looks for leftovers in built-in chains (a switch from TPROXY to
    REDIRECT must not leave TPROXY's mark rules behind)."""
    include = cfg.inbound_ports_include or "*"
    return build(dataclasses.replace(cfg, inbound_interception_mode="TPROXY", inbound_ports_include=include,
                                     enable_ipv6=True))


# --- iptables-restore text -------------------------------------------------------------------------------


def chains_by_table(rules: Iterable[Rule]) -> dict[str, list[str]]:
    """The non-built-in chains of each table in istio's declaration order (buildRestore)."""
    seen: set[tuple[str, str]] = set()
    out: dict[str, list[str]] = {}
    rules = list(rules)
    for targets in (False, True):  # chains used, then jump targets
        for r in rules:
            chain = r.jump if targets else r.chain
            if chain is None or (chain, r.table) in seen:
                continue
            seen.add((chain, r.table))
            if chain not in BUILTIN:
                out.setdefault(r.table, []).append(chain)
    return out


def render_restore(rules: Sequence[Rule]) -> str:
    """istio's BuildV4Restore/BuildV6Restore text: tables sorted by name, empty tables left out."""
    lines: dict[str, list[str]] = {}
    for table, chains in chains_by_table(rules).items():
        lines.setdefault(table, []).extend(f"-N {c}" for c in chains)
    for r in rules:
        lines.setdefault(r.table, []).append(" ".join(r.params))
    out = []
    for table in sorted(lines):
        out.append(f"* {table}")
        out.extend(lines[table])
        out.append("COMMIT")
    return "".join(line + "\n" for line in out)


@dataclass(frozen=True, slots=True)
class RestoreLine:
    table: str
    op: str  # "-N", "-A", "-I", "-D", "-F", "-X" or ":" (a chain declaration)
    chain: str
    rest: tuple[str, ...]  # for -I the position first


def parse_restore(text: str) -> list[RestoreLine]:
    """iptables-restore text -> lines, in order. Raises ValueError on what iptables-restore rejects
    structurally (a rule outside a table, a table without COMMIT)."""
    table: str | None = None
    out: list[RestoreLine] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            if table is not None:
                raise ValueError(f"table {table} not committed before {line!r}")
            table = line[1:].strip()
            continue
        if table is None:
            raise ValueError(f"line outside a table: {line!r}")
        if line == "COMMIT":
            table = None
            continue
        if line.startswith(":"):
            words = line[1:].split()
            out.append(RestoreLine(table, ":", words[0], tuple(words[1:])))
            continue
        words = line.split()
        if len(words) < 2 or words[0] not in ("-N", "-A", "-I", "-D", "-F", "-X"):
            raise ValueError(f"unsupported line {line!r}")
        out.append(RestoreLine(table, words[0], words[1], tuple(words[2:])))
    if table is not None:
        raise ValueError(f"table {table} not committed")
    return out

"""Hypothesis properties of the generated rules over many valid configurations.

A small evaluator walks the nat table the way netfilter does for a locally generated packet, so that
"excluded ports, excluded CIDRs and the proxy's own traffic never reach ISTIO_REDIRECT" is checked
on the rules themselves rather than on their spelling.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from init import config, iptables_state, nft, rules
from init.config import InitConfig

ports = st.integers(1, 65535).map(str)
port_lists = st.lists(ports, max_size=3).map(",".join)
v4_cidrs = st.builds(
    lambda a, b: f"{ipaddress.IPv4Address(a)}/{b}", st.integers(0, 2**32 - 1), st.integers(0, 32)
)
v6_cidrs = st.builds(
    lambda a, b: f"{ipaddress.IPv6Address(a).compressed}/{b}", st.integers(0, 2**128 - 1), st.integers(0, 128)
)
cidr_lists = st.lists(st.one_of(v4_cidrs, v6_cidrs), max_size=3).map(",".join)
ids = st.lists(st.integers(0, 65534).map(str), min_size=1, max_size=2, unique=True).map(",".join)
nics = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), max_size=2, unique=True).map(",".join)
servers_v4 = st.lists(st.integers(0, 2**32 - 1).map(lambda a: str(ipaddress.IPv4Address(a))), max_size=2).map(
    tuple
)
servers_v6 = st.lists(
    st.integers(0, 2**128 - 1).map(lambda a: ipaddress.IPv6Address(a).compressed), max_size=2
).map(tuple)

configs = st.builds(
    InitConfig,
    proxy_port=ports,
    inbound_capture_port=ports,
    proxy_uid=ids,
    proxy_gid=ids,
    inbound_interception_mode=st.sampled_from(["", "REDIRECT", "TPROXY"]),
    inbound_ports_include=st.one_of(st.just("*"), port_lists),
    inbound_ports_exclude=port_lists,
    outbound_ports_include=port_lists,
    outbound_ports_exclude=port_lists,
    outbound_ip_ranges_include=st.one_of(st.just("*"), cidr_lists),
    outbound_ip_ranges_exclude=cidr_lists,
    owner_groups_include=st.one_of(st.just("*"), ids),
    owner_groups_exclude=st.one_of(st.just(""), ids),
    reroute_virtual_interfaces=nics,
    exclude_interfaces=nics,
    redirect_dns=st.booleans(),
    capture_all_dns=st.booleans(),
    drop_invalid=st.booleans(),
    dns_servers_v4=servers_v4,
    dns_servers_v6=servers_v6,
    enable_ipv6=st.booleans(),
)


def valid(cfg: InitConfig) -> InitConfig:
    try:
        config.validate(cfg)
    except config.ConfigError:
        assume(False)
    return cfg


@settings(max_examples=150, deadline=None)
@given(configs)
def test_restore_text_round_trips_and_declares_every_chain_it_uses(cfg: InitConfig) -> None:
    cfg = valid(cfg)
    ruleset = rules.build(cfg)
    assert bool(ruleset.v6) == cfg.enable_ipv6
    for part in (ruleset.v4, ruleset.v6):
        parsed = rules.parse_restore(rules.render_restore(part))
        declared = [(p.table, p.chain) for p in parsed if p.op == "-N"]
        assert len(declared) == len(set(declared))  # each chain once
        body = [(p.table, p.op, p.chain, p.rest) for p in parsed if p.op != "-N"]
        ours = [(r.table, r.params[0], r.chain, r.params[2:]) for r in part]
        assert body == sorted(ours, key=lambda x: x[0])  # same rules, same order within each table
        for r in part:
            if r.chain not in rules.BUILTIN:
                assert (r.table, r.chain) in declared
            target = r.spec[r.spec.index("-j") + 1]
            if target in rules.ISTIO_CHAINS:
                assert (r.table, target) in declared


@settings(max_examples=150, deadline=None)
@given(configs)
def test_each_family_only_names_its_own_addresses(cfg: InitConfig) -> None:
    ruleset = rules.build(valid(cfg))
    for family, part in ((4, ruleset.v4), (6, ruleset.v6)):
        for r in part:
            for word in r.spec:
                if "/" in word:
                    try:
                        net = ipaddress.ip_interface(word)
                    except ValueError:
                        continue
                    assert net.version == family, (word, r)


# --- a tiny netfilter walk of the nat table ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Packet:
    dst: str
    dport: int
    uid: str
    gid: str
    oif: str = "eth0"
    src: str = "10.0.0.1"
    proto: str = "tcp"


def _chains(part: Sequence[rules.Rule]) -> dict[str, list[tuple[str, ...]]]:
    chains: dict[str, list[tuple[str, ...]]] = {}
    for r in part:
        if r.table != "nat":
            continue
        lst = chains.setdefault(r.chain, [])
        lst.insert(r.position - 1, r.spec) if r.position is not None else lst.append(r.spec)
    return chains


def _match(spec: tuple[str, ...], p: Packet) -> bool:
    words = list(spec[: spec.index("-j")])
    i, neg = 0, False
    while i < len(words):
        w = words[i]
        if w == "!":
            neg = True
            i += 1
            continue
        if w == "-m":
            i += 2
            continue
        arg = words[i + 1]
        if w in ("-o", "-i"):
            ok = p.oif == arg if w == "-o" else False  # locally generated: no input interface
        elif w in ("-d", "-s"):
            addr = ipaddress.ip_address(p.dst if w == "-d" else p.src)
            net = ipaddress.ip_interface(arg).network
            ok = addr.version == net.version and addr in net
        elif w == "-p":
            ok = p.proto == arg
        elif w == "--dport":
            lo, _, hi = arg.partition(":")
            ok = int(lo) <= p.dport <= int(hi or lo)
        elif w == "--dports":
            ok = str(p.dport) in arg.split(",")
        elif w == "--uid-owner":
            ok = p.uid == arg
        elif w == "--gid-owner":
            ok = p.gid == arg
        else:
            raise AssertionError(f"evaluator does not know {w}")
        if ok == neg:
            return False
        i, neg = i + 2, False
    return True


def nat_output_verdict(part: Sequence[rules.Rule], p: Packet) -> str | None:
    """The chain whose REDIRECT catches the packet in nat OUTPUT, or None if none does."""
    chains = _chains(part)

    def walk(chain: str, depth: int) -> str | None:
        assert depth < 8
        for spec in chains.get(chain, []):
            if not _match(spec, p):
                continue
            target = spec[spec.index("-j") + 1]
            if target == "RETURN":
                return "RETURN"
            if target == "REDIRECT":
                return chain
            if target in chains:
                got = walk(target, depth + 1)
                if got != "RETURN" and got is not None:
                    return got
                continue
            return target
        return None

    got = walk("OUTPUT", 0)
    return None if got == "RETURN" else got


@settings(max_examples=200, deadline=None)
@given(configs, st.data())
def test_excluded_ports_cidrs_and_the_proxy_are_never_sent_to_the_outbound_redirect(
    cfg: InitConfig, data: st.DataObject
) -> None:
    cfg = valid(cfg)
    ruleset = rules.build(cfg)
    ex4, ex6 = config.separate_v4_v6(cfg.outbound_ip_ranges_exclude)
    ex_ports = [int(p) for p in config.split(cfg.outbound_ports_exclude)]
    for family, part, excluded in ((4, ruleset.v4, ex4.cidrs), (6, ruleset.v6, ex6.cidrs)):
        if not part:
            continue
        nets = [ipaddress.ip_interface(c).network for c in excluded]
        dst_choices = [str(n.network_address) for n in nets] + ["10.9.8.7" if family == 4 else "2001:db8::99"]
        for _ in range(6):
            dst = data.draw(st.sampled_from(dst_choices))
            dport = data.draw(st.sampled_from([*ex_ports, 80, 53, 15008]))
            uid = data.draw(st.sampled_from([*config.split(cfg.proxy_uid), "4242"]))
            p = Packet(
                dst=dst, dport=dport, uid=uid, gid="4343", src="10.0.0.1" if family == 4 else "2001:db8::1"
            )
            verdict = nat_output_verdict(part, p)
            if dport in ex_ports:
                assert verdict is None, p  # -o: the very first rules of ISTIO_OUTPUT
            if uid in config.split(cfg.proxy_uid) or any(ipaddress.ip_address(dst) in n for n in nets):
                assert verdict != "ISTIO_REDIRECT", p


@settings(max_examples=150, deadline=None)
@given(configs)
def test_installed_state_cleans_up_to_nothing_of_ours(cfg: InitConfig) -> None:
    """Render a fake iptables-save of what we install, then the cleanup script removes every istio
    chain and every jump into one, and the install script over it refills the same chains."""
    ruleset = rules.build(valid(cfg))
    chains = rules.chains_by_table(ruleset.v4)
    save = []
    for table in sorted(set(chains) | {r.table for r in ruleset.v4}):
        save.append(f"*{table}")
        save += [f":{c} - [0:0]" for c in chains.get(table, [])]
        save += [f"-A {r.chain} {' '.join(r.spec)}" for r in ruleset.v4 if r.table == table]
        save.append("COMMIT")
    state = iptables_state.parse_save("\n".join(save))
    cleanup = rules.parse_restore(iptables_state.restore_script(state, (), ()))
    removed = {(p.table, p.chain) for p in cleanup if p.op == "-X"}
    assert removed == {(t, c) for t, cs in chains.items() for c in cs}
    jumps_deleted = [(p.table, p.chain) for p in cleanup if p.op == "-D"]
    assert len(jumps_deleted) == sum(
        1 for r in ruleset.v4 if r.chain in rules.BUILTIN and r.jump in rules.ISTIO_CHAINS
    )
    again = rules.parse_restore(iptables_state.restore_script(state, ruleset.v4, ()))
    assert {(p.table, p.chain) for p in again if p.op == ":"} == removed
    assert not [p for p in again if p.op == "-X"]  # nothing stale


@settings(max_examples=150, deadline=None)
@given(configs)
def test_nft_script_declares_every_chain_and_indexes_stay_in_range(cfg: InitConfig) -> None:
    cfg = valid(cfg)
    script = nft.render(cfg)
    declared: set[tuple[str, str]] = set()
    count: dict[tuple[str, str], int] = {}
    for line in script.splitlines():
        words = line.split()
        if words[:2] == ["add", "chain"]:
            declared.add((words[3], words[4]))
        elif words[1] == "rule":
            table, chain = words[3], words[4]
            assert (table, chain) in declared
            if words[0] == "insert":
                assert words[5] == "index" and int(words[6]) < count.get((table, chain), 0)
            count[(table, chain)] = count.get((table, chain), 0) + 1
            if "jump" in words:
                assert (table, words[words.index("jump") + 1]) in declared
    expected = script
    for table in nft.TABLES:
        expected = expected.replace(
            f"flush table inet {table}\n", f"delete table inet {table}\nadd table inet {table}\n"
        )
    assert nft.render(cfg, replace=True) == expected

"""Every istio golden case, rendered by us, is accepted by the real tools: iptables-restore and
ip6tables-restore (nf_tables and legacy backends) and `nft -f` (istio's own script text)."""

from __future__ import annotations

import dataclasses

import pytest

from init import iptables_state, nft, rules
from init.config import InitConfig
from tests.support import netns
from tests.unit.init import cases

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(30)]

# istio's cases name groups ("java", "ftp") this machine does not have; iptables and nft resolve
# names when loading, so use numeric groups for the load test.
GROUP_NAMES = {"java": "20", "ftp": "21"}


def _loadable(cfg: InitConfig) -> InitConfig:
    def fix(text: str) -> str:
        return ",".join(GROUP_NAMES.get(g, g) for g in text.split(",")) if text not in ("", "*") else text

    return dataclasses.replace(
        cfg,
        owner_groups_include=fix(cfg.owner_groups_include),
        owner_groups_exclude=fix(cfg.owner_groups_exclude),
    )


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_every_iptables_case_loads(backend: str) -> None:
    with netns.namespace() as ns:
        for name in cases.golden_names("iptables"):
            ruleset = rules.build(_loadable(cases.config(name)))
            for family, part in (("iptables", ruleset.v4), ("ip6tables", ruleset.v6)):
                if not part:
                    continue
                ns.run(
                    f"{family}-{backend}-restore", input=rules.render_restore(part)
                )  # replaces those tables
                saved = iptables_state.parse_save(ns.run(f"{family}-{backend}-save").stdout)
                for table, chains in rules.chains_by_table(part).items():
                    assert set(chains) <= set(saved[table].chains), (name, family, table)


# Where istio's own nft text would be rejected: IPv4 only, DNS servers only IPv6 (istio jumps to an
# istio-output-dns chain it never declares; we declare jump targets).
EXTRA_NFT = {
    "ipv4-with-only-ipv6-dns-servers": dataclasses.replace(
        cases.BASE, redirect_dns=True, dns_servers_v6=("fd00::53",), enable_ipv6=False
    )
}


def test_every_nft_case_loads() -> None:
    configs = {name: cases.config(name) for name in cases.golden_names("nftables")} | EXTRA_NFT
    with netns.namespace() as ns:
        for name, raw_cfg in configs.items():
            cfg = _loadable(raw_cfg)
            ns.run("nft", "-f", "-", input=nft.render(cfg))  # istio's exact text
            listed = ns.run("nft", "list", "tables").stdout
            for table in nft.TABLES:
                assert (f"table inet {table}" in listed) == (
                    f"add table inet {table}\n" in nft.render(cfg)
                ), name
            ns.run("nft", "-f", "-", input=nft.render(cfg, replace=True))  # ours: replaces in place
            ns.run("nft", "-f", "-", input=nft.cleanup_script())
            assert "istio-proxy" not in ns.run("nft", "list", "tables").stdout

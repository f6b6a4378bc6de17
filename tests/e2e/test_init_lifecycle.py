"""Install, re-install, clean up and fail, checked on the kernel's own view of the rules.

The namespace starts with unrelated rules in every table (and an unrelated nft table), so that
"cleanup restores exactly what was there" and "touches nothing else" are both observable.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.conftest import InitRunner
from tests.support import netns

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(40)]

MODES = {
    "iptables-nft": ("--force-iptables-binary=nft",),
    "iptables-legacy": ("--force-iptables-binary=legacy",),
    "nftables": ("--native-nftables",),
}
# Many features at once: exclusions, built-in chain rules without jumps (-c, -k), DNS, drop-invalid, IPv6.
RICH = (
    "-i",
    "*",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
    "-x",
    "10.9.0.0/16,fd00:9::/32",
    "-o",
    "9090",
    "-q",
    "3306",
    "-c",
    "eth9",
    "-k",
    "veth7",
    "--redirect-dns",
    "--dns-servers",
    "10.201.0.53,fd00:201::53",
    "--drop-invalid",
    "--dual-stack",
)
VARIANTS = {
    "redirect": RICH,
    "tproxy": (*RICH, "-m", "TPROXY"),
    "capture-all-dns": (
        "-i",
        "10.0.0.0/8",
        "-b",
        "80,443",
        "--redirect-dns",
        "--capture-all-dns",
        "--dual-stack",
    ),
}

UNRELATED_RULES = """*filter
-A INPUT -p tcp --dport 9 -j ACCEPT
COMMIT
*nat
:KEEP - [0:0]
-A PREROUTING -p tcp --dport 9 -j KEEP
-A OUTPUT -p tcp --dport 9 -j RETURN
-A KEEP -j RETURN
COMMIT
*mangle
-A PREROUTING -p udp --dport 9 -j RETURN
-A OUTPUT -p udp --dport 9 -j RETURN
COMMIT
*raw
-A PREROUTING -p udp --dport 9 -j RETURN
-A OUTPUT -p udp --dport 9 -j RETURN
COMMIT
"""
UNRELATED_NFT = "table inet keep {\n chain out {\n  type filter hook output priority 0; policy accept;\n  tcp dport 9 counter\n }\n}\n"


def _binary(mode: str) -> str:
    return "nft" if mode != "iptables-legacy" else "legacy"


def _seed(ns: netns.NetNS, mode: str) -> None:
    for fam in ("iptables", "ip6tables"):
        ns.run(f"{fam}-{_binary(mode)}-restore", "--noflush", input=UNRELATED_RULES)
    ns.run("nft", "-f", "-", input=UNRELATED_NFT)


def state(ns: netns.NetNS, mode: str) -> str:
    """The ruleset as the mode's own tool shows it (counters and comments dropped), plus routing."""
    from init.iptables_state import normalize_save

    if mode == "nftables":
        text = ns.run("nft", "-s", "list", "ruleset").stdout  # -s: no counter values
    else:
        b = _binary(mode)
        text = normalize_save(ns.run(f"iptables-{b}-save").stdout) + "\n--- v6\n"
        text += normalize_save(ns.run(f"ip6tables-{b}-save").stdout)
    rules = ns.run("ip", "rule").stdout + ns.run("ip", "-6", "rule").stdout
    routes = (
        ns.run("ip", "route", "show", "table", "all").stdout
        + ns.run("ip", "-6", "route", "show", "table", "all").stdout
    )
    return f"{text}\n--- rules\n{rules}\n--- routes\n{routes}"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode", list(MODES))
def test_rerun_is_idempotent_and_cleanup_restores_exactly(
    pair: netns.Pair, sidecar_init: InitRunner, mode: str, variant: str
) -> None:
    pod = pair.pod
    _seed(pod, mode)
    before = state(pod, mode)
    flags = (*VARIANTS[variant], *MODES[mode])
    sidecar_init(pod, *flags)
    once = state(pod, mode)
    assert ("istio-proxy-nat" if mode == "nftables" else "ISTIO_OUTPUT") in once
    sidecar_init(pod, *flags)
    assert state(pod, mode) == once  # identical after two runs: nothing doubled
    if variant == "tproxy":
        assert "fwmark 0x539 lookup 133" in once and "local default dev lo table 133" in once
    sidecar_init(pod, *flags, "--cleanup")
    assert state(pod, mode) == before
    sidecar_init(pod, *flags, "--cleanup")  # cleanup of a clean namespace is a no-op
    assert state(pod, mode) == before


@pytest.mark.parametrize("mode", ["iptables-nft", "iptables-legacy"])
def test_switching_mode_leaves_only_the_new_rules(
    pair: netns.Pair, sidecar_init: InitRunner, mode: str
) -> None:
    pod = pair.pod
    _seed(pod, mode)
    sidecar_init(pod, *RICH, *MODES[mode])
    fresh_redirect = state(pod, mode)
    sidecar_init(pod, *RICH, "-m", "TPROXY", *MODES[mode])
    assert "ISTIO_TPROXY" in state(pod, mode)
    sidecar_init(pod, *RICH, "--drop-invalid=false", *MODES[mode])  # back to REDIRECT, no ISTIO_DROP
    switched = state(pod, mode)
    assert "ISTIO_TPROXY" not in switched and "ISTIO_DROP" not in switched
    sidecar_init(pod, *RICH, *MODES[mode])
    assert state(pod, mode).split("--- rules")[0] == fresh_redirect.split("--- rules")[0]


@pytest.mark.parametrize("mode", list(MODES))
def test_bad_flag_value_fails_before_touching_anything(
    pair: netns.Pair, sidecar_init: InitRunner, mode: str
) -> None:
    pod = pair.pod
    _seed(pod, mode)
    before = state(pod, mode)
    done = sidecar_init(pod, "-i", "*", "-x", "10.0.0.0/33", *MODES[mode], check=False)
    assert done.returncode == 1
    assert "10.0.0.0/33" in done.stderr
    assert state(pod, mode) == before


FAIL_IPTABLES = """
import dataclasses, sys
from init import apply, config, rules
mode, where = sys.argv[1], sys.argv[2]
cfg = dataclasses.replace(config.InitConfig(), inbound_ports_include="*", outbound_ip_ranges_include="*",
                          inbound_interception_mode="TPROXY", enable_ipv6=True)
rs = rules.build(cfg)
bad4 = rules.Rule("nat", "ISTIO_OUTPUT", ("-d", "10.0.0.0/33", "-j", "RETURN"))
bad6 = rules.Rule("nat", "ISTIO_OUTPUT", ("-d", "2001:db8::/129", "-j", "RETURN"))
if where == "v4-nat":      # mangle (written first) commits, then nat fails
    rs = rules.RuleSet(rs.v4 + (bad4,), rs.v6)
elif where == "v6":        # all of IPv4 commits, then IPv6 fails
    rs = rules.RuleSet(rs.v4, rs.v6 + (bad6,))
def after():
    if where == "after":   # the rules went in, the routes step failed
        raise apply.ApplyError("routes failed on purpose")
try:
    apply.apply_iptables(rs, apply.detect_backend(False, mode), apply.detect_backend(True, mode), after=after)
except apply.ApplyError as err:
    print("FAILED:", err)
"""


@pytest.mark.parametrize(
    ("where", "installed"),
    [("v4-nat", False), ("v6", False), ("v6", True), ("after", True)],
    ids=["v4-nat", "v6", "v6-over-previous-install", "after-over-previous-install"],
)
@pytest.mark.parametrize("mode", ["iptables-nft", "iptables-legacy"])
def test_iptables_failure_rolls_back_every_table_of_both_families(
    pair: netns.Pair, sidecar_init: InitRunner, mode: str, where: str, installed: bool
) -> None:
    pod = pair.pod
    _seed(pod, mode)
    if installed:
        sidecar_init(pod, *RICH, *MODES[mode])
    before = state(pod, mode)
    out = pod.python(FAIL_IPTABLES, _binary(mode), where).stdout
    assert "FAILED:" in out
    assert {"v4-nat": "invalid mask", "v6": "invalid mask", "after": "on purpose"}[where] in out
    assert state(pod, mode) == before


FAIL_NFT = """
import sys
from init import apply, config, nft
script = nft.render(config.InitConfig(inbound_ports_include="*", outbound_ip_ranges_include="*"), replace=True)
def after():
    raise apply.ApplyError("routes failed on purpose")
try:
    if sys.argv[1] == "bad-rule":
        apply.apply_nft(script + "add rule inet istio-proxy-nat istio-output ip daddr 10.0.0.0/33 counter return\\n")
    else:
        apply.apply_nft(script, after=after)
except apply.ApplyError as err:
    print("FAILED:", err)
"""


@pytest.mark.parametrize(
    ("where", "installed"),
    [("bad-rule", False), ("bad-rule", True), ("after", True)],
    ids=["bad-rule", "bad-rule-over-previous-install", "after-over-previous-install"],
)
def test_nft_failure_leaves_the_ruleset_as_it_was(
    pair: netns.Pair, sidecar_init: InitRunner, where: str, installed: bool
) -> None:
    pod = pair.pod
    _seed(pod, "nftables")
    if installed:
        sidecar_init(pod, *RICH, "--native-nftables")
    before = state(pod, "nftables")
    out = pod.python(FAIL_NFT, where).stdout
    assert "FAILED:" in out
    assert state(pod, "nftables") == before


def test_network_namespace_flag_programs_that_namespace(pair: netns.Pair) -> None:
    """istio's --network-namespace (CNI style): run from outside, the rules land inside."""
    pod = pair.pod
    done = subprocess.run(
        [sys.executable, "-m", "init", "--network-namespace", pod.path, "-i", "*", "--force-iptables-binary=nft"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "host_ip='10.201.0.1'" in done.stderr  # the pod's address was detected, not ours
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT" in pod.run("iptables-nft-save", "-t", "nat").stdout

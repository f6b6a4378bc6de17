"""Our rules against istio's published golden outputs, byte for byte (iptables and nftables)."""

from __future__ import annotations

import pytest

from init import nft, rules
from tests.unit.init import cases

IPTABLES = cases.golden_names("iptables")
NFTABLES = cases.golden_names("nftables")


def test_every_golden_has_a_case() -> None:
    assert len(IPTABLES) >= 27 and len(NFTABLES) >= 28
    assert set(IPTABLES) | set(NFTABLES) == set(cases.CASES)


def _istio_iptables_stream(name: str) -> str:
    """istio records the commands it ran: `iptables-save`/`ip6tables-save` probes around one
    trimmed iptables-restore input per family.  Keep the restore inputs, in order."""
    lines = cases.golden("iptables", name).splitlines()
    return "\n".join(line for line in lines if line not in ("iptables-save", "ip6tables-save"))


@pytest.mark.parametrize("name", IPTABLES)
def test_iptables_restore_matches_istio_golden(name: str) -> None:
    rs = rules.build(cases.config(name))
    ours = [rules.render_restore(rs.v4).strip()]
    if rs.v6:
        ours.append(rules.render_restore(rs.v6).strip())
    assert "\n".join(ours) == _istio_iptables_stream(name)


@pytest.mark.parametrize("name", NFTABLES)
def test_nft_script_matches_istio_golden(name: str) -> None:
    assert nft.render(cases.config(name)) == cases.golden("nftables", name)

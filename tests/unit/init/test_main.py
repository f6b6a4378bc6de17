"""The command: usage errors, --dry-run output (iptables and nft), exit codes. Nothing is applied here:
ENABLE_INBOUND_IPV6 is set so that no address detection (netlink) happens either."""

from __future__ import annotations

import pytest

from init.__main__ import main


@pytest.fixture(autouse=True)
def _no_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENABLE_INBOUND_IPV6", "false")


def test_dry_run_prints_istios_restore_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-n", "-i", "*", "-b", "*", "-d", "15090,15021,15020"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# iptables-restore --noflush\n* nat\n-N ISTIO_INBOUND\n")
    assert "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN" in out
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT" in out and "ip6tables" not in out


def test_dry_run_with_ipv6_and_env_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_INBOUND_IPV6", "true")
    monkeypatch.setenv("ISTIO_SERVICE_CIDR", "10.0.0.0/8,fd00::/8")
    assert main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT" in out
    assert "# ip6tables-restore --noflush\n" in out and "-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT" in out


def test_dry_run_native_nftables_and_cleanup(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-n", "--native-nftables", "-i", "*"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("add table inet istio-proxy-nat\ndelete table inet istio-proxy-nat\n")
    assert "add rule inet istio-proxy-nat istio-output counter jump istio-redirect" in out
    assert main(["-n", "--native-nftables", "--cleanup"]) == 0
    assert capsys.readouterr().out == (
        "add table inet istio-proxy-nat\ndelete table inet istio-proxy-nat\n"
        "add table inet istio-proxy-mangle\ndelete table inet istio-proxy-mangle\n"
        "add table inet istio-proxy-raw\ndelete table inet istio-proxy-raw\n"
    )
    assert main(["-n", "--cleanup-only", "-c", "eth9"]) == 0
    out = capsys.readouterr().out
    assert "-D OUTPUT -o eth9 -j RETURN" in out and "-X ISTIO_OUTPUT" in out


def test_errors_exit_1_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-such-flag"]) == 1
    assert "unknown flag: --no-such-flag" in capsys.readouterr().err
    assert main(["-n", "-x", "10.0.0.0/33"]) == 1
    assert "10.0.0.0/33" in capsys.readouterr().err
    assert main(["-h"]) == 0
    assert "--istio-inbound-ports" in capsys.readouterr().out


def test_skip_rule_apply_does_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--skip-rule-apply", "-i", "*"]) == 0
    assert capsys.readouterr().out == ""

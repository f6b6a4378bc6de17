"""`--run-validation`: passes when the rules redirect a proxy-uid connection, fails with 126 otherwise."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import InitRunner
from tests.support import netns

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(30)]


@pytest.mark.parametrize(
    "mode",
    [(), ("--force-iptables-binary=legacy",), ("--native-nftables",)],
    ids=["iptables-nft", "iptables-legacy", "nftables"],
)
def test_validation_passes_with_rules(
    pair: netns.Pair, sidecar_init: InitRunner, mode: tuple[str, ...]
) -> None:
    done = sidecar_init(pair.pod, "-i", "*", "-b", "*", "--run-validation", "--probe-timeout=5s", *mode)
    assert done.returncode == 0
    assert "validation passed" in done.stderr


def test_validation_fails_with_126_without_rules(pair: netns.Pair, sidecar_init: InitRunner) -> None:
    done = sidecar_init(
        pair.pod, "--skip-rule-apply", "--run-validation", "--probe-timeout=500ms", check=False
    )
    assert done.returncode == 126
    assert "iptables validation failed" in done.stderr
    assert "ISTIO" not in pair.pod.run("iptables-save").stdout  # --skip-rule-apply touched nothing


def test_validation_fails_when_the_proxy_uid_is_not_the_one_captured(
    pair: netns.Pair, sidecar_init: InitRunner
) -> None:
    """Rules for uid 1337 but a validation client running as uid 4242: its lo traffic is not redirected."""
    sidecar_init(pair.pod, "-i", "*", "-b", "*", "-u", "1337")
    done = sidecar_init(
        pair.pod,
        "-i",
        "*",
        "-b",
        "*",
        "-u",
        "4242",
        "--skip-rule-apply",
        "--run-validation",
        "--probe-timeout=500ms",
        check=False,
    )
    assert done.returncode == 126

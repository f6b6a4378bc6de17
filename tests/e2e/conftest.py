"""Shared e2e fixtures: a pod/remote namespace pair and a runner for the init program inside a namespace.

These tests run for real (root, iproute2, iptables, nft, setpriv); the project's setup installs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.support import netns

InitRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def pair() -> Iterator[netns.Pair]:
    """Pod and remote namespaces joined by eth0 (10.201.0.1 <-> 10.201.0.2, fd00:201::1 <-> ::2)."""
    with netns.pod_and_remote() as p:
        yield p


@pytest.fixture
def sidecar_init() -> InitRunner:
    """sidecar_init(ns, *flags, check=True, env=None): run `python -m init` inside ns."""

    def run(
        ns: netns.NetNS, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **env} if env else None  # extra variables on top of ours
        return ns.run(sys.executable, "-m", "init", *args, check=check, env=full_env, timeout=30)

    return run

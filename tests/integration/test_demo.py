"""`make demo` end to end: `python -m examples.demo` starts the bookinfo toy apps, the proxy on
examples/bookinfo.yaml, sends its scenarios through it and must exit 0 with an all-ok summary.

The proxy is the sidecar (the demo's default).  DEMO_PROXY=envoy runs the same test against the
real Envoy binary, which is how the demo's expectations were checked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROXY = os.environ.get("DEMO_PROXY", "sidecar")


@pytest.mark.timeout(45)
def test_demo_routes_every_bookinfo_scenario_and_exits_zero() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--proxy", PROXY, "--requests", "200"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    out = done.stdout
    assert done.returncode == 0, f"demo exited {done.returncode}\n{out}\n{done.stderr}"
    result = re.search(r"result: (\d+)/(\d+) scenarios ok, weighted split ok, proxy up: as expected", out)
    assert result is not None, out
    assert result.group(1) == result.group(2), out
    assert not re.search(r"^\s*FAIL", out, re.MULTILINE), out
    # reviews-50-v3: both sides of the split answered and nothing else did.
    counts = dict(re.findall(r"^\s*(reviews v\d)\s+(\d+)\s", out, re.MULTILINE))
    assert set(counts) == {"reviews v1", "reviews v3"}, out
    assert int(counts["reviews v1"]) + int(counts["reviews v3"]) == 200, out
    assert int(counts["reviews v1"]) > 0 and int(counts["reviews v3"]) > 0, out
    # Local replies carry Envoy's exact bodies.
    for body in ("no healthy upstream", "upstream connect error", "upstream request timeout"):
        assert body in out, body

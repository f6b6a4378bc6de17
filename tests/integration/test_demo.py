"""`make demo` end to end: `python -m examples.demo` starts the bookinfo toy apps, the proxy on
examples/bookinfo.yaml, sends its scenarios through it, then runs the live-change act (a second proxy
configured over ADS by sidecar.devtools.ads_server, whose files are rewritten while requests flow),
and must exit 0 with an all-ok summary.

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


@pytest.fixture(scope="module")
def demo() -> subprocess.CompletedProcess[str]:
    """One run of the demo, read by both tests (it takes several seconds)."""
    return subprocess.run(
        [sys.executable, "-m", "examples.demo", "--proxy", PROXY, "--requests", "200"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=65,
    )


@pytest.mark.timeout(75)
def test_demo_routes_every_bookinfo_scenario_and_exits_zero(demo: subprocess.CompletedProcess[str]) -> None:
    out = demo.stdout
    assert demo.returncode == 0, f"demo exited {demo.returncode}\n{out}\n{demo.stderr}"
    result = re.search(
        r"result: (\d+)/(\d+) scenarios ok, weighted split ok, live change ok, proxy up: as expected", out
    )
    assert result is not None, out
    assert result.group(1) == result.group(2), out
    assert not re.search(r"^\s*FAIL", out, re.MULTILINE), out
    # reviews-50-v3: both sides of the split answered and nothing else did.
    split = out.split("weighted split:", 1)[1].split("admin /stats", 1)[0]
    counts = dict(re.findall(r"^\s*(reviews v\d)\s+(\d+)\s", split, re.MULTILINE))
    assert set(counts) == {"reviews v1", "reviews v3"}, out
    assert int(counts["reviews v1"]) + int(counts["reviews v3"]) == 200, out
    assert int(counts["reviews v1"]) > 0 and int(counts["reviews v3"]) > 0, out
    # Local replies carry Envoy's exact bodies.
    for body in ("no healthy upstream", "upstream connect error", "upstream request timeout"):
        assert body in out, body


LIVE_ROW = r"^\s*{phase}.*?\s(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$"


@pytest.mark.timeout(75)
def test_demo_live_change_moves_traffic_without_errors(demo: subprocess.CompletedProcess[str]) -> None:
    out = demo.stdout
    assert demo.returncode == 0, f"demo exited {demo.returncode}\n{out}\n{demo.stderr}"
    rows = {}
    for phase in ("before any change", "after routes.yaml", "after endpoints.yaml"):
        m = re.search(LIVE_ROW.format(phase=re.escape(phase)), out, re.MULTILINE)
        assert m is not None, (phase, out)
        rows[phase] = [int(x) for x in m.groups()]  # requests, v1, v2, v3, errors
    before, routed, endpoints = rows.values()
    # Before: only v1.  After the route change: v2 appears (v1 until it lands).  After the endpoint
    # change: v3 appears and v1 is gone for good.  No request failed in any phase.
    assert before[1] == before[0] > 0 and before[2] == before[3] == 0, out
    assert routed[2] > 0 and routed[3] == 0, out
    assert endpoints[3] > 0 and endpoints[1] == 0, out
    assert all(r[4] == 0 and sum(r[1:4]) == r[0] for r in rows.values()), out
    assert len(re.findall(r"rewritten: traffic moved after \d+\.\d+ s", out)) == 2, out
    assert re.search(
        r"^live change: \d+ requests, 0 errors, traffic moved 2/2 times: ok$", out, re.MULTILINE
    ), out

"""outlier_detection: a host answering 503 is ejected after consecutive_5xx, gets no traffic while
ejected, and is back after base_ejection_time (the first interval tick after it)."""

from __future__ import annotations

import time

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import Client, request
from tests.support.upstream import Behaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "outlier.yaml"
UPSTREAMS = ("good", "bad")


def _status(t: Target) -> int:
    return t.exchange(request("GET", "/", host="od.test")).status


def _names(t: Target, prefix: str) -> list[str]:
    """Every stat name under `prefix` (the same set on both proxies)."""
    with Client(t.port("admin_port")) as c:
        c.send(request("GET", f"/stats?filter=^{prefix}", host="admin"))
        text = c.read_response().text
    return [line.partition(": ")[0] for line in text.splitlines() if line.startswith(prefix)]




OD = "cluster.pair.outlier_detection"
BAD = Behaviour(status=503, body=b"bad")


def test_consecutive_5xx_ejects_then_the_host_returns(diff: Differential) -> None:
    """The proxy keeps its detector between runs (envoy runs twice: as itself and as the oracle), so
    each run ends with the bad host back and its counters reset, and starts after a quiet
    update_merge_window (1 s): envoy delays a health change that follows another within it."""
    diff.ups["good"].behave(Behaviour(body=b"good"))

    def scenario(t: Target) -> tuple[int, list[int], int, int, bool, list[str], list[str]]:
        t.ups["bad"].behave(BAD)
        time.sleep(1.1)
        before = t.stat(f"{OD}.ejections_enforced_consecutive_5xx")
        seen: list[int] = []
        for _ in range(20):  # round robin alternates: the third 503 comes within 7 requests
            seen.append(_status(t))
            if seen.count(503) == 3:
                break
        time.sleep(0.3)  # envoy applies an ejection on its main thread
        ejected = [_status(t) for _ in range(8)]
        enforced = t.stat(f"{OD}.ejections_enforced_consecutive_5xx") - before
        names = sorted(_names(t, OD))
        with Client(t.port("admin_port")) as c:
            c.send(request("GET", "/clusters", host="admin"))
            text = c.read_response().text
        flags = sorted(line.rpartition("::")[2] for line in text.splitlines() if "::health_flags::" in line)
        active = t.stat(f"{OD}.ejections_active")
        # base_ejection_time 1 s, lifted at the next 0.2 s interval tick; 2.1 s after the ejection
        # even when the return is merged (a tick exactly update_merge_window after the ejection).
        time.sleep(1.8)
        back = [_status(t) for _ in range(3)]
        # Reset the bad host's consecutive count for the next run: one success reaches it.
        t.ups["bad"].behave(Behaviour(body=b"healed"))
        _status(t)
        _status(t)
        return seen.count(503), ejected, enforced, active, 503 in back, names, flags

    got = diff.run(scenario)
    assert got[:5] == (3, [200] * 8, 1, 1, True)
    assert f"{OD}.ejections_overflow" in got[5] and len(got[5]) == 21
    assert got[6] == ["/failed_outlier_check", "healthy"]  # /clusters during the ejection

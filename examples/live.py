"""The demo's live-change act: xDS updates while requests flow.

A control plane (`python -m sidecar.devtools.ads_server`, as a child process) serves YAML files from a
temporary directory; a second proxy (examples/live.yaml) takes its listener, route, clusters and
endpoints from it over ADS.  A thread sends requests continuously (one keep-alive connection,
Host reviews) while the act rewrites the files, each in one step (write, then rename):

1. routes.yaml: Host reviews goes to cluster reviews-v2 instead of reviews-v1 (an RDS update);
2. endpoints.yaml: cluster reviews-v2's endpoint becomes the reviews-v3 app (an EDS update).

For each change it measures the time from the rename to the first request answered by the new app,
and counts who answered in each phase.  It fails if any request failed, if traffic did not move
within MOVE_S, or if the proxy NACKed anything (the control plane logs NACKs).  Bounded: at most
MAX_REQUESTS requests, and the act's deadline."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import IO, Any

import yaml

from examples import procs, report
from examples.scenarios import REQUEST_TIMEOUT, Client

TEMPLATE = Path(__file__).with_name("live.yaml")
HOST, PATH = "reviews", "/reviews/0"
MOVE_S = 10.0  # a file change must move traffic within this
SETTLE = 40  # requests answered by the expected app before a change (and after the last one)
MAX_REQUESTS = 20_000
POLL_S = 0.1  # how often the control plane checks its files
ANSWERS = ("reviews v1", "reviews v2", "reviews v3")
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_VIA_ADS = {"ads": {}, "resource_api_version": "V3"}


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def resource_files(listen: int, apps: dict[str, int], route_to: str, v2_app: str) -> dict[str, list[Any]]:
    """The control plane's files: file stem -> list of resources (Envoy's YAML form)."""
    hcm = {
        "@type": _HCM,
        "stat_prefix": "live_http",
        "rds": {"route_config_name": "live", "config_source": _VIA_ADS},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    vhost = {
        "name": "reviews",
        "domains": ["reviews", "reviews:9080"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": route_to}}],
    }
    return {
        "listeners": [
            {
                "name": "live_http",
                "address": _address(listen),
                "filter_chains": [
                    {
                        "filters": [
                            {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                        ]
                    }
                ],
            }
        ],
        "routes": [{"name": "live", "virtual_hosts": [vhost]}],
        "clusters": [
            {
                "name": n,
                "type": "EDS",
                "connect_timeout": "1s",
                "eds_cluster_config": {"eds_config": _VIA_ADS},
            }
            for n in ("reviews-v1", "reviews-v2")
        ],
        "endpoints": [
            {
                "cluster_name": c,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(apps[app])}}]}],
            }
            for c, app in (("reviews-v1", "reviews-v1"), ("reviews-v2", v2_app))
        ],
    }


def write_file(directory: Path, stem: str, docs: list[Any]) -> float:
    """Replace DIR/stem.yaml in one step; returns the time (monotonic) of the rename."""
    tmp = directory / f".{stem}.yaml.tmp"
    tmp.write_text(yaml.safe_dump(docs, sort_keys=False))
    os.replace(tmp, directory / f"{stem}.yaml")
    return time.monotonic()


@dataclass
class Traffic:
    """Requests sent back to back from a thread: (monotonic time of the answer, who answered)."""

    port: int
    deadline: float
    events: list[tuple[float, str]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = Client(self.port)
        try:
            for _ in range(MAX_REQUESTS):
                left = self.deadline - time.monotonic()
                if self.stopping.is_set() or left <= 0:
                    return
                try:
                    resp = client.get(HOST, PATH, {}, min(REQUEST_TIMEOUT, left))
                    who = resp.answered_by if resp.status == 200 else f"status {resp.status}"
                except (OSError, http.client.HTTPException) as exc:
                    who = f"error {type(exc).__name__}"
                self.events.append((time.monotonic(), who))  # list.append is atomic: no lock needed
        finally:
            client.close()

    def wait_for(self, who: str, since: float, count: int, within: float) -> float | None:
        """Monotonic time of the first answer by `who` after `since`, once `count` such answers came
        in; None if not within `within` seconds (or the traffic stopped)."""
        deadline = min(time.monotonic() + within, self.deadline)
        while time.monotonic() < deadline:
            hits = [t for t, w in list(self.events) if w == who and t > since]
            if len(hits) >= count:
                return hits[0]
            time.sleep(0.01)
        return None


@dataclass
class LiveResult:
    ok: bool
    lines: list[str]


def run_live(proxy: str, apps: dict[str, int], tmp: Path, budget: float, out: IO[str]) -> LiveResult:
    """The whole act; children are stopped before it returns.  Raises procs.DemoError if it cannot start."""
    deadline = time.monotonic() + budget
    files, boot = tmp / "xds", tmp / "live.yaml"
    ads_log, proxy_log = tmp / "ads_server.log", tmp / "live-proxy.log"
    files.mkdir()
    admin, listen = procs.free_ports(2)
    for stem, docs in resource_files(listen, apps, "reviews-v1", "reviews-v2").items():
        write_file(files, stem, docs)
    ads_cmd = [sys.executable, "-m", "sidecar.devtools.ads_server", "--dir", str(files)]
    ads_cmd += ["--listen", "127.0.0.1:0", "--poll", str(POLL_S)]
    ads = procs.start(ads_cmd, ads_log, stdout=subprocess.PIPE)
    proc: subprocess.Popen[bytes] | None = None
    traffic = Traffic(listen, deadline)
    thread = threading.Thread(target=traffic.run, name="live-traffic", daemon=True)
    try:
        ready = procs.read_line(ads, "ads_server ready:", 15.0)
        if not ready:
            raise procs.DemoError(f"the ADS server did not start\n{procs.tail(ads_log, what='ADS server')}")
        grpc_target = ready.split("grpc=", 1)[1].split()[0]
        boot.write_text(
            Template(TEMPLATE.read_text()).substitute(
                ADMIN_PORT=admin, XDS_PORT=grpc_target.rsplit(":", 1)[1]
            )
        )
        proc = procs.start(procs.proxy_command(proxy, boot), proxy_log)
        took = procs.wait_ready(proc, admin, proxy_log)
        print(
            f"\nlive change: ADS server (pid {ads.pid}, grpc {grpc_target}, serving {files.name}/*.yaml) -> "
            f"{proxy} (pid {proc.pid}, ready in {took:.1f} s, everything from ADS) on 127.0.0.1:{listen}",
            file=out,
        )
        thread.start()
        start = time.monotonic()
        problems: list[str] = []
        moves: list[tuple[str, float | None]] = []
        first = traffic.wait_for("reviews v1", start, SETTLE, MOVE_S)
        if first is None:
            problems.append(f"no {SETTLE} answers from reviews v1 within {MOVE_S:.0f} s of the first request")
        changes = (
            (
                "routes.yaml: Host reviews -> cluster reviews-v2",
                "routes",
                "reviews-v2",
                "reviews-v2",
                "reviews v2",
            ),
            (
                "endpoints.yaml: reviews-v2 -> the reviews-v3 app",
                "endpoints",
                "reviews-v2",
                "reviews-v3",
                "reviews v3",
            ),
        )
        marks: list[tuple[str, float]] = [("before any change: Host reviews -> cluster reviews-v1", start)]
        for label, stem, route_to, v2_app, who in changes:
            if problems:
                break
            at = write_file(files, stem, resource_files(listen, apps, route_to, v2_app)[stem])
            marks.append((f"after {label}", at))
            moved = traffic.wait_for(who, at, SETTLE, MOVE_S)
            moves.append((label.split(":")[0], None if moved is None else moved - at))
            if moved is None:
                problems.append(f"{label}: traffic did not reach {who} within {MOVE_S:.0f} s")
        traffic.stopping.set()
        thread.join(REQUEST_TIMEOUT + 1)
        stats = _xds_stats(admin)
        alive = proc.poll() is None
    finally:
        traffic.stopping.set()
        if thread.is_alive():
            thread.join(REQUEST_TIMEOUT + 1)
        if proc is not None:
            procs.stop(proc)
        procs.stop(ads)
        if ads.stdout is not None:
            ads.stdout.close()
    nacks = [line for line in ads_log.read_text(errors="replace").splitlines() if "NACK" in line]
    return _summary(traffic.events, marks, moves, problems, nacks, stats, alive, proxy, proxy_log, ads_log)


def _xds_stats(admin: int) -> dict[str, int]:
    try:
        status, text = procs.admin_get(admin, "/stats", REQUEST_TIMEOUT)
    except (OSError, http.client.HTTPException):
        return {}
    return report.parse_stats(text) if status == 200 else {}


def _summary(
    events: list[tuple[float, str]],
    marks: list[tuple[str, float]],
    moves: list[tuple[str, float | None]],
    problems: list[str],
    nacks: list[str],
    stats: dict[str, int],
    alive: bool,
    proxy: str,
    proxy_log: Path,
    ads_log: Path,
) -> LiveResult:
    phases: list[tuple[str, Counter[str]]] = []
    for i, (label, at) in enumerate(marks):
        end = marks[i + 1][1] if i + 1 < len(marks) else float("inf")
        phases.append((label, Counter(w for t, w in events if at <= t < end)))
    errors = sum(n for _, c in phases for w, n in c.items() if w not in ANSWERS)
    lines = ["requests answered, per phase (one keep-alive connection, requests back to back)"]
    lines += report.live_lines(phases, ANSWERS)
    for what, secs in moves:
        lines.append(
            f"  {what} rewritten: traffic moved after {secs:.2f} s (file rename to first answer by the new app)"
            if secs is not None
            else f"  {what} rewritten: traffic did NOT move"
        )
    lines.append(f"  {proxy} xDS stats: " + report.xds_stats_line(stats))
    if not alive:
        problems.append(f"the {proxy} exited during the act")
    if errors:
        problems.append(f"{errors} requests failed")
    if nacks:
        problems.append(f"{len(nacks)} NACKs: " + nacks[0].split("NACK", 1)[1][:200])
    total = sum(sum(c.values()) for _, c in phases)
    ok = not problems and len(moves) == 2 and all(s is not None for _, s in moves)
    lines.append(
        f"live change: {total} requests, {errors} errors, traffic moved {sum(s is not None for _, s in moves)}/2 "
        f"times: {'ok' if ok else 'NOT ok'}"
    )
    lines += [f"  FAIL {p}" for p in problems]
    if not ok:
        lines += [procs.tail(proxy_log), procs.tail(ads_log, what="ADS server")]
    return LiveResult(ok, lines)

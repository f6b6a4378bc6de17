"""Running wrk and reading its `--latency` report.

Owns: the wrk command line (one thread, pinned, bounded by -d and a hard subprocess timeout) and a
parser for wrk 4.x text output. The parser is pure (text in, `WrkResult` out) so it can be checked on
canned output.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.procs import pinned

# wrk prints times with units us/ms/s/m/h (stats.c format_time) and counts with k/M/G (format_metric).
_TIME_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_TIME = r"([0-9.]+)(us|ms|s|m|h)"
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.M)
_PERCENTILE = re.compile(r"^\s+(50|75|90|99)(?:\.0+)?%\s+" + _TIME, re.M)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkError(RuntimeError):
    """wrk failed to run or printed something we cannot read."""


@dataclass(slots=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    latency_us: dict[str, float]  # "p50", "p75", "p90", "p99" -> microseconds
    socket_errors: dict[str, int] = field(default_factory=dict)  # connect/read/write/timeout, all present
    non_2xx: int = 0  # wrk counts status >= 400 here ("Non-2xx or 3xx responses")

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors}


def _us(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS[unit]


def parse(text: str) -> WrkResult:
    """Parse the output of `wrk --latency`; raises WrkError when a required line is missing."""
    requests = _REQUESTS.search(text)
    rps = _RPS.search(text)
    if requests is None or rps is None:
        raise WrkError(f"cannot read wrk output:\n{text.strip()}")
    latency = {f"p{m.group(1)}": _us(m.group(2), m.group(3)) for m in _PERCENTILE.finditer(text)}
    if "p50" not in latency or "p99" not in latency:
        raise WrkError(f"wrk output has no latency distribution (was --latency given?):\n{text.strip()}")
    socket_errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    sock = _SOCKET_ERRORS.search(text)
    if sock is not None:
        socket_errors = dict(zip(socket_errors, map(int, sock.groups()), strict=True))
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        seconds=_us(requests.group(2), requests.group(3)) / 1e6,
        rps=float(rps.group(1)),
        latency_us=latency,
        socket_errors=socket_errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run(url: str, connections: int, seconds: int, cpu: int | None, timeout_s: int = 2) -> WrkResult:
    """One wrk run: 1 thread, `connections` keep-alive connections, for `seconds` (whole seconds: wrk's
    -d takes an integer), pinned to `cpu`. Killed if it overruns -d by 15 s."""
    argv = pinned(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s", "--latency", url], cpu
    )
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 15, check=False)
    except subprocess.TimeoutExpired as e:
        raise WrkError(f"wrk did not finish within {seconds + 15} s") from e
    if done.returncode != 0:
        raise WrkError(f"wrk exited {done.returncode}: {(done.stderr or done.stdout).strip()}")
    return parse(done.stdout)

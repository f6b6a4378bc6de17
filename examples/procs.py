"""Child processes of the demo: free loopback ports, the proxy command line, waiting for admin
/ready, log tails, and stopping a child (SIGTERM, then SIGKILL), each step bounded in time.

Shared by the static act (demo.py) and the live-change act (live.py)."""

from __future__ import annotations

import http.client
import os
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

READY_S = 15.0  # proxy start to admin /ready answering 200 (LIVE)
STOP_S = 5.0  # SIGTERM to exit, then SIGKILL


class DemoError(Exception):
    """The demo could not run (as opposed to: it ran and a scenario went wrong)."""


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports free right now (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def proxy_command(proxy: str, config: Path) -> list[str]:
    # Next to sys.executable, not resolved: the venv's bin/python is a symlink out of the venv.
    binary = Path(sys.executable).parent / proxy
    if not os.access(binary, os.X_OK):
        raise DemoError(f"{binary} not found or not executable (run `make install` / `make install-test`)")
    cmd = [str(binary), "-c", str(config), "--concurrency", "1", "-l", "warning"]
    if proxy == "envoy":
        cmd.append("--disable-hot-restart")  # no shared memory: several can run side by side
    return cmd


def start(cmd: list[str], log: Path, stdout: int | None = None) -> subprocess.Popen[bytes]:
    """Start a child in its own session (Ctrl-C reaches only the demo, which then stops the child in
    order); stderr (and stdout unless given) go to `log`."""
    with log.open("wb") as logf:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf if stdout is None else stdout,
            stderr=logf if stdout is not None else subprocess.STDOUT,
            start_new_session=True,
        )


def admin_get(port: int, path: str, timeout: float) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen[bytes], admin: int, log: Path) -> float:
    """Poll admin /ready until it answers 200; seconds taken.  As in Envoy, 200 (LIVE) means the
    listeners are bound, so the listener ports are not probed (that would show in their stats)."""
    start = time.monotonic()
    while time.monotonic() - start < READY_S:
        if proc.poll() is not None:
            raise DemoError(f"proxy exited with status {proc.returncode} before it was ready\n{tail(log)}")
        try:
            if admin_get(admin, "/ready", 0.5)[0] == 200:
                return time.monotonic() - start
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.05)
    raise DemoError(f"proxy not ready after {READY_S:.0f} s (admin /ready)\n{tail(log)}")


def read_line(proc: subprocess.Popen[bytes], prefix: str, within: float) -> str:
    """The first stdout line of `proc` starting with `prefix` (decoded), or "" if none in time."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                line = proc.stdout.readline().decode("utf-8", "replace")
                if not line:
                    return ""  # the child closed its stdout (exited)
                if line.startswith(prefix):
                    return line.strip()
    finally:
        sel.close()
    return ""


def tail(log: Path, lines: int = 15, what: str = "proxy") -> str:
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no {what} log)"
    return (
        f"{what} log (last lines):\n" + "\n".join("  | " + line for line in text) if text else "(empty log)"
    )


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_S)
    return proc.returncode

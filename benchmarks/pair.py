"""`python -m benchmarks.pair -- ARGV1... -- ARGV2...`: run two proxies as one process tree.

The mTLS scenario measures a pair of proxies (client side and server side) as one unit: the harness
pins, measures (CPU, RSS, PSS over the tree) and stops a single process, so this launcher starts both
as its children, waits, and on SIGTERM/SIGINT stops both (SIGTERM, then SIGKILL after 5 s).  It
exits when either child exits.  Its own CPU is a sleeping wait; its memory (one small Python) is
counted in the tree for both proxy kinds alike.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    if len(argv) < 4 or argv[0] != "--" or argv[1:].count("--") != 1:
        raise SystemExit("usage: python -m benchmarks.pair -- ARGV1... -- ARGV2...")
    i = argv.index("--", 1)
    return argv[1:i], argv[i + 1 :]


def main() -> int:
    first, second = split(sys.argv[1:])
    children = [subprocess.Popen(first), subprocess.Popen(second)]
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(c.poll() is None for c in children):
        time.sleep(0.2)
    for c in children:
        if c.poll() is None:
            c.terminate()
    deadline = time.monotonic() + 5.0
    for c in children:
        try:
            c.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())

"""Child processes of the benchmark and what /proc says about them.

Owns: starting pinned children (nginx, proxies, wrk), killing every one of them on the way out (their
whole process group, so a sidecar that forks workers leaves nothing behind), and reading CPU time and
memory for a process tree from /proc. It knows nothing about proxies or HTTP.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

_PR_SET_PDEATHSIG = 1
try:  # loaded before any fork: the child must not dlopen between fork and exec
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux/glibc
    _LIBC = None


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the harness dies without cleaning up (kill -9)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """`argv` under `taskset -c cpu` (taskset execs, so the pid we get is the program's own)."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


@dataclass(slots=True)
class Child:
    """A long-lived child (upstream or proxy) with its output going to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])


class Children:
    """Every long-lived child the harness starts; `close()` (or leaving the `with`) kills them all."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def spawn(self, name: str, argv: list[str], cpu: int | None, log_path: Path) -> Child:
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                pinned(argv, cpu),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg reaches forked workers too
                preexec_fn=_die_with_parent,
            )
        child = Child(name, popen, log_path)
        self._children.append(child)
        return child

    def stop(self, child: Child, grace: float = 3.0) -> None:
        """SIGTERM the child's process group, then SIGKILL after `grace` seconds."""
        if child in self._children:
            self._children.remove(child)
        _signal_group(child.pid, signal.SIGTERM)
        try:
            child.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(child.pid, signal.SIGKILL)  # also reaps stragglers the leader left behind
        try:
            child.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        # Signal everyone first so that they shut down in parallel, then wait for each.
        children, self._children = self._children, []
        for child in children:
            _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for child in children:
            try:
                child.popen.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(child.pid, signal.SIGKILL)
            try:
                child.popen.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---- /proc readers -------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the `(comm)` field, or None if the process is gone.

    comm may contain spaces and parentheses, so split after the last ')'; index 0 is field 3 (state).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode().split()


def _all_stats() -> dict[int, list[str]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                stats[int(entry)] = fields
    return stats


def _descendants(stats: dict[int, list[str]], roots: tuple[int, ...]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    seen: set[int] = set()
    todo = list(roots)
    while todo and len(seen) < 100_000:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, ()))
    return seen


def tree_pids(root: int) -> list[int]:
    """`root` and all its live descendants (by scanning every /proc/<pid>/stat for its ppid)."""
    return sorted(_descendants(_all_stats(), (root,)))


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of the tree, plus cutime+cstime (workers that already exited and were reaped)."""
    ticks = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields is not None:  # fields 14..17 of proc(5): utime stime cutime cstime
            ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def tree_rss_bytes(root: int) -> int:
    """Sum of resident set sizes over the tree (shared pages count once per process, as `ps` does)."""
    total = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[21]) * PAGE_SIZE  # field 24 of proc(5): rss in pages
    return total


def tree_pss_bytes(root: int) -> int | None:
    """Sum of proportional set sizes over the tree (smaps_rollup, Linux 4.14+), or None if unreadable."""
    total, seen = 0, False
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        seen = True
                        break
        except OSError:
            continue
    return total if seen else None


def foreign_cpu_ticks(ours: int) -> int:
    """CPU ticks of every user-space process outside `ours`'s tree, reaped children included.

    A sum over processes, not a per-process difference: when a process that was running before is reaped
    its ticks move into its parent's cutime, and only the sum stays consistent (a per-process difference
    would count a long-lived child's whole life at the moment it is reaped). Kernel threads (kthreadd's
    tree) are left out: ksoftirqd and kworkers mostly carry our own loopback traffic.
    """
    stats = _all_stats()
    skip = _descendants(stats, (ours, 2))
    return sum(
        int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]) for pid, f in stats.items() if pid not in skip
    )


def foreign_cpu_seconds(before: int, after: int) -> float:
    """CPU seconds other processes used between two `foreign_cpu_ticks` readings. It undercounts (never
    below 0) when a process exits unreaped or is reaped by a parent that ignores SIGCHLD."""
    return max(0, after - before) / CLK_TCK


class PeakMemory:
    """Samples the tree's RSS and PSS on a thread while a load runs; keeps the peaks."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, tree_rss_bytes(self.root))
        pss = tree_pss_bytes(self.root)
        if pss is not None:
            self.peak_pss = max(self.peak_pss or 0, pss)

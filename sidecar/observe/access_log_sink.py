"""Where access log lines go: envoy.access_loggers.file / stdout / stderr, buffered per process.

Envoy's AccessLogFileImpl: lines are buffered in memory and written by a flush every
--file-flush-interval-msec (10 s by default; Istio passes 1000), or at once when the buffer holds
more than --file-flush-min-size-kb (64 KiB), and at shutdown.  We write with os.write on an
O_APPEND descriptor (never `logging`: about 12 us a line), and each write is whole lines, so
several worker processes appending to one file never interleave within a line.

One sink per path per process (`sink_for`), opened lazily on first use so that a worker opens its
own after the fork; `flush_all` and `reopen_all` serve the runtime's timer, shutdown and the
admin's /reopen_logs."""

from __future__ import annotations

import logging
import os
from typing import Any

from sidecar.model.access_log import SinkKind

log = logging.getLogger("sidecar.access_log")

# --file-flush-interval-msec / --file-flush-min-size-kb (Envoy's defaults; set by the runtime).
_settings = {"interval": 10.0, "min_size": 64 * 1024}
# Bound on write attempts per flush (a full pipe returns short writes; we never spin forever).
_MAX_WRITES = 64


class FileSink:
    """One open log destination with its pending lines."""

    __slots__ = ("buf", "failed", "fd", "path", "size")

    def __init__(self, path: str, fd: int | None = None) -> None:
        self.path = path
        self.fd = fd
        self.buf: list[str] = []
        self.size = 0
        self.failed = False

    def _open(self) -> int | None:
        if self.fd is None and not self.failed:
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                self.failed = True  # logged once; lines for it are dropped from now on
                log.error("access log %s: cannot open: %s", self.path, exc)
        return self.fd

    def write(self, line: str) -> None:
        self.buf.append(line)
        self.size += len(line)
        if self.size >= _settings["min_size"]:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        data = "".join(self.buf).encode("utf-8", "backslashreplace")
        self.buf = []
        self.size = 0
        fd = self._open()
        if fd is None:
            return
        view = memoryview(data)
        for _ in range(_MAX_WRITES):
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                continue
            except OSError as exc:
                log.error("access log %s: write failed: %s", self.path, exc)
                return
            view = view[n:]
            if not view:
                return
        log.error("access log %s: dropped %d bytes (destination not accepting)", self.path, len(view))

    def reopen(self) -> None:
        """Flush, then open the path again (log rotation: admin /reopen_logs)."""
        self.flush()
        if self.fd is not None and self.path not in _STD_PATHS:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
            self.failed = False


_STD_PATHS = {"<stdout>": 1, "<stderr>": 2}
_sinks: dict[str, FileSink] = {}


def sink_for(kind: SinkKind, path: str = "") -> FileSink:
    """The process's sink for a file path, or for the stdout / stderr loggers (fd 1 / 2)."""
    key = "<stdout>" if kind is SinkKind.STDOUT else "<stderr>" if kind is SinkKind.STDERR else path
    sink = _sinks.get(key)
    if sink is None:
        sink = _sinks[key] = FileSink(key, _STD_PATHS.get(key))
    return sink


def configure(interval_s: float, min_size_bytes: int) -> None:
    _settings["interval"] = interval_s if interval_s > 0 else 10.0
    _settings["min_size"] = max(0, min_size_bytes)


def flush_all() -> None:
    for s in list(_sinks.values()):
        s.flush()


def reopen_all() -> None:
    for s in list(_sinks.values()):
        s.reopen()


def after_fork() -> None:
    """A new worker process: forget the parent's sinks (their descriptors and pending lines)."""
    _sinks.clear()


def start_flusher(loop: Any) -> Any:
    """Flush every --file-flush-interval-msec on `loop`; returns an object with cancel()."""
    return _Flusher(loop)


class _Flusher:
    __slots__ = ("handle", "loop")

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.handle = loop.call_later(_settings["interval"], self._tick)

    def _tick(self) -> None:
        flush_all()
        self.handle = self.loop.call_later(_settings["interval"], self._tick)

    def cancel(self) -> None:
        self.handle.cancel()
        flush_all()

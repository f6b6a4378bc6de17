"""observe/access_log_sink.py: lines stay in memory until a flush (timer, size, shutdown), whole
lines reach the file in order on an O_APPEND descriptor, one sink per path, and /reopen_logs opens
the path again (log rotation)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.model.access_log import SinkKind
from sidecar.observe import access_log_sink as sinks


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    sinks.after_fork()
    sinks.configure(10.0, 64 * 1024)
    yield
    sinks.after_fork()
    sinks.configure(10.0, 64 * 1024)


def test_buffered_until_flush(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    s = sinks.sink_for(SinkKind.FILE, str(path))
    assert sinks.sink_for(SinkKind.FILE, str(path)) is s  # one sink per path per process
    s.write("one\n")
    s.write("two\n")
    assert not path.exists()  # opened lazily, on the first flush
    sinks.flush_all()
    assert path.read_text() == "one\ntwo\n"
    s.write("three\n")
    sinks.flush_all()
    assert path.read_text() == "one\ntwo\nthree\n"


def test_flushed_when_the_buffer_passes_the_min_size(tmp_path: Path) -> None:
    sinks.configure(1.0, 10)
    path = tmp_path / "b.log"
    s = sinks.sink_for(SinkKind.FILE, str(path))
    s.write("12345\n")
    assert not path.exists()
    s.write("67890\n")  # 12 bytes >= 10: written at once
    assert path.read_text() == "12345\n67890\n"


def test_appends_to_an_existing_file_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_text("old\n")
    s = sinks.sink_for(SinkKind.FILE, str(path))
    s.write("new\n")
    sinks.flush_all()
    assert path.read_text() == "old\nnew\n"
    path.rename(tmp_path / "c.log.1")  # logrotate moves the file, then asks for /reopen_logs
    s.write("after\n")
    sinks.reopen_all()  # flushes into the moved file, then opens the path anew
    s.write("fresh\n")
    sinks.flush_all()
    assert (tmp_path / "c.log.1").read_text() == "old\nnew\nafter\n"
    assert path.read_text() == "fresh\n"


def test_unopenable_path_drops_lines_without_raising(tmp_path: Path) -> None:
    s = sinks.sink_for(SinkKind.FILE, str(tmp_path / "missing-dir" / "d.log"))
    s.write("x\n")
    sinks.flush_all()
    assert s.failed and s.buf == []


def test_stdout_and_stderr_use_the_process_descriptors() -> None:
    assert sinks.sink_for(SinkKind.STDOUT).fd == 1
    assert sinks.sink_for(SinkKind.STDERR).fd == 2


class FakeLoop:
    def __init__(self) -> None:
        self.calls: list[tuple[float, object]] = []

    def call_later(self, delay: float, cb: object) -> FakeLoop:
        self.calls.append((delay, cb))
        return self

    def cancel(self) -> None:
        pass


def test_flusher_ticks_every_interval(tmp_path: Path) -> None:
    sinks.configure(0.25, 64 * 1024)
    loop = FakeLoop()
    flusher = sinks.start_flusher(loop)
    path = tmp_path / "e.log"
    sinks.sink_for(SinkKind.FILE, str(path)).write("tick\n")
    delay, cb = loop.calls[-1]
    assert delay == 0.25
    cb()  # type: ignore[operator]
    assert path.read_text() == "tick\n"
    assert len(loop.calls) == 2  # re-armed
    sinks.sink_for(SinkKind.FILE, str(path)).write("last\n")
    flusher.cancel()  # shutdown: a last flush
    assert path.read_text() == "tick\nlast\n"

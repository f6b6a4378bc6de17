"""The connection manager's access log hooks (http/conn_manager.py -> observe/access_log_emit.py),
driven socket-free: one line per stream with the response's code, flags and byte counts, a stream
reset before its response logged with DC and code 0, and no log state at all without access logs."""

from __future__ import annotations

from pathlib import Path

from sidecar.model.access_log import AccessLog, SinkKind
from sidecar.observe import access_log_sink
from sidecar.observe.access_log import TextFormatter
from tests.unit.http.h1harness import DIRECT_BODY, Wire, runtime

FMT = (
    "%REQ(:METHOD)% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER% "
    "%PROTOCOL% %DOWNSTREAM_REMOTE_ADDRESS%\n"
)


def _log(path: Path) -> tuple[AccessLog, ...]:
    return (AccessLog("t", SinkKind.FILE, TextFormatter(FMT), FMT, str(path)),)


def _lines(path: Path) -> list[str]:
    access_log_sink.flush_all()
    return path.read_text().splitlines() if path.exists() else []


def test_direct_response_and_upstream_lines(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    rt, up = runtime("direct", access_log=_log(log))
    Wire(rt, up).feed(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    rt2, up2 = runtime("upstream", access_log=_log(log))
    Wire(rt2, up2).feed(b"POST /y HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
    lines = _lines(log)
    assert lines[0] == f"GET 200 - 0 {len(DIRECT_BODY)} - HTTP/1.1 10.1.2.3:40000"
    method, code, flags, rx, tx, cluster, proto, _ = lines[1].split()
    assert (method, code, flags, rx, cluster, proto) == ("POST", "200", "-", "4", "svc", "HTTP/1.1")
    assert int(tx) > 0  # the fake upstream echoes the request back


def test_downstream_reset_before_the_response_is_dc(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    rt, up = runtime("upstream", access_log=_log(log))
    w = Wire(rt, up)
    w.conn.data_received(b"POST /y HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    w.conn.connection_lost(None)  # before the request (and so the response) was complete
    (line,) = _lines(log)
    assert line.split()[:6] == ["POST", "0", "DC", "3", "0", "svc"]


def test_no_access_logs_no_log_state() -> None:
    rt, up = runtime("upstream")
    assert rt.access_logs is None
    w = Wire(rt, up)
    w.conn.data_received(b"POST /y HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    stream = w.conn.active
    assert stream is not None and stream.alog is None

"""config.accesslog.v3.AccessLogFilter evaluation: whether one finished request / connection is logged.

Pure, over a LogRecord (observe/access_log.py) and the model's filter dataclasses.  Semantics are
Envoy's access_log_impl.cc: status_code and duration compare with EQ/GE/LE/NE (the runtime_key
never overrides default_value here: sidecar has no runtime layer), response_flag passes when any
listed flag (any flag at all when none are listed) is set, header matches the request headers (a
TCP connection has none), not_health_check passes unless the request was answered by the health
check filter (sidecar has none, so it always passes), traceable passes only for a request whose
tracing decision was ServiceForced (TraceableRequestFilter: traced && reason == ServiceForced; the
HCM decides only when it has `tracing`)."""

from __future__ import annotations

from sidecar.model.access_log import (
    AccessLogFilter,
    AndFilter,
    DurationFilter,
    HeaderFilter,
    NotHealthCheckFilter,
    Op,
    OrFilter,
    ResponseFlagFilter,
    StatusCodeFilter,
    TraceableFilter,
)
from sidecar.observe.access_log import LogRecord


def _compare(op: Op, value: int, limit: int) -> bool:
    if op is Op.EQ:
        return value == limit
    if op is Op.GE:
        return value >= limit
    if op is Op.LE:
        return value <= limit
    return value != limit


class _NoHeaders:
    """The request view of a TCP connection (Envoy's empty header map)."""

    def header(self, name: str) -> str | None:
        return None


_NO_HEADERS = _NoHeaders()


def passes(f: AccessLogFilter, rec: LogRecord) -> bool:
    t = type(f)
    if t is StatusCodeFilter:
        assert isinstance(f, StatusCodeFilter)
        return _compare(f.op, rec.response_code, f.value)
    if t is DurationFilter:
        assert isinstance(f, DurationFilter)
        if rec.duration is None:
            return False
        return _compare(f.op, int(rec.duration * 1000), f.value)
    if t is ResponseFlagFilter:
        assert isinstance(f, ResponseFlagFilter)
        flags = rec.response_flags
        if not flags:
            return False
        return not f.flags or any(x in f.flags for x in flags)
    if t is NotHealthCheckFilter:
        return not rec.is_health_check
    if t is TraceableFilter:
        return rec.trace_forced
    if t is HeaderFilter:
        assert isinstance(f, HeaderFilter)
        view = rec.request_headers if hasattr(rec.request_headers, "header") else _NO_HEADERS
        return f.matcher.matches(view, "")  # type: ignore[arg-type]
    if t is AndFilter:
        assert isinstance(f, AndFilter)
        return all(passes(x, rec) for x in f.filters)
    assert isinstance(f, OrFilter)
    return any(passes(x, rec) for x in f.filters)

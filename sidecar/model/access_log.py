"""Access logs (config.accesslog.v3.AccessLog) as HttpConnectionManager.access_log and
TcpProxy.access_log carry them: a sink, a compiled format and an optional filter.

The format is compiled at translate time (sidecar.observe.access_log); the filters are evaluated by
sidecar.observe.access_log_filter; the sinks are opened per process by
sidecar.observe.access_log_sink."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from sidecar.observe.access_log import Formatter
    from sidecar.routing.matchers import HeaderMatcher


class Op(Enum):
    """config.accesslog.v3.ComparisonFilter.Op."""

    EQ = "EQ"
    GE = "GE"
    LE = "LE"
    NE = "NE"


@dataclass(frozen=True, slots=True)
class StatusCodeFilter:
    op: Op
    value: int


@dataclass(frozen=True, slots=True)
class DurationFilter:
    """Compares the request's total duration in milliseconds."""

    op: Op
    value: int


@dataclass(frozen=True, slots=True)
class NotHealthCheckFilter:
    pass


@dataclass(frozen=True, slots=True)
class TraceableFilter:
    """Only requests whose tracing decision was ServiceForced (x-envoy-force-trace with HCM tracing)."""


@dataclass(frozen=True, slots=True)
class ResponseFlagFilter:
    """Any of `flags` set (empty: any flag at all)."""

    flags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class HeaderFilter:
    matcher: HeaderMatcher


@dataclass(frozen=True, slots=True)
class AndFilter:
    filters: tuple[AccessLogFilter, ...]


@dataclass(frozen=True, slots=True)
class OrFilter:
    filters: tuple[AccessLogFilter, ...]


AccessLogFilter = Union[  # noqa: UP007 (a forward-referencing alias)
    StatusCodeFilter,
    DurationFilter,
    NotHealthCheckFilter,
    TraceableFilter,
    ResponseFlagFilter,
    HeaderFilter,
    AndFilter,
    OrFilter,
]


class SinkKind(Enum):
    FILE = "envoy.access_loggers.file"
    STDOUT = "envoy.access_loggers.stdout"
    STDERR = "envoy.access_loggers.stderr"


@dataclass(frozen=True, slots=True)
class AccessLog:
    """One access_log entry: where lines go (`path` for FILE; /dev/stdout and /dev/stderr too), how
    they look, and which requests / connections get one."""

    name: str
    sink: SinkKind
    formatter: Formatter = field(compare=False)
    # The format's source text, or the JSON of json_format (for equality and config_dump).
    format_source: str = ""
    path: str = ""
    filter: AccessLogFilter | None = None

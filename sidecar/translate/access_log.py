"""config.accesslog.v3.AccessLog (HttpConnectionManager.access_log, TcpProxy.access_log) -> model.

Sinks: envoy.access_loggers.file (FileAccessLog: path plus log_format or the deprecated format /
json_format / typed_json_format), envoy.access_loggers.stdout and .stderr (StdoutAccessLog /
StderrAccessLog: log_format).  Found by typed_config type, as Envoy finds them.  The format string
is compiled here (sidecar.observe.access_log), so a bad command is a NACK naming the field, as
Envoy's "Not supported field in StreamInfo: X".  Filters: status_code, duration, not_health_check,
traceable, response_flag, header, and / or; the others (runtime, grpc_status, metadata, log_type,
extension) are refused by path."""

from __future__ import annotations

from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import substitution_format_string_pb2 as sfs_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from sidecar.model.access_log import (
    AccessLog,
    AccessLogFilter,
    AndFilter,
    DurationFilter,
    HeaderFilter,
    NotHealthCheckFilter,
    Op,
    OrFilter,
    ResponseFlagFilter,
    SinkKind,
    StatusCodeFilter,
    TraceableFilter,
)
from sidecar.observe.access_log import (
    DEFAULT_FORMAT,
    FLAG_ORDER,
    FormatError,
    Formatter,
    JsonFormatter,
    TextFormatter,
)
from sidecar.translate.common import enum_name, typed_config
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields
from sidecar.translate.route_match import translate_header_matcher


def translate_access_logs(logs: Any, path: str) -> tuple[AccessLog, ...]:
    """A repeated AccessLog field (`path` names it, e.g. `...typed_config.access_log`)."""
    return tuple(_access_log(a, f"{path}[{i}]") for i, a in enumerate(logs))


def _access_log(pb: accesslog_pb2.AccessLog, path: str) -> AccessLog:
    check_fields(pb, path, handled=("name", "filter", "typed_config"))
    if not pb.HasField("typed_config"):
        raise ConfigError(f"{path}.typed_config", f"Didn't find a registered implementation for '{pb.name}'")
    tp = f"{path}.typed_config"
    msg = typed_config(pb.typed_config, tp)
    flt = _filter(pb.filter, f"{path}.filter") if pb.HasField("filter") else None
    if isinstance(msg, file_pb2.FileAccessLog):
        check_fields(msg, tp, handled=("path", "format", "json_format", "typed_json_format", "log_format"))
        if not msg.path:
            raise ConfigError(f"{tp}.path", "value length must be at least 1 characters")
        formatter, source = _file_format(msg, tp)
        return AccessLog(pb.name, SinkKind.FILE, formatter, source, msg.path, flt)
    if isinstance(msg, (stream_pb2.StdoutAccessLog, stream_pb2.StderrAccessLog)):
        check_fields(msg, tp, handled=("log_format",))
        kind = SinkKind.STDOUT if isinstance(msg, stream_pb2.StdoutAccessLog) else SinkKind.STDERR
        if msg.HasField("log_format"):
            formatter, source = _substitution(msg.log_format, f"{tp}.log_format")
        else:
            formatter, source = _text(DEFAULT_FORMAT, tp), DEFAULT_FORMAT
        return AccessLog(pb.name, kind, formatter, source, "", flt)
    kind_name = msg.DESCRIPTOR.full_name
    raise ConfigError(tp, f"access logger '{pb.name}' of type '{kind_name}' is not supported by sidecar yet")


def _text(fmt: str, path: str, omit_empty: bool = False) -> TextFormatter:
    try:
        return TextFormatter(fmt, omit_empty)
    except (FormatError, ValueError) as exc:
        raise ConfigError(path, str(exc)) from None


def _json(
    struct: Struct, path: str, omit_empty: bool = False, typed: bool = True
) -> tuple[JsonFormatter, str]:
    value = json_format.MessageToDict(struct)
    try:
        formatter = JsonFormatter(value, omit_empty, typed)
    except (FormatError, ValueError) as exc:
        raise ConfigError(path, str(exc)) from None
    return formatter, json_format.MessageToJson(struct, sort_keys=True, indent=None)


def _file_format(msg: file_pb2.FileAccessLog, path: str) -> tuple[Formatter, str]:
    which = msg.WhichOneof("access_log_format")
    if which == "log_format":
        return _substitution(msg.log_format, f"{path}.log_format")
    if which == "format":
        fmt = msg.format or DEFAULT_FORMAT  # an empty format string means the default (Envoy)
        return _text(fmt, f"{path}.format"), fmt
    if which == "json_format":
        # The deprecated json_format renders every value as a string; typed_json_format keeps types.
        return _json(msg.json_format, f"{path}.json_format", typed=False)
    if which == "typed_json_format":
        return _json(msg.typed_json_format, f"{path}.typed_json_format")
    return _text(DEFAULT_FORMAT, path), DEFAULT_FORMAT


def _substitution(pb: sfs_pb2.SubstitutionFormatString, path: str) -> tuple[Formatter, str]:
    check_fields(
        pb,
        path,
        handled=(
            "text_format",
            "json_format",
            "text_format_source",
            "omit_empty_values",
            "json_format_options",
        ),
        # content_type only matters to local_reply_config bodies, never to a log line.
        ignored=("content_type",),
    )
    omit = pb.omit_empty_values
    if pb.HasField("json_format_options"):
        # sort_properties: our JSON lines are always sorted.
        check_fields(pb.json_format_options, f"{path}.json_format_options", handled=("sort_properties",))
    which = pb.WhichOneof("format")
    if which == "json_format":
        return _json(pb.json_format, f"{path}.json_format", omit)
    if which == "text_format_source":
        ds = pb.text_format_source
        dp = f"{path}.text_format_source"
        check_fields(ds, dp, handled=("inline_string", "inline_bytes"))
        spec = ds.WhichOneof("specifier")
        text = ds.inline_string if spec == "inline_string" else ds.inline_bytes.decode("utf-8", "replace")
        return _text(text, f"{dp}.{spec or 'inline_string'}", omit), text
    if which == "text_format":
        return _text(pb.text_format, f"{path}.text_format", omit), pb.text_format
    raise ConfigError(path, 'field: "format", reason: is required')


_OPS = {"EQ": Op.EQ, "GE": Op.GE, "LE": Op.LE, "NE": Op.NE}
_REFUSED = ("runtime_filter", "grpc_status_filter", "metadata_filter", "log_type_filter", "extension_filter")


def _comparison(pb: accesslog_pb2.ComparisonFilter, path: str) -> tuple[Op, int]:
    check_fields(pb, path, handled=("op", "value"))
    if not pb.HasField("value"):
        raise ConfigError(f"{path}.value", "value is required")
    check_fields(pb.value, f"{path}.value", handled=("default_value", "runtime_key"))
    # runtime_key: sidecar has no runtime layer, so the default_value always applies (as in an
    # Envoy whose runtime does not set the key).
    return _OPS[enum_name(pb, "op", path)], pb.value.default_value


def _filter(pb: accesslog_pb2.AccessLogFilter, path: str) -> AccessLogFilter:
    which = pb.WhichOneof("filter_specifier")
    if which is None:
        raise ConfigError(path, 'field: "filter_specifier", reason: is required')
    fp = f"{path}.{which}"
    if which in _REFUSED:
        raise ConfigError(fp, "field is not supported by sidecar yet")
    if which == "status_code_filter":
        check_fields(pb.status_code_filter, fp, handled=("comparison",))
        op, value = _comparison(pb.status_code_filter.comparison, f"{fp}.comparison")
        return StatusCodeFilter(op, value)
    if which == "duration_filter":
        check_fields(pb.duration_filter, fp, handled=("comparison",))
        op, value = _comparison(pb.duration_filter.comparison, f"{fp}.comparison")
        return DurationFilter(op, value)
    if which == "not_health_check_filter":
        return NotHealthCheckFilter()
    if which == "traceable_filter":
        return TraceableFilter()
    if which == "response_flag_filter":
        check_fields(pb.response_flag_filter, fp, handled=("flags",))
        for i, flag in enumerate(pb.response_flag_filter.flags):
            if flag not in FLAG_ORDER:
                raise ConfigError(f"{fp}.flags[{i}]", f"value must be in list {list(FLAG_ORDER)}")
        return ResponseFlagFilter(frozenset(pb.response_flag_filter.flags))
    if which == "header_filter":
        check_fields(pb.header_filter, fp, handled=("header",))
        return HeaderFilter(translate_header_matcher(pb.header_filter.header, f"{fp}.header"))
    sub = pb.and_filter if which == "and_filter" else pb.or_filter
    check_fields(sub, fp, handled=("filters",))
    if len(sub.filters) < 2:
        raise ConfigError(f"{fp}.filters", "value must contain at least 2 item(s)")
    parts = tuple(_filter(f, f"{fp}.filters[{i}]") for i, f in enumerate(sub.filters))
    return AndFilter(parts) if which == "and_filter" else OrFilter(parts)

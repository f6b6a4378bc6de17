"""translate/access_log.py through translate_listener: HttpConnectionManager.access_log and
TcpProxy.access_log become model AccessLogs (sink, compiled format, filter); what sidecar does not
implement, and what Envoy refuses, is refused with the field path."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.model.access_log import (
    AccessLog,
    AndFilter,
    HeaderFilter,
    Op,
    ResponseFlagFilter,
    SinkKind,
    StatusCodeFilter,
    TraceableFilter,
)
from sidecar.model.listener import HttpConnectionManager, TcpProxy
from sidecar.observe.access_log import DEFAULT_FORMAT, JsonFormatter, LogRecord, TextFormatter
from sidecar.translate.errors import ConfigError
from sidecar.translate.lds import translate_listener
from tests.unit.translate.test_lds import TCP_TYPE, F, P, hcm, listener, listener_pb

FILE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"


def file_log(**fields: Any) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {"@type": FILE, "path": "/dev/stdout", **fields},
    }


def hcm_logs(*logs: dict[str, Any]) -> tuple[AccessLog, ...]:
    f = translate_listener(listener_pb(listener(hcm(access_log=list(logs)))), P).filter_chains[0].filters[0]
    assert isinstance(f, HttpConnectionManager)
    return f.access_log


def refused(*logs: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        hcm_logs(*logs)
    return e.value


def test_no_access_log_by_default() -> None:
    assert hcm_logs() == ()


def test_file_log_without_format_uses_envoys_default() -> None:
    (log,) = hcm_logs(file_log())
    assert (log.name, log.sink, log.path, log.filter) == (
        "envoy.access_loggers.file",
        SinkKind.FILE,
        "/dev/stdout",
        None,
    )
    assert isinstance(log.formatter, TextFormatter) and log.formatter.source == DEFAULT_FORMAT


def test_formats_of_every_kind() -> None:
    logs = hcm_logs(
        file_log(log_format={"text_format_source": {"inline_string": "%RESPONSE_CODE%\n"}}),
        file_log(log_format={"text_format": "%PROTOCOL%\n", "omit_empty_values": True}),
        file_log(format="%BYTES_SENT%\n"),
        file_log(json_format={"code": "%RESPONSE_CODE%"}),
        file_log(typed_json_format={"code": "%RESPONSE_CODE%"}),
        {
            "name": "o",
            "typed_config": {"@type": STDOUT, "log_format": {"json_format": {"c": "%RESPONSE_CODE%"}}},
        },
        {"name": "e", "typed_config": {"@type": STDERR}},
    )
    rec = LogRecord(0)
    rec.response_code = 200
    assert [log.formatter.render(rec) for log in logs] == [
        "200\n",
        "\n",  # omit_empty_values: no "-"
        "0\n",
        '{"code":"200"}\n',  # the deprecated json_format: every value a string
        '{"code":200}\n',
        '{"c":200}\n',
        logs[6].formatter.render(rec),
    ]
    assert [log.sink for log in logs[5:]] == [SinkKind.STDOUT, SinkKind.STDERR]
    assert isinstance(logs[5].formatter, JsonFormatter)


def test_filters_translate() -> None:
    (log,) = hcm_logs(
        {
            **file_log(),
            "filter": {
                "and_filter": {
                    "filters": [
                        {
                            "status_code_filter": {
                                "comparison": {
                                    "op": "GE",
                                    "value": {"default_value": 400, "runtime_key": "k"},
                                }
                            }
                        },
                        {"response_flag_filter": {"flags": ["UH", "NR"]}},
                        {"header_filter": {"header": {"name": "x-log", "present_match": True}}},
                        {"traceable_filter": {}},
                    ]
                }
            },
        }
    )
    f = log.filter
    assert isinstance(f, AndFilter)
    assert f.filters[0] == StatusCodeFilter(Op.GE, 400)
    assert f.filters[1] == ResponseFlagFilter(frozenset({"UH", "NR"}))
    assert isinstance(f.filters[2], HeaderFilter) and f.filters[2].matcher.name == "x-log"
    assert f.filters[3] == TraceableFilter()


@pytest.mark.parametrize(
    ("log", "path", "reason"),
    [
        (
            file_log(format="%FOO%"),
            f"{F}.access_log[0].typed_config.format",
            "Not supported field in StreamInfo: FOO",
        ),
        (
            file_log(log_format={"text_format_source": {"inline_string": "%REQ%"}}),
            f"{F}.access_log[0].typed_config.log_format.text_format_source.inline_string",
            "REQ requires parameters",
        ),
        (
            file_log(log_format={"json_format": {"a": {"b": "%DURATION:3%"}}}),
            f"{F}.access_log[0].typed_config.log_format.json_format",
            "does not take any parameters or length",
        ),
        (
            file_log(log_format={"text_format_source": {"filename": "/etc/fmt"}}),
            f"{F}.access_log[0].typed_config.log_format.text_format_source.filename",
            "not supported",
        ),
        (
            file_log(
                log_format={
                    "text_format": "x",
                    "formatters": [{"name": "cel", "typed_config": {"@type": FILE}}],
                }
            ),
            f"{F}.access_log[0].typed_config.log_format.formatters",
            "not supported",
        ),
        (
            {"name": "x", "typed_config": {"@type": FILE}},
            f"{F}.access_log[0].typed_config.path",
            "at least 1",
        ),
        ({"name": "x"}, f"{F}.access_log[0].typed_config", "registered implementation"),
        (
            {**file_log(), "filter": {"runtime_filter": {"runtime_key": "k"}}},
            f"{F}.access_log[0].filter.runtime_filter",
            "not supported",
        ),
        (
            {**file_log(), "filter": {"grpc_status_filter": {}}},
            f"{F}.access_log[0].filter.grpc_status_filter",
            "not supported",
        ),
        (
            {
                **file_log(),
                "filter": {
                    "or_filter": {"filters": [{"not_health_check_filter": {}}, {"metadata_filter": {}}]}
                },
            },
            f"{F}.access_log[0].filter.or_filter.filters[1].metadata_filter",
            "not supported",
        ),
        (
            {**file_log(), "filter": {"response_flag_filter": {"flags": ["UH", "XX"]}}},
            f"{F}.access_log[0].filter.response_flag_filter.flags[1]",
            "value must be in list",
        ),
    ],
)
def test_refusals_name_the_field(log: dict[str, Any], path: str, reason: str) -> None:
    err = refused(file_log(), log)
    assert err.path == path.replace("access_log[0]", "access_log[1]")
    assert reason in err.reason


def test_tcp_proxy_access_log_and_refused_options() -> None:
    tcp: dict[str, Any] = {
        "@type": TCP_TYPE,
        "stat_prefix": "tcp",
        "cluster": "c",
        "access_log": [file_log()],
    }
    f = translate_listener(listener_pb(listener(tcp)), P).filter_chains[0].filters[0]
    assert isinstance(f, TcpProxy) and len(f.access_log) == 1
    tcp["access_log_options"] = {"access_log_flush_interval": "1s"}
    with pytest.raises(ConfigError) as e:
        translate_listener(listener_pb(listener(tcp)), P)
    assert e.value.path == f"{F}.access_log_options"

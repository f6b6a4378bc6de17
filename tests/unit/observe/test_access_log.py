"""The access log formatter (observe/access_log.py, access_log_time.py) and filters
(observe/access_log_filter.py): parsing with Envoy's refusals, rendering a record in text and JSON,
START_TIME specifiers, and that any format string either compiles or raises FormatError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http.events import RequestHead
from sidecar.model.access_log import (
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
from sidecar.observe.access_log import (
    DEFAULT_FORMAT,
    FormatError,
    JsonFormatter,
    LogRecord,
    TextFormatter,
    parse,
)
from sidecar.observe.access_log_filter import passes
from sidecar.observe.access_log_time import compile_start_time, epoch_seconds
from sidecar.routing.matchers import ExactMatcher, HeaderMatcher

T0 = epoch_seconds(2016, 4, 15, 20, 17, 0) * 1_000_000_000 + 310_123_456


class Peer:
    uri_sans = ("spiffe://cluster.local/ns/default/sa/sleep",)
    subject = ""


def record(**kw: object) -> LogRecord:
    rec = LogRecord(T0)
    head = RequestHead(
        b"POST",
        b"/api/v1/locations?x=1",
        b"1.1",
        [(b"user-agent", b"nsq2http"), (b"x-request-id", b"cc21d9b0"), (b"x-forwarded-for", b"10.0.35.28")],
        b"locations",
        True,
    )
    rec.method, rec.path, rec.authority, rec.scheme = head.method, head.path, head.authority, head.scheme
    rec.request_headers = head
    rec.protocol = "HTTP/1.1"
    rec.response_code = 204
    rec.bytes_received = 154
    rec.bytes_sent = 0
    rec.duration = 0.2269
    rec.upstream_host = "10.0.2.1:80"
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


class Headers:
    def __init__(self, **h: str) -> None:
        self.h = {k.replace("_", "-").encode(): v.encode() for k, v in h.items()}

    def get(self, name: bytes) -> bytes | None:
        return self.h.get(name)


def test_default_format_matches_envoys_documented_example() -> None:
    rec = record(response_headers=Headers(x_envoy_upstream_service_time="100"))
    line = TextFormatter(DEFAULT_FORMAT).render(rec)
    assert line == (
        '[2016-04-15T20:17:00.310Z] "POST /api/v1/locations?x=1 HTTP/1.1" 204 - 154 0 226 100 '
        '"10.0.35.28" "nsq2http" "cc21d9b0" "locations" "10.0.2.1:80"\n'
    )


def test_missing_values_print_dash_and_omit_empty_prints_nothing() -> None:
    rec = record(upstream_host=None, duration=None)
    fmt = "%UPSTREAM_HOST% %DURATION% %REQ(X-MISSING)% %RESP(A)% %TRAILER(B)% %ROUTE_NAME%"
    assert TextFormatter(fmt).render(rec) == "- - - - - -"
    assert TextFormatter(fmt, omit_empty=True).render(rec) == "     "


def test_alternative_header_truncation_and_percent_escape() -> None:
    rec = record()
    rec.request_headers.headers.append((b"x-envoy-original-path", b"/orig"))  # type: ignore[union-attr]
    assert TextFormatter("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%").render(rec) == "/orig"
    assert TextFormatter("%REQ(X-NONE?:PATH)%").render(rec) == "/api/v1/locations?x=1"
    assert TextFormatter("%REQ(USER-AGENT):3%|100%%").render(rec) == "nsq|100%"
    assert (
        TextFormatter("%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:SCHEME)%").render(rec) == "POST locations http"
    )


def test_flags_print_in_the_order_they_were_raised() -> None:
    assert TextFormatter("%RESPONSE_FLAGS%").render(record(response_flags=["DI", "UH"])) == "DI,UH"
    assert TextFormatter("%RESPONSE_FLAGS%").render(record(response_flags=None)) == "-"


def test_addresses_without_port_and_peer_identity() -> None:
    rec = record(
        downstream_remote="127.0.0.1:5555",
        downstream_local="[::1]:80",
        peer=Peer(),
        local_uri_sans=("spiffe://a/b", "spiffe://c/d"),
    )
    fmt = (
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% "
        "%DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_PEER_SUBJECT% %DOWNSTREAM_LOCAL_URI_SAN%"
    )
    assert TextFormatter(fmt).render(rec) == (
        "127.0.0.1 ::1 spiffe://cluster.local/ns/default/sa/sleep - spiffe://a/b,spiffe://c/d"
    )


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("", "2016-04-15T20:17:00.310Z"),
        ("%s", "1460751420"),
        ("%s.%3f", "1460751420.310"),
        ("%s.%6f", "1460751420.310123"),
        ("%f", "310123456"),
        ("%s.%9f", "1460751420.310123456"),
        ("%Y/%m/%dT%H:%M:%S %E6S", "2016/04/15T20:17:00 00.310123"),
        ("%%Y %Ez", "%Y +00:00"),
    ],
)
def test_start_time_specifiers(fmt: str, text: str) -> None:
    assert compile_start_time(fmt).render(T0) == text


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("%", "Couldn't find valid command at position 0"),
        ("abc%", "Couldn't find valid command at position 3"),
        ("%%%", "Couldn't find valid command at position 2"),
        ("%FOO%", "Not supported field in StreamInfo: FOO"),
        ("%REQ%", "REQ requires parameters"),
        ("%REQ()%", "REQ requires parameters"),
        ("%REQ(a?b?c)%", "More than 1 alternative header specified in token: a?b?c"),
        ("%REQ(a b)%", "Format string contains invalid characters."),
        ("%START_TIME(%Y%", "Couldn't find valid command at position 0"),
        ("%RESPONSE_CODE:5%", "RESPONSE_CODE does not take any parameters or length"),
        ("%DURATION(x)%", "DURATION does not take any parameters or length"),
        ("%START_TIME:3%", "START_TIME does not allow length to be specified."),
        ("%req(x)%", "Couldn't find valid command at position 0"),
    ],
)
def test_refusals_carry_envoys_messages(fmt: str, message: str) -> None:
    # Each message was read off `envoy --mode validate` (Envoy 1.40).
    with pytest.raises(
        FormatError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")
    ):
        parse(fmt)


@pytest.mark.parametrize(
    "fmt", ["100%%", "%REQ(x):0%", "%START_TIME%%%", "%REQ(X?)%", "%TRAILER(x)%", "%START_TIME()%"]
)
def test_envoy_accepts(fmt: str) -> None:
    TextFormatter(fmt).render(record())


def test_json_keeps_types_nests_and_sorts() -> None:
    f = JsonFormatter(
        {
            "code": "%RESPONSE_CODE%",
            "mixed": "code=%RESPONSE_CODE% host=%ROUTE_NAME%",
            "nested": {"up": "%UPSTREAM_HOST%", "lit": 5.0, "flag": True},
            "none": "%ROUTE_NAME%",
        }
    )
    line = f.render(record())
    assert line.endswith("\n")
    assert line == (
        '{"code":204,"mixed":"code=204 host=-","nested":{"flag":true,"lit":5,"up":"10.0.2.1:80"},"none":null}\n'
    )
    omit = JsonFormatter(
        {"a": "%ROUTE_NAME%", "b": {"c": "%ROUTE_NAME%"}, "d": "%BYTES_SENT%"}, omit_empty=True
    )
    assert json.loads(omit.render(record())) == {"d": 0}
    untyped = JsonFormatter({"code": "%RESPONSE_CODE%"}, typed=False)
    assert json.loads(untyped.render(record())) == {"code": "204"}


@given(st.text(alphabet=st.sampled_from("%()?:AZ_REQSTRT09 aé\n-"), max_size=40))
def test_any_format_compiles_or_raises_format_error(fmt: str) -> None:
    try:
        f = TextFormatter(fmt)
    except FormatError:
        return
    assert isinstance(f.render(record()), str)


@given(st.text(max_size=60))
def test_any_text_compiles_or_raises_format_error(fmt: str) -> None:
    try:
        f = TextFormatter(fmt)
    except FormatError:
        return
    assert isinstance(f.render(record()), str)


@given(st.text(max_size=30))
def test_any_start_time_format_compiles_or_raises_format_error(arg: str) -> None:
    try:
        f = TextFormatter(f"%START_TIME({arg})%")
    except FormatError:
        return
    assert isinstance(f.render(record()), str)


def _hdr(name: str, value: str) -> HeaderMatcher:
    return HeaderMatcher(name, ExactMatcher(value))


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (StatusCodeFilter(Op.GE, 400), False),
        (StatusCodeFilter(Op.LE, 204), True),
        (StatusCodeFilter(Op.NE, 204), False),
        (StatusCodeFilter(Op.EQ, 204), True),
        (DurationFilter(Op.GE, 226), True),
        (DurationFilter(Op.GE, 227), False),
        (NotHealthCheckFilter(), True),
        (TraceableFilter(), False),
        (ResponseFlagFilter(), False),
        (HeaderFilter(_hdr("user-agent", "nsq2http")), True),
        (HeaderFilter(_hdr("user-agent", "curl")), False),
        (AndFilter((StatusCodeFilter(Op.EQ, 204), NotHealthCheckFilter())), True),
        (AndFilter((StatusCodeFilter(Op.EQ, 204), TraceableFilter())), False),
        (OrFilter((TraceableFilter(), StatusCodeFilter(Op.EQ, 204))), True),
    ],
)
def test_filters(flt: object, expected: bool) -> None:
    assert passes(flt, record()) is expected  # type: ignore[arg-type]


def test_response_flag_filter() -> None:
    rec = record(response_flags=["UH"])
    assert passes(ResponseFlagFilter(), rec)
    assert passes(ResponseFlagFilter(frozenset({"UH", "UF"})), rec)
    assert not passes(ResponseFlagFilter(frozenset({"NR"})), rec)


def test_traceable_filter_passes_forced_traces_only() -> None:
    assert passes(TraceableFilter(), record(trace_forced=True))
    assert not passes(TraceableFilter(), record())


def test_header_filter_on_a_tcp_record_sees_no_headers() -> None:
    rec = LogRecord(T0)
    assert not passes(HeaderFilter(_hdr("user-agent", "x")), rec)

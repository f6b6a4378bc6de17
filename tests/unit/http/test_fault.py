"""The fault filter's pure decisions (percentages, header-controlled faults, matching, max_active_faults),
the filter object on a fake stream, and the translation of HTTPFault (filter level and per route)."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http.events import RequestHead
from sidecar.http.filters.base import CONTINUE, STOP
from sidecar.http.filters.fault import (
    BODY,
    FaultFilter,
    FaultRuntime,
    FaultSettings,
    FaultStats,
    Percent,
    abort_status,
    applies,
    delay_ms,
    grpc_status_for_http,
    header_percent,
    is_grpc,
    overflow,
    parse_uint,
)
from sidecar.translate.errors import ConfigError
from sidecar.translate.fault import translate_fault


class Req:
    def __init__(self, **headers: str) -> None:
        self.h = {k.replace("_", "-"): v for k, v in headers.items()}

    def header(self, name: str) -> str | None:
        return self.h.get(name)


NONE = Req()
ALWAYS = Percent(100, 100)


# --- percentages ------------------------------------------------------------------------------------
@pytest.mark.parametrize("denominator", [100, 10_000])
@pytest.mark.parametrize("fraction", [0.0, 0.0001, 0.01, 0.37, 0.5, 0.99, 1.0])
def test_percent_hits_exactly_numerator_of_denominator_draws(denominator: int, fraction: float) -> None:
    n = int(fraction * denominator)
    p = Percent(n, denominator)
    # One draw in the middle of each of the `denominator` equally likely buckets.
    hits = sum(p.hit((k + 0.5) / denominator) for k in range(denominator))
    assert hits == n


@given(
    st.sampled_from([100, 10_000, 1_000_000]),
    st.integers(min_value=0, max_value=2_000_000),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_percent_hit_is_monotonic_and_bounded(denominator: int, numerator: int, rand: float) -> None:
    p = Percent(numerator, denominator)
    if numerator == 0:
        assert not p.hit(rand)
    if numerator >= denominator:
        assert p.hit(rand)  # a numerator above the denominator is 100%
    if p.hit(rand):
        assert Percent(numerator + 1, denominator).hit(rand)
        assert rand < (numerator / denominator) + 1e-9


def test_million_denominator() -> None:
    p = Percent(1, 1_000_000)
    assert p.hit(0.0) and p.hit(0.0000009)
    assert not p.hit(0.000001)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("42", 42), (" 7 ", 7), ("+3", 3), ("-1", None), ("x", None), ("", None), ("1e3", None)],
)
def test_parse_uint(value: str | None, expected: int | None) -> None:
    assert parse_uint(value) == expected


@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=0, max_value=1_000_000))
def test_header_percent_is_capped_by_config(header: int, configured: int) -> None:
    got = header_percent(Percent(configured, 1_000_000), str(header))
    assert got == Percent(min(header, configured), 1_000_000)


def test_header_percent_keeps_config_when_missing_or_bad() -> None:
    p = Percent(30, 10_000)
    assert header_percent(p, None) == p
    assert header_percent(p, "lots") == p
    assert header_percent(p, str(2**33)) == p  # not a uint32


# --- delays and aborts ------------------------------------------------------------------------------
def test_fixed_delay_and_abort() -> None:
    s = FaultSettings(delay=ALWAYS, delay_ms=300, abort=ALWAYS, abort_http=503)
    assert delay_ms(s, NONE, 0.99) == 300
    assert abort_status(s, NONE, 0.99) == (503, None)


def test_zero_percent_never_faults() -> None:
    s = FaultSettings(delay=Percent(0, 100), delay_ms=300, abort=Percent(0, 1_000_000), abort_http=503)
    assert delay_ms(s, NONE, 0.0) == 0
    assert abort_status(s, NONE, 0.0) is None


def test_unconfigured_faults_do_nothing() -> None:
    s = FaultSettings()
    assert s.inert
    assert delay_ms(s, NONE, 0.0) == 0
    assert abort_status(s, NONE, 0.0) is None


def test_grpc_abort_is_http_200() -> None:
    s = FaultSettings(abort=ALWAYS, abort_grpc=14)
    assert abort_status(s, NONE, 0.5) == (200, 14)


HEADERS_IN = Req(
    x_envoy_fault_abort_request="418",
    x_envoy_fault_abort_request_percentage="100",
    x_envoy_fault_delay_request="250",
    x_envoy_fault_delay_request_percentage="100",
)


def test_fault_headers_ignored_unless_configured() -> None:
    s = FaultSettings(delay=Percent(0), delay_ms=300, abort=Percent(0), abort_http=503)
    assert delay_ms(s, HEADERS_IN, 0.0) == 0
    assert abort_status(s, HEADERS_IN, 0.0) is None


def test_header_controlled_faults() -> None:
    s = FaultSettings(delay=ALWAYS, delay_from_header=True, abort=ALWAYS, abort_from_header=True)
    assert delay_ms(s, HEADERS_IN, 0.5) == 250
    assert abort_status(s, HEADERS_IN, 0.5) == (418, None)
    assert delay_ms(s, NONE, 0.0) == 0  # no header: no delay
    assert abort_status(s, NONE, 0.0) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-envoy-fault-abort-request": "199"}, None),
        ({"x-envoy-fault-abort-request": "600"}, None),
        ({"x-envoy-fault-abort-request": "200"}, (200, None)),
        ({"x-envoy-fault-abort-request": "599"}, (599, None)),
        ({"x-envoy-fault-abort-grpc-request": "5"}, (200, 5)),
        ({"x-envoy-fault-abort-request": "900", "x-envoy-fault-abort-grpc-request": "5"}, (200, 5)),
        ({"x-envoy-fault-abort-request": "503", "x-envoy-fault-abort-grpc-request": "5"}, (503, None)),
    ],
)
def test_header_abort_values(headers: dict[str, str], expected: tuple[int, int | None] | None) -> None:
    s = FaultSettings(abort=ALWAYS, abort_from_header=True)
    r = Req()
    r.h = headers
    assert abort_status(s, r, 0.0) == expected


def test_header_percentage_can_only_lower_the_configured_one() -> None:
    s = FaultSettings(abort=Percent(50, 100), abort_from_header=True)
    r = Req(x_envoy_fault_abort_request="503", x_envoy_fault_abort_request_percentage="100")
    assert abort_status(s, r, 0.6) is None  # still 50%
    r.h["x-envoy-fault-abort-request-percentage"] = "10"
    assert abort_status(s, r, 0.2) is None
    assert abort_status(s, r, 0.05) == (503, None)


# --- matching ---------------------------------------------------------------------------------------
class HeaderIs:
    def __init__(self, name: str, value: str) -> None:
        self.name, self.value = name, value

    def matches(self, request: Any, path: str) -> bool:
        return bool(request.header(self.name) == self.value)


def test_applies_upstream_cluster_nodes_and_headers() -> None:
    assert applies(FaultSettings(), NONE, None)
    s = FaultSettings(upstream_cluster="c1")
    assert applies(s, NONE, "c1") and not applies(s, NONE, "c2") and not applies(s, NONE, None)
    s = FaultSettings(downstream_nodes=frozenset({"n1"}))
    assert applies(s, Req(x_envoy_downstream_service_node="n1"), None)
    assert not applies(s, Req(x_envoy_downstream_service_node="n2"), None)
    assert not applies(s, NONE, None)
    s = FaultSettings(headers=(HeaderIs("x-a", "1"), HeaderIs("x-b", "2")))
    assert applies(s, Req(x_a="1", x_b="2"), None)
    assert not applies(s, Req(x_a="1"), None)


def test_overflow() -> None:
    assert not overflow(FaultSettings(), 10**9)
    s = FaultSettings(max_active_faults=2)
    assert not overflow(s, 1) and overflow(s, 2) and overflow(s, 3)
    assert overflow(FaultSettings(max_active_faults=0), 0)


def test_grpc_helpers() -> None:
    assert [grpc_status_for_http(c) for c in (400, 401, 403, 404, 429, 502, 503, 504, 500)] == [
        13, 16, 7, 12, 14, 14, 14, 14, 2,
    ]
    assert is_grpc(Req(content_type="application/grpc"))
    assert is_grpc(Req(content_type="application/grpc+proto"))
    assert not is_grpc(Req(content_type="application/grpc-web"))
    assert not is_grpc(NONE)


# --- the filter on a fake stream --------------------------------------------------------------------
class FakeTimer:
    def __init__(self, delay: float, fn: Any, args: tuple[Any, ...]) -> None:
        self.delay, self.fn, self.args, self.cancelled = delay, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.timers: list[FakeTimer] = []

    def call_later(self, delay: float, fn: Any, *args: Any) -> FakeTimer:
        t = FakeTimer(delay, fn, args)
        self.timers.append(t)
        return t


class FakeRt:
    def __init__(self) -> None:
        self.loop = FakeLoop()


class FakeStream:
    def __init__(self, head: RequestHead) -> None:
        self.rt = FakeRt()
        self.head = head
        self.route = None
        self.replies: list[tuple[int, bytes | None, Any]] = []
        self.resumed: list[tuple[bool, list[tuple[bytes, bool]]]] = []
        self.flags: list[str] = []

    def flag(self, code: str) -> None:
        self.flags.append(code)

    def local_reply(self, status: int, body: bytes | None, extra: Any = None) -> None:
        self.replies.append((status, body, extra))

    def resume_request(self, after: Any, end: bool, held: list[tuple[bytes, bool]]) -> None:
        self.resumed.append((end, held))


def _head(*headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(b"GET", b"/", b"1.1", list(headers), True, b"h")


def _filter(settings: FaultSettings, draws: list[float]) -> tuple[FaultFilter, FaultStats]:
    stats = FaultStats(None, "")
    it = iter(draws)
    return FaultFilter(FaultRuntime("envoy.filters.http.fault", settings, stats, lambda: next(it))), stats


def test_filter_delays_holds_body_then_resumes() -> None:
    f, stats = _filter(FaultSettings(delay=ALWAYS, delay_ms=300, abort=Percent(0)), [0.1, 0.1])
    s = FakeStream(_head())
    assert f.on_request_head(s, s.head, False) == STOP  # type: ignore[arg-type]
    (timer,) = s.rt.loop.timers
    assert timer.delay == pytest.approx(0.3)
    assert (stats.delays_injected, stats.active_faults) == (1, 1)
    assert f.on_request_body(s, b"ab", False) == STOP  # type: ignore[arg-type]
    assert f.on_request_body(s, b"", True) == STOP  # type: ignore[arg-type]
    timer.fn(*timer.args)
    assert s.resumed == [(False, [(b"ab", False), (b"", True)])]
    assert stats.active_faults == 0 and s.replies == []
    f.on_destroy(s)  # type: ignore[arg-type]
    assert stats.active_faults == 0


def test_filter_delay_then_abort_counts_one_active_fault() -> None:
    f, stats = _filter(FaultSettings(delay=ALWAYS, delay_ms=10, abort=ALWAYS, abort_http=502), [0.0, 0.0])
    s = FakeStream(_head())
    assert f.on_request_head(s, s.head, True) == STOP  # type: ignore[arg-type]
    timer = s.rt.loop.timers[0]
    timer.fn(*timer.args)
    assert s.replies == [(502, BODY, None)]
    assert (stats.delays_injected, stats.aborts_injected, stats.active_faults) == (1, 1, 1)
    f.on_destroy(s)  # type: ignore[arg-type]
    assert stats.active_faults == 0


def test_filter_reset_cancels_the_delay() -> None:
    f, stats = _filter(FaultSettings(delay=ALWAYS, delay_ms=10), [0.0])
    s = FakeStream(_head())
    f.on_request_head(s, s.head, True)  # type: ignore[arg-type]
    f.on_destroy(s)  # type: ignore[arg-type]
    assert s.rt.loop.timers[0].cancelled and stats.active_faults == 0
    f.on_destroy(s)  # type: ignore[arg-type]  # idempotent
    assert stats.active_faults == 0


def test_filter_grpc_abort_reply() -> None:
    f, _ = _filter(FaultSettings(abort=ALWAYS, abort_http=503), [0.0])
    s = FakeStream(_head((b"content-type", b"application/grpc")))
    assert f.on_request_head(s, s.head, True) == STOP  # type: ignore[arg-type]
    assert s.replies == [
        (200, None, [(b"content-type", b"application/grpc"), (b"grpc-status", b"14"), (b"grpc-message", BODY)])
    ]
    assert s.flags == ["FI"]  # Envoy's response flag for an injected abort


def test_max_active_faults_overflow() -> None:
    settings = FaultSettings(delay=ALWAYS, delay_ms=10, max_active_faults=1)
    stats = FaultStats(None, "")
    rt = FaultRuntime("f", settings, stats, lambda: 0.0)
    first, second = FaultFilter(rt), FaultFilter(rt)
    s1, s2 = FakeStream(_head()), FakeStream(_head())
    assert first.on_request_head(s1, s1.head, True) == STOP  # type: ignore[arg-type]
    assert second.on_request_head(s2, s2.head, True) == CONTINUE  # type: ignore[arg-type]
    assert (stats.active_faults, stats.faults_overflow, stats.delays_injected) == (1, 1, 1)
    first.on_destroy(s1)  # type: ignore[arg-type]
    third, s3 = FaultFilter(rt), FakeStream(_head())
    assert third.on_request_head(s3, s3.head, True) == STOP  # type: ignore[arg-type]


def test_inert_filter_passes_through() -> None:
    f, _ = _filter(FaultSettings(), [])
    s = FakeStream(_head())
    assert f.on_request_head(s, s.head, True) == CONTINUE  # type: ignore[arg-type]
    assert f.on_request_body(s, b"x", True) == CONTINUE  # type: ignore[arg-type]


# --- translation ------------------------------------------------------------------------------------
def _fault(d: dict[str, Any]) -> FaultSettings:
    pb = fault_pb2.HTTPFault()
    json_format.ParseDict(d, pb)
    return translate_fault(pb, "f")


def test_translate_percentages_and_defaults() -> None:
    s = _fault({"abort": {"http_status": 503}, "delay": {"fixed_delay": "0.25s"}})
    assert s.abort == Percent(0, 100) and s.delay == Percent(0, 100)  # unset percentage: never
    assert (s.abort_http, s.delay_ms, s.max_active_faults) == (503, 250, None)
    for name, d in (("HUNDRED", 100), ("TEN_THOUSAND", 10_000), ("MILLION", 1_000_000)):
        s = _fault({"abort": {"grpc_status": 4, "percentage": {"numerator": 7, "denominator": name}}})
        assert s.abort == Percent(7, d) and s.abort_grpc == 4


def test_translate_header_faults_and_limits() -> None:
    s = _fault(
        {
            "abort": {"header_abort": {}, "percentage": {"numerator": 100}},
            "delay": {"header_delay": {}, "percentage": {"numerator": 100}},
            "max_active_faults": 3,
            "downstream_nodes": ["n"],
            "upstream_cluster": "c",
            "headers": [{"name": "x-f", "present_match": True}],
        }
    )
    assert s.abort_from_header and s.delay_from_header
    assert (s.max_active_faults, s.downstream_nodes, s.upstream_cluster) == (3, frozenset({"n"}), "c")
    assert len(s.headers) == 1


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"abort": {"http_status": 700}}, "f.abort.http_status"),
        ({"abort": {"http_status": 199}}, "f.abort.http_status"),
        ({"abort": {"percentage": {"numerator": 1}}}, "f.abort"),
        ({"delay": {"percentage": {"numerator": 1}}}, "f.delay"),
        ({"response_rate_limit": {"fixed_limit": {"limit_kbps": 1}}}, "f.response_rate_limit"),
    ],
)
def test_translate_refusals(config: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as e:
        _fault(config)
    assert e.value.path == path


# --- lds / rds: where HTTPFault may appear ----------------------------------------------------------
FAULT_ANY = {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}
ROUTER_ANY = {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}


def _http_filters(filters: list[dict[str, Any]]) -> Any:
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    from sidecar.translate.lds import _http_filters as translate_filters

    pb = hcm_pb2.HttpConnectionManager()
    json_format.ParseDict({"stat_prefix": "x", "http_filters": filters}, pb)
    return translate_filters(pb, "hcm")


def test_lds_accepts_fault_before_router() -> None:
    fault = {**FAULT_ANY, "abort": {"http_status": 503, "percentage": {"numerator": 100}}}
    got = _http_filters(
        [{"name": "envoy.filters.http.fault", "typed_config": fault}, {"name": "r", "typed_config": ROUTER_ANY}]
    )
    assert [f.type_url.rsplit(".", 1)[-1] for f in got] == ["HTTPFault", "Router"]
    assert got[0].config == FaultSettings(abort=Percent(100, 100), abort_http=503)


@pytest.mark.parametrize(
    ("filters", "path"),
    [
        (
            [{"name": "r", "typed_config": ROUTER_ANY}, {"name": "f", "typed_config": FAULT_ANY}],
            "hcm.http_filters[0]",
        ),
        (
            [{"name": "f", "typed_config": FAULT_ANY, "disabled": True}, {"name": "r", "typed_config": ROUTER_ANY}],
            "hcm.http_filters[0].disabled",
        ),
        (
            [{"name": "f", "typed_config": {**FAULT_ANY, "abort": {}}}, {"name": "r", "typed_config": ROUTER_ANY}],
            "hcm.http_filters[0].typed_config.abort",
        ),
    ],
    ids=["after-router", "disabled", "bad-config"],
)
def test_lds_refusals(filters: list[dict[str, Any]], path: str) -> None:
    with pytest.raises(ConfigError) as e:
        _http_filters(filters)
    assert e.value.path == path


def test_rds_translates_per_route_fault_config_only() -> None:
    from envoy.config.route.v3 import route_components_pb2 as rc_pb2

    from sidecar.translate.rds import translate_route

    pb = rc_pb2.Route()
    other = {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    json_format.ParseDict(
        {
            "match": {"prefix": "/"},
            "route": {"cluster": "c"},
            "typed_per_filter_config": {
                "envoy.filters.http.fault": {**FAULT_ANY, "abort": {"grpc_status": 3, "percentage": {"numerator": 1}}},
                "zz.other": other,
            },
        },
        pb,
    )
    route = translate_route(pb, "r")
    (name, fault), (other_name, raw) = route.typed_per_filter_config
    assert (name, other_name) == ("envoy.filters.http.fault", "zz.other")
    assert fault == FaultSettings(abort=Percent(1, 100), abort_grpc=3)
    assert getattr(raw, "type_url", "").endswith("Router")  # other filters' configs stay as they were
    bad = rc_pb2.Route()
    json_format.ParseDict(
        {
            "match": {"prefix": "/"},
            "route": {"cluster": "c"},
            "typed_per_filter_config": {"f": {**FAULT_ANY, "abort": {"http_status": 100}}},
        },
        bad,
    )
    with pytest.raises(ConfigError) as e:
        translate_route(bad, "r")
    assert e.value.path == "r.typed_per_filter_config[f].abort.http_status"

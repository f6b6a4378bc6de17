"""The pure cores behind HCM tracing (x-request-id trace reason, decorator header), max_grpc_timeout
and upgrade decisions: case tables, pinned against Envoy 1.40 by tests/differential/test_tracing.py,
test_grpc_timeouts.py and test_upgrade.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http import trace_reason, upgrade
from sidecar.http.events import RequestHead
from sidecar.http.grpc_timeouts import global_timeout_ms, grpc_content_type, grpc_timeouts
from sidecar.model.route import Route, RouteAction, RouteMatch
from sidecar.model.tracing import RequestIdExtension, Tracing

ISTIO = Tracing(client_sampling=100, random_sampling=1, overall_sampling=100)
RID = RequestIdExtension()
ID = b"11111111-2222-4333-8444-555555555555"  # 0x11111111 % 10000 == 1153
LOW = b"00000063-2222-4333-8444-555555555555"  # 99 < 100: sampled at 1%


def _nibble(rid: bytes, c: str) -> bytes:
    return rid[:14] + c.encode() + rid[15:]


@pytest.mark.parametrize(
    ("rid", "client", "force", "tracing", "ext", "expected"),
    [
        (ID, False, False, ISTIO, RID, ID),
        (LOW, False, False, ISTIO, RID, _nibble(LOW, "9")),
        (
            b"00000064-2222-4333-8444-555555555555",
            False,
            False,
            ISTIO,
            RID,
            b"00000064-2222-4333-8444-555555555555",
        ),
        (ID, True, False, ISTIO, RID, _nibble(ID, "b")),
        (ID, False, True, ISTIO, RID, _nibble(ID, "a")),
        (_nibble(ID, "9"), True, False, ISTIO, RID, _nibble(ID, "9")),  # already marked: kept
        (_nibble(LOW, "b"), False, False, Tracing(overall_sampling=0), RID, LOW),  # overall: unmarked
        (LOW, False, False, ISTIO, RequestIdExtension(pack_trace_reason=False), LOW),
        (
            b"zzzzzzzz-2222-4333-8444-555555555555",
            True,
            False,
            ISTIO,
            RID,
            b"zzzzzzzz-2222-4333-8444-555555555555",
        ),
        (b"00000000", True, False, ISTIO, RID, b"00000000"),  # not a UUID: nothing to pack into
        (b"", True, False, ISTIO, RID, b""),
    ],
    ids=[
        "unsampled",
        "sampled",
        "just-above",
        "client",
        "forced",
        "marked",
        "overall",
        "no-pack",
        "corrupt",
        "short",
        "none",
    ],
)
def test_trace_reason(
    rid: bytes, client: bool, force: bool, tracing: Tracing, ext: RequestIdExtension, expected: bytes
) -> None:
    assert trace_reason.decide(rid, client, force, tracing, ext, 0.5) == expected


@given(st.binary(max_size=40), st.booleans(), st.booleans(), st.floats(0, 0.999))
def test_trace_reason_changes_at_most_char_14(rid: bytes, client: bool, force: bool, rand: float) -> None:
    out = trace_reason.decide(rid, client, force, ISTIO, RID, rand)
    assert len(out) == len(rid)
    assert [i for i in range(len(rid)) if out[i] != rid[i]] in ([], [14])


def _head(*headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(b"GET", b"/", b"1.1", list(headers), b"h", True)


def test_decorator_ingress_and_egress() -> None:
    head = _head()
    assert trace_reason.decorate(head, ISTIO, "op", True) == b"op"
    assert trace_reason.decorate(head, ISTIO, "op", False) is None
    head = _head((trace_reason.DECORATOR, b"client"))
    assert trace_reason.decorate(head, ISTIO, "op", True) is None  # overridden, and dropped
    assert head.get(trace_reason.DECORATOR) is None
    egress = Tracing(egress=True)
    head = _head((trace_reason.DECORATOR, b"client"))
    assert trace_reason.decorate(head, egress, "op", True) == b""
    assert head.headers == [(trace_reason.DECORATOR, b"op")]
    resp = [(b"a", b"1"), (trace_reason.DECORATOR, b"up")]
    trace_reason.decorate_response(resp, b"")
    assert resp == [(b"a", b"1")]
    trace_reason.decorate_response(resp, b"op")
    assert resp == [(b"a", b"1"), (trace_reason.DECORATOR, b"op")]


@pytest.mark.parametrize(
    ("max_s", "offset", "header", "expected"),
    [
        (0.5, 0.1, b"2S", 500),  # minus the offset, then capped
        (0.5, 0.1, b"300m", 200),
        (0.5, 0.1, None, 500),  # none: the cap
        (0.5, 0.1, b"50m", 50),  # the offset is not below it: not applied
        (0.0, None, None, 0),  # infinite
        (0.0, None, b"400m", 400),
        (0.0, None, b"bogus", 0),
        (0.0, None, b"1H", 3_600_000),
    ],
)
def test_grpc_global_timeout(max_s: float, offset: float | None, header: bytes | None, expected: int) -> None:
    assert global_timeout_ms(max_s, offset, header) == expected


def test_grpc_timeouts_announce_the_per_try_timeout_when_tighter() -> None:
    assert grpc_timeouts(0.0, None, 0.25, b"1S") == (1000, 250, b"250m")
    assert grpc_timeouts(0.0, None, 2.0, b"1S") == (1000, 0, b"1000m")  # per-try not below: dropped
    assert grpc_timeouts(0.0, None, 0.0, None) == (0, 0, None)
    assert grpc_timeouts(0.0, None, 0.3, None) == (0, 300, b"300m")


@pytest.mark.parametrize(
    ("ct", "grpc"),
    [
        (b"application/grpc", True),
        (b"application/grpc+proto", True),
        (b"application/grpc;x", True),
        (b"application/grpc-web", False),
        (b"text/plain", False),
    ],
)
def test_grpc_content_type(ct: bytes, grpc: bool) -> None:
    assert grpc_content_type(ct) is grpc


def test_route_action_grpc_timeouts_flag() -> None:
    from sidecar.model.route import MaxStreamDuration

    assert RouteAction(cluster="c", max_grpc_timeout=0.0).grpc_timeouts
    assert not RouteAction(cluster="c").grpc_timeouts
    assert not RouteAction(
        cluster="c", max_grpc_timeout=1.0, max_stream_duration=MaxStreamDuration()
    ).grpc_timeouts


def _route(*configs: tuple[str, bool]) -> Route:
    from sidecar.routing.matchers import PrefixPathMatcher

    return Route(RouteMatch(PrefixPathMatcher("/")), RouteAction(cluster="c", upgrade_configs=configs))


@pytest.mark.parametrize(
    ("hcm", "route", "expected"),
    [
        (("websocket",), _route(), True),
        ((), _route(), False),
        ((), _route(("websocket", True)), True),  # the route enables what the HCM does not list
        (("websocket",), _route(("websocket", False)), False),  # the route disables it
        (("websocket",), _route(("spdy/3.1", False)), True),
        ((), None, True),  # no route: the router's 404 answers
    ],
)
def test_upgrade_allowed(hcm: tuple[str, ...], route: Route | None, expected: bool) -> None:
    assert upgrade.allowed(b"websocket", hcm, route) is expected


def test_upgrade_headers() -> None:
    original = [(b"host", b"h"), (b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"websocket")]
    assert upgrade.request_headers(original, [(b"host", b"h")]) == original
    resp = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"transfer-encoding", b"chunked")]
    assert upgrade.response_headers(101, resp) == resp[:2]
    assert upgrade.response_headers(400, resp) == []

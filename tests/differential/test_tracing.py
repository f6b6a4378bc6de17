"""HCM tracing, request_id_extension and Route.decorator against Envoy 1.40 (istiod sets all three on
every HTTP listener).  sidecar has no tracer; what it must still do the same is the trace reason
Envoy packs into x-request-id (char 14) when the connection manager has `tracing`:

- an id whose first 8 hex digits mod 10000 fall under random_sampling (1% = 100) gets `9`;
- x-client-trace-id (client_sampling 100%) gets `b` (on the generated id too);
- an id already marked keeps its mark; other ids pass unchanged;
- request_id_extension alone (no tracing) changes nothing;
- Route.decorator: on an Ingress listener the operation goes back in the response's
  x-envoy-decorator-operation (a non-empty request header overrides it and is dropped); on an
  OUTBOUND listener it goes upstream and the response's header is removed; untraced, nothing.

With a Zipkin provider (zipkin listener: trace_id_128bit, shared_span_context default) both add
the B3 headers (http/b3.py): the shapes are compared, the ids being random.  sidecar reports no
span; the collector address is a loopback port nobody listens on.  test_tracing_b3.py covers the
bootstrap-level provider (Istio's), Egress, sampling and shared_span_context false."""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import request

pytestmark = pytest.mark.differential
BOOTSTRAP = "istio_standard.yaml"
UPSTREAMS = ("service1",)
SAMPLED = "00000000-2222-4333-8444-555555555555"  # 0 % 10000 < 100
UNSAMPLED = "11111111-2222-4333-8444-555555555555"  # 0x11111111 % 10000 == 1153


def _upstream_headers(t: Target, listener: str, headers: list[tuple[str, str]]) -> dict[str, object]:
    obs = t.exchange(request("GET", "/trace", host="t.test", headers=headers), listener)
    (up,) = obs.upstream
    rid = up.header("x-request-id") or ""
    names = sorted(
        n for n in up.header_names if n.lower().startswith(("x-b3", "x-envoy-decorator", "traceparent"))
    )
    return {
        "status": obs.response.status,
        # A generated id differs per proxy: its shape and its trace-reason nibble are what count.
        "request-id": rid if rid.startswith(("0000", "1111")) else (len(rid), rid[14:15]),
        "trace-headers": {n: up.header(n) for n in names},
    }


@pytest.mark.parametrize(
    ("headers", "request_id"),
    [
        ([("x-request-id", SAMPLED)], SAMPLED[:14] + "9" + SAMPLED[15:]),
        ([("x-request-id", UNSAMPLED)], UNSAMPLED),
        ([("x-request-id", UNSAMPLED), ("x-client-trace-id", "abc")], UNSAMPLED[:14] + "b" + UNSAMPLED[15:]),
        ([("x-client-trace-id", "abc")], (36, "b")),
        ([("x-request-id", SAMPLED[:14] + "a" + SAMPLED[15:])], SAMPLED[:14] + "a" + SAMPLED[15:]),
        ([("x-request-id", "not-a-uuid")], None),
        (
            [
                ("x-request-id", SAMPLED),
                ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
                ("x-b3-sampled", "1"),
            ],
            SAMPLED[:14] + "9" + SAMPLED[15:],
        ),
    ],
    ids=[
        "random-sampled",
        "not-sampled",
        "client-trace-id",
        "client-generated",
        "already-marked",
        "not-a-uuid",
        "b3-passes-through",
    ],
)
def test_trace_reason_in_request_id(
    diff: Differential, headers: list[tuple[str, str]], request_id: object
) -> None:
    got = diff.run(lambda t: _upstream_headers(t, "istio_port", headers))
    assert got["status"] == 200
    if request_id is not None:
        assert got["request-id"] == request_id
    b3 = {k.lower(): v for k, v in headers if k.startswith("x-b3")}
    assert got["trace-headers"] == b3  # no provider: nothing added, incoming context untouched


@pytest.mark.parametrize("rid", [SAMPLED, UNSAMPLED])
def test_request_id_extension_without_tracing_changes_nothing(diff: Differential, rid: str) -> None:
    got = diff.run(lambda t: _upstream_headers(t, "rid_port", [("x-request-id", rid)]))
    assert got["request-id"] == rid
    generated = diff.run(lambda t: _upstream_headers(t, "rid_port", []))
    assert generated["request-id"] == (36, "4")


def test_zipkin_provider_keeps_the_request_id_behaviour(diff: Differential) -> None:
    got = diff.run(
        lambda t: _upstream_headers(t, "zipkin_listener_port", [("x-request-id", SAMPLED)])["request-id"]
    )
    assert got == SAMPLED[:14] + "9" + SAMPLED[15:]


def _b3_names(t: Target) -> list[str]:
    return sorted(_upstream_headers(t, "zipkin_listener_port", [("x-request-id", SAMPLED)])["trace-headers"])  # type: ignore[arg-type]


def test_zipkin_provider_adds_b3_headers(diff: Differential) -> None:
    names = diff.run(_b3_names)
    assert names == ["x-b3-sampled", "x-b3-spanid", "x-b3-traceid"]


T = "80f198ee56343ba864fe8b2a57d3eff7"
S = "e457b5a2e4d86bd1"
P = "05e3ac9a4f6e3b90"


def _b3_shape(t: Target, headers: list[tuple[str, str]]) -> dict[str, object]:
    """The B3 headers upstream with random ids replaced by their shape (length, hex, whether the
    span id is the trace id's low half, as in a new root)."""
    obs = t.exchange(request("GET", "/trace", host="t.test", headers=headers), "zipkin_listener_port")
    (up,) = obs.upstream
    known = {T, S, P, T[16:]}
    out: dict[str, object] = {}
    for name in ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "b3"):
        value = up.header(name)
        if value is None:
            continue
        parts = value.split("-")
        out[name] = tuple(
            p if p in known or len(p) <= 4 else ("random", len(p), all(c in "0123456789abcdef" for c in p))
            for p in parts
        )
    trace, span = up.header("x-b3-traceid") or "", up.header("x-b3-spanid") or ""
    out["root"] = bool(span) and trace.endswith(span)
    return out


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # Ingress, shared_span_context (the default): the client's span is reused.
        (
            [("x-b3-traceid", T), ("x-b3-spanid", S), ("x-b3-parentspanid", P), ("x-b3-sampled", "1")],
            {"x-b3-traceid": (T,), "x-b3-spanid": (S,), "x-b3-parentspanid": (P,), "x-b3-sampled": ("1",)},
        ),
        # No sampled flag: the decision (x-request-id's reason; SAMPLED is under random_sampling 1%).
        (
            [("x-request-id", SAMPLED), ("x-b3-traceid", T[16:]), ("x-b3-spanid", S)],
            {"x-b3-traceid": (T[16:],), "x-b3-spanid": (S,), "x-b3-sampled": ("1",)},
        ),
        # A lone trace id is no context: a new 128-bit root.
        (
            [("x-request-id", UNSAMPLED), ("x-b3-traceid", T)],
            {
                "x-b3-traceid": (("random", 32, True),),
                "x-b3-spanid": (("random", 16, True),),
                "x-b3-sampled": ("0",),
                "root": True,
            },
        ),
        # Malformed: nothing added, the headers pass as they came.
        ([("x-b3-traceid", "zz"), ("x-b3-spanid", S)], {"x-b3-traceid": ("zz",), "x-b3-spanid": (S,)}),
    ],
    ids=["shared-context", "decision-sampled", "lone-trace-id", "malformed"],
)
def test_zipkin_incoming_b3(
    diff: Differential, headers: list[tuple[str, str]], expected: dict[str, object]
) -> None:
    got = diff.run(lambda t: _b3_shape(t, headers))
    assert {k: v for k, v in got.items() if k != "root" or "root" in expected} == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{T}-{S}-1-{P}", (T, S, "1", P)),
        (f"{T}-{S}", (T, S, "0")),
        ("d", (("random", 32, True), ("random", 16, True), "1")),
        (f"{T}-{S}-true", (f"{T}", S, "true")),
    ],
    ids=["full", "no-flag", "debug-only", "malformed"],
)
def test_zipkin_b3_single_header(diff: Differential, value: str, expected: tuple[object, ...]) -> None:
    headers = [("x-request-id", UNSAMPLED), ("b3", value), ("x-b3-traceid", T[16:]), ("x-b3-spanid", P)]
    got = diff.run(lambda t: _b3_shape(t, headers))
    # Only b3 is rewritten (in its own format); x-b3-* pass untouched.
    assert got["b3"] == expected
    assert got["x-b3-traceid"] == (T[16:],) and got["x-b3-spanid"] == (P,)
    assert "x-b3-sampled" not in got


# --- Route.decorator under HCM tracing ---------------------------------------------------------------

DECORATOR = "x-envoy-decorator-operation"


def _decorator(
    t: Target, listener: str, path: str, sent: str | None, upstream_reply: str | None
) -> dict[str, object]:
    from tests.support.upstream import Behaviour

    t.ups["service1"].behave(Behaviour(headers=((DECORATOR, upstream_reply),) if upstream_reply else ()))
    headers = [(DECORATOR, sent)] if sent is not None else []
    obs = t.exchange(request("GET", path, host="t.test", headers=headers), listener)
    (up,) = obs.upstream
    return {"upstream": up.header_all(DECORATOR), "response": obs.response.header_all(DECORATOR)}


@pytest.mark.parametrize(
    ("listener", "path", "sent", "upstream_reply", "expected"),
    [
        # Ingress: the route's operation goes back to the client; a request header overrides it.
        (
            "istio_port",
            "/trace",
            None,
            None,
            {"upstream": [], "response": ["service1.default.svc.cluster.local:80/*"]},
        ),
        ("istio_port", "/trace", "client-op", None, {"upstream": [], "response": []}),
        (
            "istio_port",
            "/trace",
            "",
            None,
            {"upstream": [], "response": ["service1.default.svc.cluster.local:80/*"]},
        ),
        (
            "istio_port",
            "/trace",
            None,
            "up-op",
            {"upstream": [], "response": ["service1.default.svc.cluster.local:80/*"]},
        ),
        # Egress (traffic_direction OUTBOUND): it goes upstream; the response's header is removed.
        ("egress_port", "/", "client-op", "up-op", {"upstream": ["service1:80/*"], "response": []}),
        ("egress_port", "/quiet", None, "up-op", {"upstream": [], "response": []}),
        # No tracing: the decorator does nothing.
        ("plain_port", "/", "client-op", "up-op", {"upstream": ["client-op"], "response": ["up-op"]}),
    ],
    ids=[
        "ingress",
        "ingress-override",
        "ingress-empty-override",
        "ingress-upstream-header",
        "egress",
        "egress-no-propagate",
        "untraced",
    ],
)
def test_decorator_operation_header(
    diff: Differential,
    listener: str,
    path: str,
    sent: str | None,
    upstream_reply: str | None,
    expected: object,
) -> None:
    assert diff.run(lambda t: _decorator(t, listener, path, sent, upstream_reply)) == expected

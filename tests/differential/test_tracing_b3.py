"""Zipkin B3 headers on the upstream request against Envoy 1.40, with Istio's bootstrap-level
provider (Bootstrap.tracing.http: ZipkinConfig trace_id_128bit true, shared_span_context false)
and the direction / sampling / shared-context variants (sidecar: http/b3.py).

Ids are random: what is compared is their shape (length, lowercase hex, which header carries which
incoming id, whether a new root's span id is its trace id's low half).  The collector cluster points
at a loopback port nobody listens on (no span is reported by sidecar; Envoy's reports fail)."""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import request

pytestmark = pytest.mark.differential
UPSTREAMS = ("service1",)
T = "80f198ee56343ba864fe8b2a57d3eff7"
S = "e457b5a2e4d86bd1"
P = "05e3ac9a4f6e3b90"
SAMPLED = "00000000-2222-4333-8444-555555555555"  # 0 % 10000: under any random_sampling > 0
UNSAMPLED = "11111111-2222-4333-8444-555555555555"

_ZIPKIN = """
      "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
      collector_cluster: zipkin
      collector_endpoint: /api/v2/spans
      collector_endpoint_version: HTTP_JSON"""


def _listener(name: str, sampling: int, direction: str = "", provider: str = "") -> str:
    d = f"\n    traffic_direction: {direction}" if direction else ""
    p = ""
    if provider:
        inner = _ZIPKIN.replace("\n      ", "\n                ")
        p = f"""
            provider:
              name: envoy.tracers.zipkin
              typed_config:{inner}
{provider}"""
    return f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {{{name}_port}}}}}}{d}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          tracing:
            random_sampling: {{value: {sampling}}}{p}
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: service1}}}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""


BOOTSTRAP = (
    """admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {admin_port}}}
tracing:
  http:
    name: envoy.tracers.zipkin
    typed_config:"""
    + _ZIPKIN
    + """
      trace_id_128bit: true
      shared_span_context: false
static_resources:
  listeners:"""
    + _listener("inbound", 1)
    + _listener("all", 100)
    + _listener("outbound", 1, "OUTBOUND")
    + _listener("shared", 1, "INBOUND", "                trace_id_128bit: false")
    + _listener("shared_out", 1, "OUTBOUND", "                trace_id_128bit: false")
    + """  clusters:
  - name: zipkin
    connect_timeout: 1s
    load_assignment:
      cluster_name: zipkin
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {zipkin_port}}}}}]}]
  - name: service1
    connect_timeout: 1s
    load_assignment:
      cluster_name: service1
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {service1_port}}}}}]}]
"""
)

_KNOWN = {T, S, P, T[16:]}
_HEX = set("0123456789abcdef")


def _shape(t: Target, listener: str, headers: list[tuple[str, str]]) -> dict[str, object]:
    if not any(k == "x-request-id" for k, _ in headers):
        # A generated id falls under random_sampling 1% once in a hundred: fix the decision.
        headers = [("x-request-id", UNSAMPLED), *headers]
    obs = t.exchange(request("GET", "/", host="t.test", headers=headers), f"{listener}_port")
    (up,) = obs.upstream
    out: dict[str, object] = {"status": obs.response.status}
    for name in ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3"):
        values = up.header_all(name)
        if not values:
            continue
        assert len(values) == 1, (name, values)
        out[name] = tuple(
            p if p in _KNOWN or len(p) <= 4 else (len(p), set(p) <= _HEX)
            for p in (values[0].split("-") if name == "b3" else values)
        )
    trace, span = up.header("x-b3-traceid") or "", up.header("x-b3-spanid") or ""
    out["root"] = bool(span) and trace.endswith(span)
    return out


NEW = (16, True)
NEW128 = (32, True)


@pytest.mark.parametrize(
    ("listener", "headers", "expected"),
    [
        # Istio's provider: a new 128-bit root, sampled by x-request-id's trace reason.
        ("inbound", [("x-request-id", UNSAMPLED)], {"x-b3-traceid": (NEW128,), "x-b3-sampled": ("0",)}),
        ("inbound", [("x-request-id", SAMPLED)], {"x-b3-traceid": (NEW128,), "x-b3-sampled": ("1",)}),
        ("inbound", [("x-client-trace-id", "abc")], {"x-b3-traceid": (NEW128,), "x-b3-sampled": ("1",)}),
        ("inbound", [("x-request-id", "not-a-uuid")], {"x-b3-traceid": (NEW128,), "x-b3-sampled": ("0",)}),
        ("inbound", [("x-envoy-force-trace", "1")], {"x-b3-traceid": (NEW128,), "x-b3-sampled": ("0",)}),
        ("all", [], {"x-b3-traceid": (NEW128,), "x-b3-sampled": ("1",)}),
        ("all", [("x-b3-sampled", "0")], {"x-b3-traceid": (NEW128,), "x-b3-sampled": ("0",)}),
        ("inbound", [("x-b3-flags", "1")], {"x-b3-flags": ("1",), "x-b3-sampled": ("0",)}),
        ("inbound", [("x-b3-parentspanid", P)], {"x-b3-parentspanid": (P,), "x-b3-sampled": ("0",)}),
        # shared_span_context false: a new span, child of the client's (Ingress and Egress alike).
        (
            "inbound",
            [("x-b3-traceid", T), ("x-b3-spanid", S), ("x-b3-parentspanid", P), ("x-b3-sampled", "1")],
            {"x-b3-traceid": (T,), "x-b3-spanid": (NEW,), "x-b3-parentspanid": (S,), "x-b3-sampled": ("1",)},
        ),
        (
            "outbound",
            [("x-b3-traceid", T[16:]), ("x-b3-spanid", S), ("x-b3-sampled", "true")],
            {
                "x-b3-traceid": (T[16:],),
                "x-b3-spanid": (NEW,),
                "x-b3-parentspanid": (S,),
                "x-b3-sampled": ("1",),
            },
        ),
        # shared_span_context true: Ingress reuses the client's span, Egress makes a child; 64-bit ids.
        ("shared", [], {"x-b3-traceid": (NEW,), "x-b3-sampled": ("0",)}),
        (
            "shared",
            [("x-b3-traceid", T), ("x-b3-spanid", S), ("x-b3-parentspanid", P)],
            {"x-b3-traceid": (T,), "x-b3-spanid": (S,), "x-b3-parentspanid": (P,), "x-b3-sampled": ("0",)},
        ),
        (
            "shared_out",
            [("x-b3-traceid", T), ("x-b3-spanid", S), ("x-b3-parentspanid", P)],
            {"x-b3-traceid": (T,), "x-b3-spanid": (NEW,), "x-b3-parentspanid": (S,), "x-b3-sampled": ("0",)},
        ),
        # The b3 single header: only it is rewritten, in its own format.
        ("inbound", [("b3", f"{T}-{S}-1-{P}")], {"b3": (T, NEW, "1", S)}),
        ("shared", [("b3", f"{T}-{S}")], {"b3": (T, S, "0")}),
        ("outbound", [("b3", "0")], {"b3": (NEW128, NEW, "0")}),
        # Malformed context: Envoy's NullSpan, nothing added.
        ("inbound", [("x-b3-traceid", T + "00"), ("x-b3-spanid", S)], {"x-b3-traceid": ((34, True),)}),
        ("inbound", [("x-b3-traceid", "-1"), ("x-b3-spanid", S)], {"x-b3-traceid": ("-1",)}),
    ],
)
def test_b3_headers_upstream(
    diff: Differential, listener: str, headers: list[tuple[str, str]], expected: dict[str, object]
) -> None:
    got = diff.run(lambda t: _shape(t, listener, headers))
    assert got["status"] == 200
    assert {k: got.get(k) for k in expected} == expected

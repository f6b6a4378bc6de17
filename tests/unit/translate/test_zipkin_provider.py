"""The Zipkin provider (http/b3.py's config): bootstrap tracing.http applied to traced connection
managers without their own provider, an inline HCM provider, and what is refused; and the tracing
decision trace_reason.decide_traced hands the tracer."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.cli import Options
from sidecar.http import trace_reason
from sidecar.model.listener import HttpConnectionManager
from sidecar.model.tracing import RequestIdExtension, Tracing, Zipkin
from sidecar.translate.bootstrap import load_bootstrap, translate_bootstrap
from sidecar.translate.errors import ConfigError

ZIPKIN = """
      "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
      collector_cluster: zipkin
      collector_endpoint: /api/v2/spans
      collector_endpoint_version: HTTP_JSON"""


def _hcm_listener(name: str, port: int, tracing: str) -> str:
    return f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}{tracing}
          route_config: {{virtual_hosts: [{{name: a, domains: ["*"], routes: [{{match: {{prefix: "/"}}, direct_response: {{status: 200}}}}]}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""


def _bootstrap(extra: str = "", inline: str = "") -> str:
    inline_provider = ""
    if inline:
        body = ZIPKIN.replace("\n      ", "\n                ")
        inline_provider = f"""
            provider:
              name: envoy.tracers.zipkin
              typed_config:{body}
{inline}"""
    return (
        """
tracing:
  http:
    name: envoy.tracers.zipkin
    typed_config:"""
        + ZIPKIN
        + extra
        + """
static_resources:
  listeners:"""
        + _hcm_listener("traced", 10001, "\n          tracing: {random_sampling: {value: 1}}")
        + _hcm_listener("plain", 10002, "")
        + _hcm_listener("own", 10003, "\n          tracing:" + inline_provider)
        + """  clusters:
  - name: zipkin
    load_assignment:
      cluster_name: zipkin
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9411}}}}]}]
"""
    )


def _tracing(snap: Any, name: str) -> Tracing | None:
    (listener,) = [x for x in snap.listeners if x.name == name]
    hcm = listener.filter_chains[0].filters[-1]
    assert isinstance(hcm, HttpConnectionManager)
    return hcm.tracing


def test_bootstrap_provider_is_kept_on_the_snapshot() -> None:
    extra = "\n      trace_id_128bit: true\n      shared_span_context: false"
    snap = translate_bootstrap(
        load_bootstrap(None, _bootstrap(extra, "                trace_id_128bit: false\n"), False), Options()
    )
    istio = Zipkin(trace_id_128bit=True, shared_span_context=False, collector_cluster="zipkin")
    assert snap.zipkin == istio
    # The bootstrap's provider stays on the snapshot (the ListenerManager hands it to every traced
    # connection manager without a provider of its own at run time: rewriting the listener configs
    # would break chain_match's identity of their filter chains); an HCM's own provider is kept.
    traced = _tracing(snap, "traced")
    assert traced is not None and traced.zipkin is None and not traced.provider
    assert _tracing(snap, "plain") is None
    own = _tracing(snap, "own")
    assert own is not None and own.zipkin == Zipkin(False, True, "zipkin")  # its own provider wins


def test_no_bootstrap_tracing_means_no_provider() -> None:
    text = _bootstrap().split("static_resources:", 1)[1]
    snap = translate_bootstrap(load_bootstrap(None, "static_resources:" + text, False), Options())
    assert snap.zipkin is None
    traced = _tracing(snap, "traced")
    assert traced is not None and traced.zipkin is None


def test_w3c_propagation_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        translate_bootstrap(
            load_bootstrap(
                None, _bootstrap("\n      trace_context_option: USE_B3_WITH_W3C_PROPAGATION"), False
            ),
            Options(),
        )
    assert e.value.path == "tracing.http.typed_config.trace_context_option"


SAMPLED = b"00000000-2222-4333-8444-555555555555"
UNSAMPLED = b"11111111-2222-4333-8444-555555555555"


@pytest.mark.parametrize(
    ("rid", "pack", "client", "expected"),
    [
        (SAMPLED, True, False, (SAMPLED[:14] + b"9" + SAMPLED[15:], True)),
        (SAMPLED, False, False, (SAMPLED, True)),  # observed: traced although the id is unchanged
        (UNSAMPLED, True, False, (UNSAMPLED, False)),
        (UNSAMPLED, False, True, (UNSAMPLED, True)),
        (UNSAMPLED[:14] + b"a" + UNSAMPLED[15:], True, False, (UNSAMPLED[:14] + b"a" + UNSAMPLED[15:], True)),
        (b"not-a-uuid", True, True, (b"not-a-uuid", False)),
        (b"00000000", True, False, (b"00000000", True)),
    ],
)
def test_decide_traced(rid: bytes, pack: bool, client: bool, expected: tuple[bytes, bool]) -> None:
    ext = RequestIdExtension(pack_trace_reason=pack)
    assert trace_reason.decide_traced(rid, client, False, Tracing(random_sampling=1.0), ext, 0.5) == expected

"""istio.alpn (Istio's upstream ALPN override) on a running sidecar: an HTTP/1.1 request through a
connection manager that has the filter reaches its mTLS upstream over a connection that offered
istio-http/1.1, istio, http/1.1 (what an Envoy peer's inbound listener picks its HTTP chain by);
a cluster whose metadata says istio.alpn_override "false" keeps its own ALPN; a connection manager
without the filter offers the cluster's ALPN.  The upstream is a TLS server that answers with the
ALPN it negotiated.  (A static bootstrap carries the filter in a TypedStruct, as an unknown type
cannot be written in YAML; istiod's raw-bytes form is covered by tests/unit/translate/test_istio_alpn.py.)"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ca import TestCA
from tests.support.http1 import exchange, request
from tests.support.proxy import ProxyProcess, render

pytestmark = pytest.mark.timeout(60)

SERVER_ALPN = ["istio-http/1.1", "istio-peer-exchange", "istio", "http/1.1"]


class _Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (self.connection.selected_alpn_protocol() or "none").encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[tuple[int, TestCA]]:
    ca = TestCA(tmp_path / "ca")
    server = ca.workload("default", "reviews")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server.cert_path, server.key_path)
    ctx.set_alpn_protocols(SERVER_ALPN)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield httpd.server_address[1], ca
    finally:
        httpd.shutdown()
        httpd.server_close()


BOOTSTRAP = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: {admin_port}}}}
static_resources:
  listeners:
  - name: with_filter
    address: {socket_address: {address: 127.0.0.1, port_value: {with_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: with_filter
          route_config: &routes
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {match: {prefix: /no-override}, route: {cluster: no_override}}
              - {match: {prefix: /}, route: {cluster: mtls}}
          http_filters:
          - name: istio.alpn
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig
              value:
                alpn_override:
                - {upstream_protocol: HTTP10, alpn_override: [istio-http/1.0, istio, http/1.0]}
                - {upstream_protocol: HTTP11, alpn_override: [istio-http/1.1, istio, http/1.1]}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: without_filter
    address: {socket_address: {address: 127.0.0.1, port_value: {without_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: without_filter
          route_config: *routes
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: mtls
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: mtls
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {up_port}}}}}]}]
    transport_socket: &tls
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.9080_._.reviews.default.svc.cluster.local
        common_tls_context:
          alpn_protocols: [istio-peer-exchange, istio]
          validation_context: {trusted_ca: {filename: {ca_path}}}
  - name: no_override
    type: STATIC
    connect_timeout: 1s
    metadata: {filter_metadata: {istio: {alpn_override: "false"}}}
    load_assignment:
      cluster_name: no_override
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {up_port}}}}}]}]
    transport_socket: *tls
"""


def test_upstream_alpn_follows_istio_alpn(tls_upstream: tuple[int, TestCA], tmp_path: Path) -> None:
    up_port, ca = tls_upstream
    text, ports = render(BOOTSTRAP, up_port=up_port, ca_path=ca.root_path)
    with ProxyProcess("sidecar", text, workdir=tmp_path) as proxy:
        assert proxy.running

        def get(port_name: str, path: str) -> tuple[int, str]:
            resp = exchange(int(ports[port_name]), request(target=path), 5.0)  # type: ignore[call-overload]
            return resp.status, resp.text

        assert get("with_port", "/") == (200, "istio-http/1.1")
        assert get("with_port", "/no-override") == (200, "istio-peer-exchange")
        assert get("without_port", "/") == (200, "istio-peer-exchange")
        # Both pools of the host stay usable side by side (keep-alive connections per ALPN).
        assert get("with_port", "/") == (200, "istio-http/1.1")
        assert get("without_port", "/") == (200, "istio-peer-exchange")

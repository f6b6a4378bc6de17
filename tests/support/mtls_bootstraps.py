"""Bootstraps for two proxies talking mTLS the way Istio configures them, shared by the loopback
integration tests (two sidecars) and the differential ones (envoy on one side).

- `client_side(...)`: an outbound listener (plaintext HTTP in, from the app) routing to cluster
  `server` whose endpoint carries `tlsMode: istio` metadata, with Istio's transport_socket_matches:
  TLS (workload certificate, ROOTCA trust, the server's SPIFFE ID as SAN matcher, Istio's ALPN)
  for `tlsMode: istio` endpoints, plaintext for the others.  A second listener does the same with
  tcp_proxy (cluster `server-tcp`).
- `server_side(...)`: an inbound listener with tls_inspector and, as istiod emits them, a TLS chain
  (transport_protocol tls, require_client_certificate, the client's SPIFFE ID as SAN matcher) and in
  PERMISSIVE mode a plaintext chain (raw_buffer) next to it; HTTP RBAC lets only the client's
  identity reach anything but /public.  A second inbound listener terminates TLS for tcp_proxy
  behind network RBAC (the client's identity only).

Placeholders left for `tests.support.proxy.render`: ports ending in `_port`."""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.request
from pathlib import Path

from tests.support.ca import Issued, TestCA
from tests.support.proxy import ProxyProcess, render

ISTIO_ALPN = '["istio-peer-exchange", "istio"]'
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"
LOG_ARGS = ("--component-log-level", "connection:debug")


def _admin() -> str:
    return """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {admin_port}}}
"""


def _upstream_tls(cert: Path, key: Path, root: Path, san: str, sni: str) -> str:
    return f"""
          name: envoy.transport_sockets.tls
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
            sni: {sni}
            common_tls_context:
              alpn_protocols: {ISTIO_ALPN}
              tls_certificates:
              - certificate_chain: {{filename: {cert}}}
                private_key: {{filename: {key}}}
              combined_validation_context:
                default_validation_context:
                  match_typed_subject_alt_names:
                  - san_type: URI
                    matcher: {{exact: "{san}"}}
                validation_context_sds_secret_config:
                  name: ROOTCA"""


def _cluster(name: str, port_key: str, tls: str) -> str:
    return f"""
  - name: {name}
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {{{port_key}}}}}}}}}
          metadata:
            filter_metadata:
              envoy.transport_socket_match: {{tlsMode: istio}}
    transport_socket_matches:
    - name: tlsMode-istio
      match: {{tlsMode: istio}}
      transport_socket:{tls}
    - name: tlsMode-disabled
      match: {{}}
      transport_socket:
        name: envoy.transport_sockets.raw_buffer
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer
"""


def _rootca(root: Path) -> str:
    return f"""
  secrets:
  - name: ROOTCA
    validation_context:
      trusted_ca: {{filename: {root}}}
"""


def client_side(cert: Path, key: Path, root: Path, *, server_san: str = SERVER_ID) -> str:
    """Outbound HTTP on {outbound_port} and TCP on {outbound_tcp_port} to the server sidecar's
    {inbound_port} / {inbound_tcp_port}."""
    tls = _upstream_tls(cert, key, root, server_san, "outbound_.80_._.server.default.svc.cluster.local")
    return (
        _admin()
        + """
static_resources:
  listeners:
  - name: outbound
    address: {socket_address: {address: 127.0.0.1, port_value: {outbound_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: server}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: outbound_tcp
    address: {socket_address: {address: 127.0.0.1, port_value: {outbound_tcp_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: outbound_tcp
          cluster: server-tcp
  clusters:"""
        + _cluster("server", "inbound_port", tls)
        + _cluster("server-tcp", "inbound_tcp_port", tls)
        + _rootca(root)
    )


def _downstream_tls(cert: Path, key: Path, client_san: str, alpn: str) -> str:
    return f"""
        transport_socket:
          name: envoy.transport_sockets.tls
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
            require_client_certificate: true
            common_tls_context:
              alpn_protocols: {alpn}
              tls_certificate_sds_secret_configs:
              - name: default
              combined_validation_context:
                default_validation_context:
                  match_typed_subject_alt_names:
                  - san_type: URI
                    matcher: {{prefix: "{client_san}"}}
                validation_context_sds_secret_config:
                  name: ROOTCA"""


_HCM = """
        filters:
        - name: envoy.filters.network.http_connection_manager
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            stat_prefix: inbound
            route_config:
              virtual_hosts:
              - name: all
                domains: ["*"]
                routes:
                - match: {prefix: "/"}
                  route: {cluster: app}
            http_filters:
            - name: envoy.filters.http.rbac
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
                rules:
                  action: ALLOW
                  policies:
                    client-only:
                      permissions: [{any: true}]
                      principals: [{authenticated: {principal_name: {exact: "%s"}}}]
                    public:
                      permissions: [{url_path: {path: {prefix: "/public"}}}]
                      principals: [{any: true}]
            - name: envoy.filters.http.router
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"""


_TCP = """
        filters:
        - name: envoy.filters.network.rbac
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
            stat_prefix: inbound_tcp
            rules:
              action: ALLOW
              policies:
                client-only:
                  permissions: [{any: true}]
                  principals: [{authenticated: {principal_name: {exact: "%s"}}}]
        - name: envoy.filters.network.tcp_proxy
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
            stat_prefix: inbound_tcp
            cluster: app"""


def server_side(cert: Path, key: Path, root: Path, *, permissive: bool, client_san: str = CLIENT_ID) -> str:
    """Inbound HTTP on {inbound_port}, TCP on {inbound_tcp_port}, to the app on {app_port}."""
    tls = _downstream_tls(cert, key, client_san, '["h2", "http/1.1"]')
    hcm = _HCM % CLIENT_ID
    tls_http = (
        """
      - name: tls
        filter_chain_match:
          transport_protocol: tls
          application_protocols: ["istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"]"""
        + tls
        + hcm
        + """
      - name: tls-no-istio-alpn
        filter_chain_match: {transport_protocol: tls}"""
        + tls
        + hcm
    )
    plain_http = (
        """
      - name: plaintext
        filter_chain_match: {transport_protocol: raw_buffer}"""
        + hcm
        if permissive
        else ""
    )
    tcp_tls = _downstream_tls(cert, key, client_san, ISTIO_ALPN)
    return (
        _admin()
        + """
static_resources:
  listeners:
  - name: inbound
    address: {socket_address: {address: 127.0.0.1, port_value: {inbound_port}}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    filter_chains:"""
        + tls_http
        + plain_http
        + """
  - name: inbound_tcp
    address: {socket_address: {address: 127.0.0.1, port_value: {inbound_tcp_port}}}
    filter_chains:
      - name: tls"""
        + tcp_tls
        + _TCP % CLIENT_ID
        + """
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {app_port}}}}"""
        + _rootca(root)
        + f"""
  - name: default
    tls_certificate:
      certificate_chain: {{filename: {cert}}}
      private_key: {{filename: {key}}}
"""
    )


# -- driving them -------------------------------------------------------------------------------


def start(kind: str, template: str, values: dict[str, object]) -> tuple[ProxyProcess, dict[str, object]]:
    """Render and start one proxy with the connection component at debug (handshake reasons)."""
    text, used = render(template, **values)
    proc = ProxyProcess(kind, text, extra_args=LOG_ARGS)
    proc.start()
    return proc, used


def get(port: int, path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def stats(admin_port: object, pattern: str) -> dict[str, int]:
    url = f"http://127.0.0.1:{admin_port}/stats?filter={pattern}"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def direct_tls(
    port: object, cert: Issued | None, ca: TestCA, alpn: list[str] | None = None, path: str = "/public"
) -> str:
    """One request straight to the server sidecar's inbound port with `cert` (None: no client
    certificate): the status line, or the error that ended it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca.root_path))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert_path), str(cert.key_path))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    try:
        with (
            socket.create_connection(("127.0.0.1", int(port)), timeout=5) as raw,  # type: ignore[call-overload]
            ctx.wrap_socket(raw) as s,
        ):
            s.sendall(b"GET %s HTTP/1.1\r\nhost: x\r\n\r\n" % path.encode())
            data = s.recv(4096)
            return data.split(b"\r\n", 1)[0].decode() if data else "closed"
    except (OSError, ssl.SSLError) as exc:
        return f"error: {exc}"

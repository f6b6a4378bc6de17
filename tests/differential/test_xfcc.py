"""x-forwarded-client-cert against Envoy: one inbound listener per forward_client_cert_details mode
(TLS chain requiring a client certificate, plaintext chain beside it as in PERMISSIVE), the same
client certificate (a subject with RFC 2253 specials, URI and DNS SANs, an intermediate CA so the
chain has two certificates) and the same requests: over mTLS with and without an incoming XFCC
header, over TLS without a client certificate, and over plaintext.  The app must see the same
x-forwarded-client-cert from both proxies."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ca import Issued, TestCA
from tests.support.mtls_bootstraps import start
from tests.support.upstream import Upstreams

pytestmark = [pytest.mark.differential, pytest.mark.timeout(120)]

ALL = "{subject: true, cert: true, chain: true, dns: true, uri: true}"
ISTIO_INBOUND = "{subject: true, dns: true, uri: true}"
MODES = {
    "sanitize": ("SANITIZE", ALL),
    "forward_only": ("FORWARD_ONLY", ALL),
    "append_forward": ("APPEND_FORWARD", ALL),
    "sanitize_set": ("SANITIZE_SET", ALL),
    "always_forward_only": ("ALWAYS_FORWARD_ONLY", ALL),
    "istio_inbound": ("APPEND_FORWARD", ISTIO_INBOUND),
    "istio_gateway": ("SANITIZE_SET", "{subject: true, cert: true, dns: true, uri: true}"),
}


def _listener(name: str, mode: str, details: str) -> str:
    hcm = f"""
        filters:
        - name: envoy.filters.network.http_connection_manager
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            stat_prefix: {name}
            forward_client_cert_details: {mode}
            set_current_client_cert_details: {details}
            route_config:
              virtual_hosts:
              - name: all
                domains: ["*"]
                routes:
                - match: {{prefix: "/"}}
                  route: {{cluster: app}}
            http_filters:
            - name: envoy.filters.http.router
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"""
    return (
        f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {{{name}_port}}}}}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    filter_chains:
      - name: tls
        filter_chain_match: {{transport_protocol: tls}}
        transport_socket:
          name: envoy.transport_sockets.tls
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
            common_tls_context:
              tls_certificate_sds_secret_configs: [{{name: default}}]
              validation_context_sds_secret_config: {{name: ROOTCA}}"""
        + hcm
        + """
      - name: plaintext
        filter_chain_match: {transport_protocol: raw_buffer}"""
        + hcm
    )


def bootstrap(server: Issued, root: Path) -> str:
    listeners = "".join(_listener(name, mode, details) for name, (mode, details) in MODES.items())
    return (
        """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {admin_port}}}
static_resources:
  listeners:"""
        + listeners
        + f"""
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {{app_port}}}}}}}}
  secrets:
  - name: ROOTCA
    validation_context:
      trusted_ca: {{filename: {root}}}
  - name: default
    tls_certificate:
      certificate_chain: {{filename: {server.cert_path}}}
      private_key: {{filename: {server.key_path}}}
"""
    )


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(Path(tmp_path_factory.mktemp("xfcc-ca")), intermediate=True)


@pytest.fixture(scope="module")
def app() -> Iterator[Upstreams]:
    with Upstreams(("app",)) as ups:
        yield ups


def _request(port: int, ca: TestCA, client: Issued | None, tls: bool, xfcc: str | None) -> str:
    extra = f"x-forwarded-client-cert: {xfcc}\r\n" if xfcc is not None else ""
    data = f"GET / HTTP/1.1\r\nhost: x\r\n{extra}connection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        if not tls:
            return _exchange(raw, data)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cafile=str(ca.root_path))
        if client is not None:
            ctx.load_cert_chain(str(client.cert_path), str(client.key_path))
        with ctx.wrap_socket(raw) as sock:
            return _exchange(sock, data)


def _exchange(sock: socket.socket, data: bytes) -> str:
    sock.sendall(data)
    got = b""
    for _ in range(100):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got.split(b"\r\n", 1)[0].decode()


def _run(
    kind: str, ca: TestCA, app: Upstreams, server: Issued, client: Issued
) -> dict[str, tuple[str, list[str]]]:
    proc, used = start(kind, bootstrap(server, ca.root_path), {**app.ports})
    out: dict[str, tuple[str, list[str]]] = {}
    try:
        for name in MODES:
            port = int(used[f"{name}_port"])  # type: ignore[call-overload]
            for label, tls, cert, incoming in (
                ("mtls", True, client, None),
                ("mtls+incoming", True, client, 'By=spiffe://up;Hash=00;Subject="CN=a,b"'),
                ("tls-no-cert+incoming", True, None, "By=spiffe://up;Hash=00"),
                ("plaintext+incoming", False, None, "By=spiffe://up;Hash=00"),
                ("plaintext", False, None, None),
            ):
                status = _request(port, ca, cert, tls, incoming)
                seen = app["app"].requests[-1].header_all("x-forwarded-client-cert")
                out[f"{name} {label}"] = (status, seen)
    finally:
        proc.close()
    return out


def test_xfcc_modes_match_envoy(ca: TestCA, app: Upstreams) -> None:
    server = ca.workload("default", "server", name="xfcc-server")
    client = ca.issue(
        "xfcc-client",
        uris=["spiffe://cluster.local/ns/default/sa/client"],
        dns=["client.default.svc", "client.example"],
        common_name='client, "q"; x=y+z',
    )
    envoy = _run("envoy", ca, app, server, client)
    sidecar = _run("sidecar", ca, app, server, client)
    # The oracle said something for every case (the test would prove little otherwise).
    assert envoy["sanitize mtls+incoming"] == ("HTTP/1.1 200 OK", [])
    assert envoy["append_forward mtls"][1], envoy["append_forward mtls"]
    assert 'Subject="CN=client' in envoy["istio_inbound mtls"][1][0]
    for key in envoy:
        assert sidecar[key] == envoy[key], key

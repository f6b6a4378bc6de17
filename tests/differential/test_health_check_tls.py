"""Active health checks over TLS against Envoy: the same bootstrap on both proxies, one TLS upstream
that requires a client certificate and answers 200.

- `good`: the cluster's transport_socket trusts the upstream's CA: the host is healthy (requests
  through the listener reach it) and the handshake is counted in cluster.good.ssl.handshake;
- `badca`: the cluster trusts another CA: the probe's handshake fails (ssl.fail_verify_error) and
  the host is unhealthy (a request, routed in panic mode, fails its handshake: 503);
- `criteria`: Istio-shaped transport_socket_matches (TLS for tlsMode=istio, plaintext otherwise), a
  host without metadata, and health_check.transport_socket_match_criteria {tlsMode: istio}: the
  probe is TLS (healthy) although traffic to that host is plaintext (reset by the TLS server: 503)."""

from __future__ import annotations

import socketserver
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ca import TestCA
from tests.support.mtls_bootstraps import start, stats

pytestmark = [pytest.mark.differential, pytest.mark.timeout(120)]


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        ctx: ssl.SSLContext = self.server.ctx  # type: ignore[attr-defined]
        try:
            with ctx.wrap_socket(self.request, server_side=True) as s:
                s.settimeout(5)
                buf = b""
                for _ in range(10_000):  # one request per round, bounded
                    while b"\r\n\r\n" not in buf:
                        chunk = s.recv(4096)
                        if not chunk:
                            return
                        buf += chunk
                    _, _, buf = buf.partition(b"\r\n\r\n")
                    s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (OSError, ssl.SSLError):
            pass


class TlsServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, ca: TestCA) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        cert = ca.workload("default", "upstream", name="hc-diff-upstream")
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert.cert_path), str(cert.key_path))
        self.ctx.load_verify_locations(cafile=str(ca.root_path))
        self.ctx.verify_mode = ssl.CERT_REQUIRED


def _tls(client_cert: Path, client_key: Path, root: Path) -> str:
    return f"""
          name: envoy.transport_sockets.tls
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
            common_tls_context:
              tls_certificates:
              - certificate_chain: {{filename: {client_cert}}}
                private_key: {{filename: {client_key}}}
              validation_context:
                trusted_ca: {{filename: {root}}}"""


_HC = """
    health_checks:
    - timeout: 1s
      interval: 0.2s
      no_traffic_interval: 0.2s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: {path: /healthz}"""


def _cluster(name: str, tail: str, hc: str = _HC) -> str:
    return (
        f"""
  - name: {name}
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {{upstream_port}}}}}}}}"""
        + hc
        + tail
    )


def bootstrap(ca: TestCA, other: TestCA) -> str:
    client = ca.workload("default", "client", name="hc-diff-client")
    good = _tls(client.cert_path, client.key_path, ca.root_path)
    bad = _tls(client.cert_path, client.key_path, other.root_path)
    routes = "".join(
        f"""
              - match: {{prefix: "/{name}"}}
                route: {{cluster: {name}}}"""
        for name in ("good", "badca", "criteria")
    )
    return (
        """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {admin_port}}}
static_resources:
  listeners:
  - name: front
    address: {socket_address: {address: 127.0.0.1, port_value: {listener_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:"""
        + routes
        + """
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:"""
        + _cluster("good", "\n    transport_socket:" + good)
        + _cluster("badca", "\n    transport_socket:" + bad)
        + _cluster(
            "criteria",
            """
    transport_socket_matches:
    - name: tlsMode-istio
      match: {tlsMode: istio}
      transport_socket:"""
            + good
            + """
    - name: tlsMode-disabled
      match: {}
      transport_socket:
        name: envoy.transport_sockets.raw_buffer
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer
""",
            hc=_HC + "\n      transport_socket_match_criteria: {tlsMode: istio}",
        )
    )


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, TestCA]:
    base = Path(tmp_path_factory.mktemp("hc-tls-diff"))
    return TestCA(base / "a"), TestCA(base / "b", name="other")


@pytest.fixture(scope="module")
def upstream(cas: tuple[TestCA, TestCA]) -> Iterator[TlsServer]:
    srv = TlsServer(cas[0])
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _get(port: object, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _observe(kind: str, cas: tuple[TestCA, TestCA], upstream: TlsServer) -> dict[str, object]:
    port = upstream.server_address[1]
    proc, used = start(kind, bootstrap(*cas), {"upstream_port": port})
    try:
        admin = used["admin_port"]
        deadline = time.monotonic() + 15
        got: dict[str, int] = {}
        while time.monotonic() < deadline:  # until every cluster had a probe or two
            got = stats(admin, "health_check|ssl")
            if all(
                got.get(f"cluster.{c}.health_check.attempt", 0) >= 2 for c in ("good", "badca", "criteria")
            ):
                break
            time.sleep(0.1)
        out: dict[str, object] = {
            name: _get(used["listener_port"], f"/{name}") for name in ("good", "badca", "criteria")
        }
        got = stats(admin, "health_check|ssl")
        for c in ("good", "badca", "criteria"):
            out[f"{c} healthy"] = got.get(f"cluster.{c}.health_check.healthy", 0)
            out[f"{c} succeeded"] = got.get(f"cluster.{c}.health_check.success", 0) > 0
            out[f"{c} network failures"] = got.get(f"cluster.{c}.health_check.network_failure", 0) > 0
            out[f"{c} handshakes"] = got.get(f"cluster.{c}.ssl.handshake", 0) > 0
            out[f"{c} verify errors"] = got.get(f"cluster.{c}.ssl.fail_verify_error", 0) > 0
        return out
    finally:
        proc.close()


def test_health_checks_over_tls_match_envoy(cas: tuple[TestCA, TestCA], upstream: TlsServer) -> None:
    envoy = _observe("envoy", cas, upstream)
    # One host, unhealthy: panic routing still tries it (a failed handshake); the criteria cluster's
    # host is healthy by its TLS probe but its traffic is plaintext to a TLS server (a reset).
    assert envoy["good"] == (200, "ok") and envoy["badca"][0] == 503, envoy  # type: ignore[index]
    assert envoy["badca healthy"] == 0 and envoy["badca verify errors"], envoy
    assert envoy["criteria healthy"] == 1 and envoy["criteria"][0] == 503, envoy  # type: ignore[index]
    sidecar = _observe("sidecar", cas, upstream)
    assert sidecar == envoy

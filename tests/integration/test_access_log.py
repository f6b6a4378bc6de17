"""Access logs from a sidecar process: HTTP lines (upstream response, no route, local replies), a
tcp_proxy line per connection, the buffered file flushed by the --file-flush-interval-msec timer and
at shutdown, and the mTLS peer identity (%DOWNSTREAM_PEER_URI_SAN%) of a client certificate."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.ca import TestCA
from tests.support.http1 import exchange, request
from tests.support.mtls_bootstraps import CLIENT_ID, SERVER_ID, direct_tls, server_side
from tests.support.proxy import ProxyProcess, render
from tests.support.tcp_upstream import TcpUpstream
from tests.support.upstream import Upstreams

pytestmark = pytest.mark.timeout(60)

FMT = (
    "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% "
    "%UPSTREAM_CLUSTER% %ROUTE_NAME% %REQ(X-REQUEST-ID)% %UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%\\n"
)

BOOTSTRAP = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {admin_port}}}
static_resources:
  listeners:
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: {listener_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          access_log:
          - name: text
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log_dir}/http.log
              log_format: {text_format_source: {inline_string: "FMT"}}
          - name: json-errors-only
            filter: {status_code_filter: {comparison: {op: GE, value: {default_value: 400, runtime_key: x}}}}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log_dir}/errors.json
              log_format: {json_format: {code: "%RESPONSE_CODE%", flags: "%RESPONSE_FLAGS%", up: "%UPSTREAM_HOST%"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/app"}
                name: to-app
                route: {cluster: app}
              - match: {prefix: "/direct"}
                name: direct
                direct_response: {status: 202, body: {inline_string: "hello"}}
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: {tcp_listener_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: echo
          access_log:
          - name: tcp
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log_dir}/tcp.log
              log_format: {text_format_source: {inline_string: "%UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS% %UPSTREAM_HOST% %PROTOCOL% %RESPONSE_CODE%\\n"}}
  clusters:
  - name: app
    connect_timeout: 2s
    load_assignment:
      cluster_name: app
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {app_port}}}}}]}]
  - name: echo
    connect_timeout: 2s
    load_assignment:
      cluster_name: echo
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {echo_port}}}}}]}]
""".replace("FMT", FMT)


def wait_lines(
    path: Path, n: int, timeout: float = 5.0, until: Callable[[list[str]], bool] | None = None
) -> list[str]:
    """The file's lines once it has at least `n` (and `until` holds; the flush timer runs every
    100 ms here)."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n and (until is None or until(lines)):
            return lines
        time.sleep(0.05)
    return lines


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, dict[str, object], Path]]:
    log_dir = tmp_path_factory.mktemp("access-logs")
    echo = TcpUpstream("echo")
    echo.start()
    with Upstreams(("app",)) as app:
        text, used = render(BOOTSTRAP, log_dir=log_dir, echo_port=echo.port, **app.ports)
        proc = ProxyProcess("sidecar", text, extra_args=("--file-flush-interval-msec", "100"))
        try:
            proc.start()
            yield proc, used, log_dir
        finally:
            proc.close()
            echo.close()


def test_http_lines(proxy: tuple[ProxyProcess, dict[str, object], Path]) -> None:
    _, used, log_dir = proxy
    port = int(str(used["listener_port"]))
    for path, rid in (("/app/x", "r1"), ("/nowhere", "r2"), ("/direct", "r3")):
        exchange(port, request("GET", path, host="h", headers=[("x-request-id", rid)]))
    exchange(port, request("POST", "/app/post", host="h", headers=[("x-request-id", "r4")], body=b"12345"))
    lines = wait_lines(log_dir / "http.log", 4)
    assert lines[0] == "GET /app/x HTTP/1.1 200 - 0 0 app to-app r1 127.0.0.1"
    assert lines[1] == "GET /nowhere HTTP/1.1 404 NR 0 0 - - r2 -"
    assert lines[2] == "GET /direct HTTP/1.1 202 - 0 5 - direct r3 -"
    assert lines[3] == "POST /app/post HTTP/1.1 200 - 5 0 app to-app r4 127.0.0.1"
    errors = [json.loads(x) for x in wait_lines(log_dir / "errors.json", 1)]
    assert errors == [{"code": 404, "flags": "NR", "up": None}]  # status_code_filter GE 400


def test_tcp_proxy_line(proxy: tuple[ProxyProcess, dict[str, object], Path]) -> None:
    _, used, log_dir = proxy
    with socket.create_connection(("127.0.0.1", int(str(used["tcp_listener_port"]))), timeout=5) as s:
        s.sendall(b"ping!")
        got = b""
        deadline = time.monotonic() + 5
        while len(got) < 5 and time.monotonic() < deadline:
            got += s.recv(100)
        assert got == b"ping!"
    # (the readiness probe's empty connection has a line of its own: take the last one)
    lines = wait_lines(log_dir / "tcp.log", 1, until=lambda ls: any(" 5 5 " in x for x in ls))
    cluster, rx, tx, flags, host, protocol, code = lines[-1].split()
    assert (cluster, rx, tx, flags, protocol, code) == ("echo", "5", "5", "-", "-", "0")
    assert host.startswith("127.0.0.1:")


def test_lines_are_flushed_at_shutdown(tmp_path: Path) -> None:
    """With Envoy's default 10 s flush interval, a line written just before SIGTERM still lands."""
    with Upstreams(("app",)) as app:
        text, used = render(BOOTSTRAP, log_dir=tmp_path, echo_port=1, **app.ports)
        proc = ProxyProcess("sidecar", text)
        try:
            proc.start()
            exchange(
                int(str(used["listener_port"])),
                request("GET", "/direct", host="h", headers=[("x-request-id", "z")]),
            )
            assert not (tmp_path / "http.log").exists() or (tmp_path / "http.log").read_text() == ""
        finally:
            proc.close()
    assert (tmp_path / "http.log").read_text() == "GET /direct HTTP/1.1 202 - 0 5 - direct z -\n"


MTLS_FMT = "%DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_LOCAL_URI_SAN% %DOWNSTREAM_TLS_VERSION% %RESPONSE_CODE%\\n"


def _with_log(template: str, log: Path, tcp_log: Path) -> str:
    http_log = f"""
            access_log:
            - name: peer
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                path: {log}
                log_format: {{text_format_source: {{inline_string: "{MTLS_FMT}"}}}}
            stat_prefix: inbound
"""
    tcp = f"""
            access_log:
            - name: peer
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                path: {tcp_log}
                log_format: {{text_format_source: {{inline_string: "%DOWNSTREAM_PEER_URI_SAN% %BYTES_RECEIVED%\\n"}}}}
            cluster: app"""
    out = template.replace("\n            stat_prefix: inbound\n", http_log)
    return out.replace("\n            cluster: app", tcp)


def test_mtls_peer_identity_in_the_log(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    server_cert = ca.workload("default", "server")
    client_cert = ca.workload("default", "client")
    log, tcp_log = tmp_path / "peer.log", tmp_path / "tcp.log"
    with Upstreams(("app",)) as app:
        template = server_side(server_cert.cert_path, server_cert.key_path, ca.root_path, permissive=False)
        text, used = render(_with_log(template, log, tcp_log), **app.ports)
        proc = ProxyProcess("sidecar", text, extra_args=("--file-flush-interval-msec", "100"))
        try:
            proc.start()
            assert direct_tls(used["inbound_port"], client_cert, ca, path="/public") == "HTTP/1.1 200 OK"
            (line,) = wait_lines(log, 1)
            assert line == f"{CLIENT_ID} {SERVER_ID} TLSv1.3 200"
            direct_tls(used["inbound_tcp_port"], client_cert, ca, alpn=["istio"])
            tcp_lines = wait_lines(tcp_log, 1, until=lambda ls: any(x.startswith("spiffe") for x in ls))
            assert f"{CLIENT_ID} 33" in tcp_lines  # the request's 33 bytes, from the client's identity
        finally:
            proc.close()

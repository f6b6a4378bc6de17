"""Access log lines, envoy against the sidecar: the same bootstrap (an HCM and a tcp_proxy with a
FileAccessLog whose format holds only deterministic fields) and the same requests must give the same
lines.  Requests: an upstream 200 (with a body each way), a prefix_rewrite (x-envoy-original-path),
404 no route (NR), 503 no healthy upstream (UH), 503 connection refused (UF), an unknown cluster
(NC), a direct response, a redirect; a tcp_proxy connection that carries bytes both ways; and a
connection no filter chain matches (the listener's own access_log, flag NR).

Each proxy runs with --file-flush-interval-msec 100 in its own work directory (the log path is
relative), so the lines are read from the file while the proxy runs."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.http1 import exchange, request
from tests.support.ports import free_port
from tests.support.proxy import ProxyProcess, render
from tests.support.tcp_upstream import TcpUpstream
from tests.support.upstream import Behaviour, Upstreams

pytestmark = [pytest.mark.differential, pytest.mark.timeout(60)]

HTTP_FMT = (
    "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% "
    "%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %REQ(:AUTHORITY)% %UPSTREAM_CLUSTER% %ROUTE_NAME% "
    "%REQ(X-REQUEST-ID)% %RESPONSE_CODE_DETAILS% %REQ(X-MISSING):3% %REQ(USER-AGENT):4%"
)
TCP_FMT = "%UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS% %RESPONSE_CODE% %PROTOCOL%"
# Listener.access_log: the line of a connection no filter chain matched.
LISTENER_FMT = "%RESPONSE_FLAGS% %RESPONSE_CODE% %BYTES_RECEIVED% %UPSTREAM_CLUSTER% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"

BOOTSTRAP = (
    """
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
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: http.log
              log_format: {text_format_source: {inline_string: "HTTP_FMT\\n"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            validate_clusters: false
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {name: app, match: {prefix: "/app"}, route: {cluster: service1}}
              - {name: rewritten, match: {prefix: "/old"}, route: {cluster: service1, prefix_rewrite: "/new"}}
              - {name: empty, match: {prefix: "/empty"}, route: {cluster: empty}}
              - {name: closed, match: {prefix: "/closed"}, route: {cluster: closed}}
              - {name: unknown, match: {prefix: "/unknown"}, route: {cluster: nosuch}}
              - {name: direct, match: {prefix: "/direct"}, direct_response: {status: 202, body: {inline_string: "hello"}}}
              - {name: moved, match: {prefix: "/moved"}, redirect: {path_redirect: "/there"}}
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
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: tcp.log
              log_format: {text_format_source: {inline_string: "TCP_FMT\\n"}}
  - name: nochain
    address: {socket_address: {address: 127.0.0.1, port_value: {nochain_port}}}
    access_log:
    - name: envoy.access_loggers.file
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
        path: listener.log
        log_format: {text_format_source: {inline_string: "LISTENER_FMT\\n"}}
    filter_chains:
    - filter_chain_match: {destination_port: 1}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: never
          cluster: echo
  clusters:
  - name: service1
    connect_timeout: 2s
    load_assignment:
      cluster_name: service1
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {service1_port}}}}}]}]
  - name: closed
    connect_timeout: 2s
    load_assignment:
      cluster_name: closed
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {closed_port}}}}}]}]
  - name: empty
    connect_timeout: 2s
    load_assignment: {cluster_name: empty}
  - name: echo
    connect_timeout: 2s
    load_assignment:
      cluster_name: echo
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {echo_port}}}}}]}]
""".replace("HTTP_FMT", HTTP_FMT)
    .replace("TCP_FMT", TCP_FMT)
    .replace("LISTENER_FMT", LISTENER_FMT)
)

REQUESTS = (
    ("GET", "/app/one", None),
    ("POST", "/app/two", b"twelve bytes"),
    ("GET", "/old/path?q=1", None),
    ("GET", "/nothing", None),
    ("GET", "/empty", None),
    ("GET", "/closed", None),
    ("GET", "/unknown", None),
    ("POST", "/direct", b"abc"),
    ("GET", "/moved", None),
)

# What Envoy 1.40 writes (the spec; the sidecar must write the same).
EXPECTED = [
    "GET /app/one /app/one HTTP/1.1 200 - 0 5 h.test service1 app rid-0 via_upstream - curl",
    "POST /app/two /app/two HTTP/1.1 200 - 12 5 h.test service1 app rid-1 via_upstream - curl",
    "GET /old/path?q=1 /new/path?q=1 HTTP/1.1 200 - 0 5 h.test service1 rewritten rid-2 via_upstream - curl",
    "GET /nothing /nothing HTTP/1.1 404 NR 0 0 h.test - - rid-3 route_not_found - curl",
    "GET /empty /empty HTTP/1.1 503 UH 0 19 h.test empty empty rid-4 no_healthy_upstream - curl",
]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstreams, TcpUpstream]]:
    echo = TcpUpstream("echo")
    echo.start()
    try:
        with Upstreams(("service1",)) as ups:
            ups["service1"].behave(Behaviour(body=b"hello"))
            yield ups, echo
    finally:
        echo.close()


def _lines(path: Path, n: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            break
        time.sleep(0.05)
    return lines


def _run(kind: str, ups: Upstreams, echo: TcpUpstream) -> tuple[list[str], list[str], list[str]]:
    text, used = render(BOOTSTRAP, closed_port=free_port(), echo_port=echo.port, **ups.ports)
    proc = ProxyProcess(kind, text, extra_args=("--file-flush-interval-msec", "100"))
    try:
        proc.start()
        port = int(str(used["listener_port"]))
        for i, (method, target, body) in enumerate(REQUESTS):
            headers = [("x-request-id", f"rid-{i}"), ("user-agent", "curl/8.0")]
            exchange(port, request(method, target, host="h.test", headers=headers, body=body))
        with socket.create_connection(("127.0.0.1", int(str(used["tcp_listener_port"]))), timeout=5) as s:
            s.sendall(b"0123456789")
            got = b""
            deadline = time.monotonic() + 5
            while len(got) < 10 and time.monotonic() < deadline:
                got += s.recv(100)
            assert got == b"0123456789"
        with socket.create_connection(("127.0.0.1", int(str(used["nochain_port"]))), timeout=5) as s:
            s.sendall(b"x")
        http = _lines(proc.workdir / "http.log", len(REQUESTS))
        # (one line for the readiness probe's connection, one for ours)
        listener = _lines(proc.workdir / "listener.log", 2)
        # The readiness probe opened an empty connection to the tcp listener first: skip those.
        tcp = [x for x in _lines(proc.workdir / "tcp.log", 2) if not x.startswith("echo 0 0")]
        return http, tcp, listener
    finally:
        proc.close()


# Envoy appends the transport failure to a connect failure's details; sidecar's upstream pools do not
# keep the errno, so its details stop at the reset reason (a known gap, pinned here).
ENVOY_UF = "{remote_connection_failure|delayed_connect_error:_Connection_refused}"
SIDECAR_UF = "{remote_connection_failure}"


def test_access_log_lines_match_envoy(upstreams: tuple[Upstreams, TcpUpstream]) -> None:
    ups, echo = upstreams
    envoy_http, envoy_tcp, envoy_listener = _run("envoy", ups, echo)
    sidecar_http, sidecar_tcp, sidecar_listener = _run("sidecar", ups, echo)
    assert envoy_http[: len(EXPECTED)] == EXPECTED
    assert envoy_tcp == ["echo 10 10 - 0 -"]
    assert ENVOY_UF in envoy_http[5] and SIDECAR_UF in sidecar_http[5]
    assert [x.replace(ENVOY_UF, SIDECAR_UF) for x in envoy_http] == sidecar_http
    assert sidecar_tcp == envoy_tcp
    assert envoy_listener == ["NR 0 0 - 127.0.0.1"] * 2
    assert sidecar_listener == envoy_listener

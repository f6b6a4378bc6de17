"""Config files the benchmark generates: nginx.conf for the upstream and Envoy bootstraps.

Owns only text: free loopback ports in, file contents out. It starts nothing. Every proxy under test
gets a bootstrap built by the same function, so Envoy and the sidecar see the same listener, route and
cluster, differing only in port numbers (both run at once, on their own ports).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

LOOPBACK = "127.0.0.1"

# Scenario names, in the order they run and appear in the report.
SCENARIOS = ("l7", "l7-policy", "l4", "mtls")
SCENARIO_TITLES = {
    "l7": 'L7: http_connection_manager, route prefix "/" -> STATIC cluster, router',
    "l7-policy": "L7 with traffic policy: retry_policy (5xx, 2 retries), fault filter at 0%, LEAST_REQUEST",
    "l4": "L4: tcp_proxy -> STATIC cluster",
    "mtls": "mTLS between two proxies of the same kind (client side -> server side -> upstream), Istio-style "
    "SPIFFE certificates; CPU and memory are the pair's",
}

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
_TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on loopback (bound together, then released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def response_body(size: int) -> bytes:
    """The fixed body the upstream returns: printable, no quotes or backslashes (nginx string-safe)."""
    pattern = b"sidecar-bench-0123456789abcdefghijklmnopqrstuvwxyz-"
    return (pattern * (size // len(pattern) + 1))[:size]


def nginx_conf(workdir: Path, port: int, body: bytes) -> str:
    """A one-process nginx serving `body` on every path, keep-alive effectively unlimited.

    `master_process off` keeps nginx to one process so pinning it is one `taskset`; keepalive_requests is
    raised from its default 1000 so that neither the L4 relay nor Envoy's upstream pool sees nginx close
    connections mid-run (wrk would count the close as a read error through tcp_proxy).
    """
    tmp = workdir / "nginx-tmp"
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "nginx-error.log"} warn;
events {{
    worker_connections 4096;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    server_tokens off;
    tcp_nodelay on;
    server {{
        listen {LOOPBACK}:{port} backlog=4096;
        default_type text/plain;
        location / {{
            return 200 "{body.decode("ascii")}";
        }}
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class ProxyPorts:
    """The ports one proxy instance binds: its data listener and its admin address."""

    listener: int
    admin: int


def _socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": LOOPBACK, "port_value": port}}


def _static_cluster(upstream_port: int, lb_policy: str = "ROUND_ROBIN") -> dict[str, Any]:
    return {
        "lb_policy": lb_policy,
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(upstream_port)}}]}],
        },
    }


def _hcm_filter(route: dict[str, Any], filters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    http_filters = [*(filters or []), {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}]
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": "bench_http",
            "codec_type": "AUTO",
            "route_config": {
                "name": "bench_route",
                "virtual_hosts": [{"name": "bench", "domains": ["*"], "routes": [route]}],
            },
            "http_filters": http_filters,
        },
    }


def bootstrap(scenario: str, ports: ProxyPorts, upstream_port: int) -> dict[str, Any]:
    """The bootstrap for `scenario` (see SCENARIOS): one listener to one STATIC cluster, plus admin."""
    lb_policy = "ROUND_ROBIN"
    if scenario == "l7":
        network_filter = _hcm_filter({"match": {"prefix": "/"}, "route": {"cluster": "upstream"}})
    elif scenario == "l7-policy":
        # What a mesh user typically has on (issue 3): a VirtualService retry policy, a fault filter that
        # injects nothing (0%: Istio adds the filter whenever any route has a fault), LEAST_REQUEST.
        route = {
            "match": {"prefix": "/"},
            "route": {
                "cluster": "upstream",
                "timeout": "15s",
                "retry_policy": {"retry_on": "5xx,connect-failure,reset", "num_retries": 2},
            },
        }
        fault = {
            "name": "envoy.filters.http.fault",
            "typed_config": {
                "@type": _FAULT,
                "abort": {"http_status": 503, "percentage": {"numerator": 0, "denominator": "HUNDRED"}},
                "delay": {"fixed_delay": "1s", "percentage": {"numerator": 0, "denominator": "HUNDRED"}},
            },
        }
        network_filter = _hcm_filter(route, [fault])
        lb_policy = "LEAST_REQUEST"
    elif scenario == "l4":
        network_filter = {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": _TCP_PROXY, "stat_prefix": "bench_tcp", "cluster": "upstream"},
        }
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    return {
        "admin": {"address": _socket_address(ports.admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": f"bench_{scenario}",
                    "address": _socket_address(ports.listener),
                    "filter_chains": [{"filters": [network_filter]}],
                }
            ],
            "clusters": [_static_cluster(upstream_port, lb_policy)],
        },
    }


def direct_response_bootstrap(ports: ProxyPorts, body: bytes) -> dict[str, Any]:
    """Fallback upstream when nginx is missing: an Envoy answering 200 `body` itself (direct_response)."""
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": body.decode()}},
    }
    return {
        "admin": {"address": _socket_address(ports.admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "bench_upstream",
                    "address": _socket_address(ports.listener),
                    "filter_chains": [{"filters": [_hcm_filter(route)]}],
                }
            ],
        },
    }


def write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _tls_common(cert: Path, key: Path, root: Path, peer_san: str) -> dict[str, Any]:
    return {
        "tls_certificates": [{"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}],
        "validation_context": {
            "trusted_ca": {"filename": str(root)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer_san}}],
        },
        "alpn_protocols": ["istio-http/1.1", "istio", "http/1.1"],
    }


def mtls_bootstraps(
    client: ProxyPorts, server: ProxyPorts, upstream_port: int, certs: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The "mtls" scenario: a client-side proxy (plain HTTP in, mTLS out, as an Istio sidecar's
    outbound) and a server-side proxy (mTLS in with a required client certificate and a SAN check,
    plain HTTP to the upstream, as an Istio sidecar's inbound).  `certs` is benchmarks.certs.BenchCerts."""
    from benchmarks.certs import spiffe

    upstream_tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{_TLS}.UpstreamTlsContext",
            "sni": "outbound_.80_._.server.bench.svc.cluster.local",
            "common_tls_context": _tls_common(certs.client_cert, certs.client_key, certs.root, spiffe("server")),
        },
    }
    to_server = _static_cluster(server.listener)
    to_server["name"] = "outbound|80||server.bench"
    to_server["load_assignment"]["cluster_name"] = to_server["name"]
    to_server["transport_socket"] = upstream_tls
    client_hcm = _hcm_filter({"match": {"prefix": "/"}, "route": {"cluster": to_server["name"]}})
    client_doc = {
        "admin": {"address": _socket_address(client.admin)},
        "static_resources": {
            "listeners": [
                {"name": "bench_mtls_out", "address": _socket_address(client.listener),
                 "filter_chains": [{"filters": [client_hcm]}]}
            ],
            "clusters": [to_server],
        },
    }
    downstream_tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{_TLS}.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": _tls_common(certs.server_cert, certs.server_key, certs.root, spiffe("client")),
        },
    }
    server_hcm = _hcm_filter({"match": {"prefix": "/"}, "route": {"cluster": "upstream"}})
    server_doc = {
        "admin": {"address": _socket_address(server.admin)},
        "static_resources": {
            "listeners": [
                {"name": "bench_mtls_in", "address": _socket_address(server.listener),
                 "filter_chains": [{"filters": [server_hcm], "transport_socket": downstream_tls}]}
            ],
            "clusters": [_static_cluster(upstream_port)],
        },
    }
    return client_doc, server_doc

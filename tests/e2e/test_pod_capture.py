"""The whole capture path in a pod: init rules, a proxy running as uid 1337, an app, a remote host.

A "pod" namespace holds the app (uid 1000 for its client side, a small HTTP server on 8080) and the
proxy; a "remote" namespace, joined by a veth pair, holds the services the app calls.  `sidecar-init`
installs istio-iptables' rules (iptables or native nftables), then the proxy runs an Istio-shaped
capture bootstrap (virtualOutbound 15001 with use_original_dst, a port listener bound to nothing,
virtualInbound 15006 with the original_dst listener filter, Passthrough/InboundPassthrough ORIGINAL_DST
clusters, 127.0.0.6 as inbound source).  The same test runs with `envoy` as the proxy: it is the
reference for what this configuration does, and the sidecar must do the same.

Checked, for each proxy and each capture mode:
- outbound HTTP to a known port is routed by that port's listener (a route header is added);
- an unknown port passes through to its original destination (PassthroughCluster);
- TLS to a port with an SNI-matched chain passes through by SNI (tls_inspector), end to end verified;
- inbound connections reach the app through 15006 with 127.0.0.6 as their source;
- an excluded outbound port (-o) and an excluded CIDR (-x) are not captured (the proxy never sees them);
- the proxy's own upstream connections are not captured again (no loop: the calls above succeed).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import yaml

from tests.support import netns
from tests.support.ca import TestCA

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]
PROXY_UID = 1337
APP_UID = 1000
EXCLUDED_PORT = 7777
EXCLUDED_CIDR_HOST = "10.201.0.3"  # a second remote address, excluded with -x

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_ORIG_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
_TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"

# Servers: HTTP answers with what it saw (peer, path, headers) as JSON; ECHO prefixes "echo:"; TLS
# completes a handshake with the given certificate and writes "tls-ok".  One process per namespace.
SERVERS = r"""
import json, socket, ssl, sys, threading, http.server
specs = json.loads(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"peer": self.client_address[0], "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()},
                           "server": self.server.server_address[0]}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
def echo(sock):
    while True:
        c, _ = sock.accept()
        def serve(c=c):
            with c:
                data = c.recv(4096)
                c.sendall(b"echo:" + data)
        threading.Thread(target=serve, daemon=True).start()
def tls(sock, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
    while True:
        c, _ = sock.accept()
        def serve(c=c):
            try:
                with ctx.wrap_socket(c, server_side=True) as s:
                    s.sendall(b"tls-ok")
            except OSError:
                pass
        threading.Thread(target=serve, daemon=True).start()
for spec in specs:
    kind, host, port = spec[0], spec[1], spec[2]
    if kind == "http":
        srv = http.server.ThreadingHTTPServer((host, port), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        continue
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(64)
    target = echo if kind == "echo" else tls
    args = (s,) if kind == "echo" else (s, spec[3], spec[4])
    threading.Thread(target=target, args=args, daemon=True).start()
print("ready", flush=True)
threading.Event().wait(120)
"""

# The app's client side, run as APP_UID: one call, its result as JSON on stdout.
CLIENT = r"""
import json, socket, ssl, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "http":
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"GET /reviews/1 HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        d = s.recv(65536)
        if not d: break
        data += d
    head, _, body = data.partition(b"\r\n\r\n")
    print(json.dumps({"status": int(head.split()[1]), "head": head.decode(), "body": json.loads(body)}))
elif kind == "echo":
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"ping")
    print(json.dumps({"reply": s.recv(100).decode()}))
else:
    ctx = ssl.create_default_context(cafile=sys.argv[4])
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="tls.example") as s:
            print(json.dumps({"reply": s.recv(100).decode(), "peer_san": s.getpeercert()["subjectAltName"]}))
"""


def _addr(host: str, port: int) -> dict[str, object]:
    return {"socket_address": {"address": host, "port_value": port}}


def _hcm(prefix: str, cluster: str, header: str) -> dict[str, object]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": prefix,
            "route_config": {
                "name": prefix,
                "virtual_hosts": [
                    {
                        "name": prefix,
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "route": {"cluster": cluster},
                                "request_headers_to_add": [{"header": {"key": "x-mesh", "value": header}}],
                            }
                        ],
                    }
                ],
            },
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
        },
    }


def _tcp(prefix: str, cluster: str) -> dict[str, object]:
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {"@type": _TCP, "stat_prefix": prefix, "cluster": cluster}}


def _static(name: str, host: str, port: int) -> dict[str, object]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(host, port)}}]}]},
    }


def _original_dst(name: str, bind: str | None) -> dict[str, object]:
    c: dict[str, object] = {"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "2s"}
    if bind:
        c["upstream_bind_config"] = {"source_address": {"address": bind, "port_value": 0}}
    return c


def capture_bootstrap(remote_ip: str) -> dict[str, object]:
    """An Istio-shaped sidecar config, reduced to what the checks need."""
    return {
        "admin": {"address": _addr("127.0.0.1", 15000)},
        "static_resources": {
            "listeners": [
                {
                    "name": "virtualOutbound",
                    "address": _addr("0.0.0.0", 15001),
                    "use_original_dst": True,
                    "filter_chains": [{"name": "PassthroughFilterChain", "filters": [_tcp("PassthroughCluster", "PassthroughCluster")]}],
                },
                {
                    "name": "0.0.0.0_80",
                    "address": _addr("0.0.0.0", 80),
                    "bind_to_port": False,
                    "filter_chains": [{"filters": [_hcm("outbound_0.0.0.0_80", "outbound|80||reviews", "outbound")]}],
                },
                {
                    "name": f"{remote_ip}_443",
                    "address": _addr(remote_ip, 443),
                    "bind_to_port": False,
                    "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": _TLS_INSPECTOR}}],
                    "filter_chains": [
                        {"filter_chain_match": {"server_names": ["tls.example"]}, "filters": [_tcp("outbound|443||tls", "outbound|443||tls")]}
                    ],
                },
                {
                    "name": "virtualInbound",
                    "address": _addr("0.0.0.0", 15006),
                    "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": _ORIG_DST}}],
                    "filter_chains": [
                        {"filter_chain_match": {"destination_port": 8080}, "filters": [_hcm("inbound_0.0.0.0_8080", "inbound|8080||", "inbound")]},
                        {"filter_chain_match": {"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}]},
                         "filters": [_tcp("InboundPassthroughCluster", "InboundPassthroughCluster")]},
                    ],
                },
            ],
            "clusters": [
                _original_dst("PassthroughCluster", None),
                _original_dst("InboundPassthroughCluster", "127.0.0.6"),
                _original_dst("inbound|8080||", "127.0.0.6"),
                _static("outbound|80||reviews", remote_ip, 80),
                _static("outbound|443||tls", remote_ip, 443),
            ],
        },
    }


INIT_MODES = {"iptables": (), "nftables": ("--native-nftables",)}


@pytest.fixture
def world() -> Iterator[tuple[netns.Pair, Path, TestCA]]:
    # The proxy and the app run as other uids and read files from here (pytest's tmp_path is 0700).
    tmp_path = Path(tempfile.mkdtemp(prefix="sidecar-pod-"))
    tmp_path.chmod(0o755)
    try:
        yield from _world(tmp_path)
    finally:
        for f in _OPEN_FILES:
            f.close()
        _OPEN_FILES.clear()
        shutil.rmtree(tmp_path, ignore_errors=True)


_OPEN_FILES: list[IO[str]] = []  # pipes and logs of this test's processes, closed at teardown


def _world(tmp_path: Path) -> Iterator[tuple[netns.Pair, Path, TestCA]]:
    ca = TestCA(tmp_path / "ca")
    (tmp_path / "ca").chmod(0o755)
    server = ca.issue("tls-server", dns=["tls.example"])
    for p in (ca.root_path, server.cert_path, server.key_path):
        p.chmod(0o644)
    with netns.pod_and_remote() as pair:
        # A second remote address for the excluded-CIDR check.
        pair.remote.run("ip", "addr", "add", f"{EXCLUDED_CIDR_HOST}/24", "dev", "eth0")
        remote_specs = [
            ["http", "0.0.0.0", 80],
            ["echo", "0.0.0.0", 9000],
            ["echo", "0.0.0.0", EXCLUDED_PORT],
            ["tls", "0.0.0.0", 443, str(server.cert_path), str(server.key_path)],
        ]
        _start(pair.remote, remote_specs)
        _start(pair.pod, [["http", "0.0.0.0", 8080]])
        yield pair, tmp_path, ca


def _start(ns: netns.NetNS, specs: list[list[object]]) -> None:
    proc = ns.popen(sys.executable, "-I", "-c", SERVERS, json.dumps(specs), stdout=-1, stderr=-1, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    _OPEN_FILES.extend((proc.stdout, proc.stderr))
    line = proc.stdout.readline()
    assert line.strip() == "ready", line


def _start_proxy(kind: str, pair: netns.Pair, tmp: Path) -> None:
    path = tmp / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(capture_bootstrap(pair.remote_ip)))
    path.chmod(0o644)
    log = open(tmp / f"{kind}.log", "w")  # noqa: SIM115 - closed at teardown (_OPEN_FILES)
    _OPEN_FILES.append(log)
    os.chmod(log.name, 0o666)
    if kind == "envoy":
        argv = [str(REPO / ".venv" / "bin" / "envoy"), "-c", str(path), "--concurrency", "1",
                "--disable-hot-restart", "-l", "warning", "--base-id", str(os.getpid() % 50000 + 1000)]
    else:
        argv = [sys.executable, "-m", "sidecar", "-c", str(path), "--concurrency", "1", "-l", "warning"]
    pair.pod.popen(*argv, user=PROXY_UID, read_all=True, stdout=log, stderr=log, cwd=str(REPO))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if _admin(pair, "/ready").strip() == "LIVE":
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{kind} did not become ready:\n{(tmp / f'{kind}.log').read_text()[-3000:]}")


def _admin(pair: netns.Pair, path: str) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:15000{path}", timeout=3) as r:
            return r.read().decode()

    return pair.pod.call(get)


def _stat(pair: netns.Pair, name: str) -> int:
    for line in _admin(pair, "/stats").splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def _client(pair: netns.Pair, *args: str) -> dict[str, object]:
    done = pair.pod.python(CLIENT, *args, user=APP_UID, timeout=20, read_all=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", sorted(INIT_MODES))
@pytest.mark.parametrize("proxy", ["sidecar", "envoy"])
def test_pod_traffic_goes_through_the_proxy(proxy: str, mode: str, world: tuple[netns.Pair, Path, TestCA]) -> None:
    pair, tmp, ca = world
    flags = ["-p", "15001", "-z", "15006", "-u", str(PROXY_UID), "-m", "REDIRECT", "-i", "*", "-b", "*",
             "-d", "15090,15021,15020", "-o", str(EXCLUDED_PORT), "-x", f"{EXCLUDED_CIDR_HOST}/32",
             *INIT_MODES[mode]]
    pair.pod.run(sys.executable, "-m", "init", *flags, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=30)
    _start_proxy(proxy, pair, tmp)
    outbound_cx = "listener.0.0.0.0_15001.downstream_cx_total"

    # Outbound HTTP on port 80: handed to the 0.0.0.0_80 listener, routed, its route header added.
    r = _client(pair, "http", pair.remote_ip, "80")
    assert r["status"] == 200, r
    body = r["body"]
    assert isinstance(body, dict)
    assert body["headers"]["x-mesh"] == "outbound", body
    assert body["path"] == "/reviews/1"
    assert "x-envoy-upstream-service-time" in str(r["head"]).lower()

    # An unknown port passes through to where the app was going.
    before = _stat(pair, outbound_cx)
    assert _client(pair, "echo", pair.remote_ip, "9000") == {"reply": "echo:ping"}
    assert _stat(pair, outbound_cx) == before + 1
    assert _stat(pair, "cluster.PassthroughCluster.upstream_cx_total") >= 1

    # TLS passthrough chosen by SNI: the app verifies the remote's certificate end to end.
    t = _client(pair, "tls", pair.remote_ip, "443", str(ca.root_path))
    assert t["reply"] == "tls-ok"
    assert ["DNS", "tls.example"] in t["peer_san"]  # type: ignore[operator]
    assert _stat(pair, "cluster.outbound|443||tls.upstream_cx_total") >= 1

    # Excluded port and excluded CIDR: not captured, the proxy never sees them.
    before = _stat(pair, outbound_cx)
    assert _client(pair, "echo", pair.remote_ip, str(EXCLUDED_PORT)) == {"reply": "echo:ping"}
    assert _client(pair, "echo", EXCLUDED_CIDR_HOST, "9000") == {"reply": "echo:ping"}
    assert _stat(pair, outbound_cx) == before

    # Inbound: the remote calls the app; the app sees the proxy's 127.0.0.6 as its peer.
    def inbound() -> dict[str, object]:
        with urllib.request.urlopen(f"http://{pair.pod_ip}:8080/ratings", timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    seen = pair.remote.call(inbound)
    assert seen["peer"] == "127.0.0.6", seen
    assert seen["headers"]["x-mesh"] == "inbound", seen  # type: ignore[index]
    assert _stat(pair, "listener.0.0.0.0_15006.downstream_cx_total") >= 1

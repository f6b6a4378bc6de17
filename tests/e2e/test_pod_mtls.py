"""Two pods talking mTLS through their sidecars, with real capture rules (iptables), as Istio runs them.

Pod A (namespace "pod", 10.201.0.1) and pod B (namespace "remote", 10.201.0.2) are joined by a veth
pair.  In each, `sidecar-init` installs istio-iptables' rules and the sidecar runs as uid 1337; the
apps run as uid 1000 (A's client) and as B's HTTP server on 8080.

- A's app calls the service address 10.96.0.10:80 (a ClusterIP: A has a default route, nothing
  answers there).  Capture hands the connection to A's sidecar (15001, original destination), whose
  `0.0.0.0_80` listener routes it to `outbound|80||b.default.svc.cluster.local`: endpoint B:8080 with
  `tlsMode: istio`, so the transport_socket_matches entry originates mTLS (A's SPIFFE certificate,
  ROOTCA, B's identity as SAN matcher, ALPN istio-http/1.1, Istio's SNI).
- B's capture sends the connection to B's sidecar (15006); tls_inspector and the original
  destination pick the TLS chain for port 8080 (require_client_certificate, A's identity), the HCM
  (x-forwarded-client-cert APPEND_FORWARD with subject/uri/dns, Istio's inbound setting) sends it to
  the app from 127.0.0.6.  B's app sees A's identity in x-forwarded-client-cert, and B's sidecar
  counts the handshake (listener.0.0.0.0_15006.ssl.handshake).
- The same test runs with envoy on both sides, STRICT: the reference for every assertion.
- A plaintext client in A's namespace that bypasses A's sidecar (it runs as uid 1337, which the
  capture rules let through) reaches B:8080 in plaintext: STRICT refuses it (no chain matches
  raw_buffer: no_filter_chain_match), PERMISSIVE serves it (its plaintext chain), without XFCC.
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import yaml

from tests.support import netns
from tests.support.ca import Issued, TestCA

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]
PROXY_UID = 1337
APP_UID = 1000
SERVICE_IP = "10.96.0.10"
A_ID = "spiffe://cluster.local/ns/default/sa/a"
B_ID = "spiffe://cluster.local/ns/default/sa/b"
SNI = "outbound_.80_._.b.default.svc.cluster.local"
ISTIO_ALPNS = ["istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"]
INIT_FLAGS = [
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    str(PROXY_UID),
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
]

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_ORIG_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
_TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
_UP_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_DOWN_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_RAW = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"

# B's app: answers GET with what it saw (peer and headers) as JSON.
APP = r"""
import json, threading, http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"peer": self.client_address[0], "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait(120)
"""

# One HTTP/1.1 call; prints {"status", "body"} or {"error"} as JSON (a refused call is an answer).
CLIENT = r"""
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"GET /ratings/1 HTTP/1.1\r\nHost: b.default.svc.cluster.local\r\n"
              b"x-forwarded-client-cert: By=spiffe://forged;Hash=00\r\nConnection: close\r\n\r\n")
    data = b""
    for _ in range(1000):
        d = s.recv(65536)
        if not d: break
        data += d
except OSError as exc:
    print(json.dumps({"error": repr(exc)})); sys.exit(0)
if not data:
    print(json.dumps({"error": "closed without a response"})); sys.exit(0)
head, _, body = data.partition(b"\r\n\r\n")
status = int(head.split()[1])
print(json.dumps({"status": status, "body": json.loads(body) if status == 200 else body.decode()}))
"""


def _addr(host: str, port: int) -> dict[str, object]:
    return {"socket_address": {"address": host, "port_value": port}}


def _hcm(prefix: str, cluster: str, **extra: object) -> dict[str, object]:
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
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                    }
                ],
            },
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
            **extra,
        },
    }


def _passthrough(bind: str | None) -> dict[str, object]:
    name = "InboundPassthroughCluster" if bind else "PassthroughCluster"
    c: dict[str, object] = {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "2s",
    }
    if bind:
        c["upstream_bind_config"] = {"source_address": {"address": bind, "port_value": 0}}
    return c


def _secrets(cert: Issued, root: Path) -> list[dict[str, object]]:
    return [
        {
            "name": "default",
            "tls_certificate": {
                "certificate_chain": {"filename": str(cert.cert_path)},
                "private_key": {"filename": str(cert.key_path)},
            },
        },
        {"name": "ROOTCA", "validation_context": {"trusted_ca": {"filename": str(root)}}},
    ]


def _common_tls(peer_id: str, alpn: list[str], exact: bool) -> dict[str, object]:
    matcher = {"exact": peer_id} if exact else {"prefix": "spiffe://cluster.local/"}
    return {
        "alpn_protocols": alpn,
        "tls_certificate_sds_secret_configs": [{"name": "default"}],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": matcher}]
            },
            "validation_context_sds_secret_config": {"name": "ROOTCA"},
        },
    }


def outbound_bootstrap(cert: Issued, root: Path, b_ip: str) -> dict[str, object]:
    """Pod A: virtualOutbound, the 0.0.0.0_80 listener, the mTLS cluster to B."""
    cluster = "outbound|80||b.default.svc.cluster.local"
    return {
        "admin": {"address": _addr("127.0.0.1", 15000)},
        "static_resources": {
            "listeners": [
                {
                    "name": "virtualOutbound",
                    "address": _addr("0.0.0.0", 15001),
                    "use_original_dst": True,
                    "filter_chains": [
                        {
                            "name": "PassthroughFilterChain",
                            "filters": [
                                {
                                    "name": "envoy.filters.network.tcp_proxy",
                                    "typed_config": {
                                        "@type": _TCP,
                                        "stat_prefix": "PassthroughCluster",
                                        "cluster": "PassthroughCluster",
                                    },
                                }
                            ],
                        }
                    ],
                },
                {
                    "name": "0.0.0.0_80",
                    "address": _addr("0.0.0.0", 80),
                    "bind_to_port": False,
                    "filter_chains": [{"filters": [_hcm("outbound_0.0.0.0_80", cluster)]}],
                },
            ],
            "clusters": [
                _passthrough(None),
                {
                    "name": cluster,
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {
                        "cluster_name": cluster,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {"address": _addr(b_ip, 8080)},
                                        "metadata": {
                                            "filter_metadata": {
                                                "envoy.transport_socket_match": {"tlsMode": "istio"}
                                            }
                                        },
                                    }
                                ]
                            }
                        ],
                    },
                    "transport_socket_matches": [
                        {
                            "name": "tlsMode-istio",
                            "match": {"tlsMode": "istio"},
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": {
                                    "@type": _UP_TLS,
                                    "sni": SNI,
                                    "common_tls_context": _common_tls(
                                        B_ID, ["istio-http/1.1", "istio"], exact=True
                                    ),
                                },
                            },
                        },
                        {
                            "name": "tlsMode-disabled",
                            "match": {},
                            "transport_socket": {
                                "name": "envoy.transport_sockets.raw_buffer",
                                "typed_config": {"@type": _RAW},
                            },
                        },
                    ],
                },
            ],
            "secrets": _secrets(cert, root),
        },
    }


def inbound_bootstrap(cert: Issued, root: Path, permissive: bool) -> dict[str, object]:
    """Pod B: virtualInbound with the TLS chain for 8080 (and, PERMISSIVE, the plaintext one)."""
    xfcc = {
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True},
    }
    tls_socket = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _DOWN_TLS,
            "require_client_certificate": True,
            "common_tls_context": _common_tls(A_ID, ["h2", "http/1.1"], exact=False),
        },
    }
    chains: list[dict[str, object]] = [
        {
            "name": "0.0.0.0_8080_mtls",
            "filter_chain_match": {
                "destination_port": 8080,
                "transport_protocol": "tls",
                "application_protocols": ISTIO_ALPNS,
            },
            "transport_socket": tls_socket,
            "filters": [_hcm("inbound_0.0.0.0_8080", "inbound|8080||", **xfcc)],
        }
    ]
    if permissive:
        chains.append(
            {
                "name": "0.0.0.0_8080_plaintext",
                "filter_chain_match": {"destination_port": 8080, "transport_protocol": "raw_buffer"},
                "filters": [_hcm("inbound_0.0.0.0_8080", "inbound|8080||", **xfcc)],
            }
        )
    return {
        "admin": {"address": _addr("127.0.0.1", 15000)},
        "static_resources": {
            "listeners": [
                {
                    "name": "virtualInbound",
                    "address": _addr("0.0.0.0", 15006),
                    "listener_filters": [
                        {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": _ORIG_DST}},
                        {
                            "name": "envoy.filters.listener.tls_inspector",
                            "typed_config": {"@type": _TLS_INSPECTOR},
                        },
                    ],
                    "filter_chains": chains,
                }
            ],
            "clusters": [
                {
                    "name": "inbound|8080||",
                    "type": "ORIGINAL_DST",
                    "lb_policy": "CLUSTER_PROVIDED",
                    "connect_timeout": "2s",
                    "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
                },
            ],
            "secrets": _secrets(cert, root),
        },
    }


@dataclass
class World:
    pair: netns.Pair
    tmp: Path
    ca: TestCA
    a: Issued
    b: Issued


_OPEN_FILES: list[IO[str]] = []


@pytest.fixture
def world() -> Iterator[World]:
    # The proxies and apps run as other uids and read files from here (pytest's tmp_path is 0700).
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-pod-mtls-"))
    tmp.chmod(0o755)
    try:
        ca = TestCA(tmp / "ca")
        (tmp / "ca").chmod(0o755)
        a, b = ca.workload("default", "a"), ca.workload("default", "b")
        for p in (ca.root_path, a.cert_path, a.key_path, b.cert_path, b.key_path):
            p.chmod(0o644)
        with netns.pod_and_remote(ipv6=False) as pair:
            # The service VIP is routed off-pod (as a ClusterIP is): only capture makes it answer.
            pair.pod.run("ip", "route", "add", "default", "dev", "eth0")
            proc = pair.remote.popen(sys.executable, "-I", "-c", APP, stdout=-1, stderr=-1, text=True)
            assert proc.stdout is not None and proc.stderr is not None
            _OPEN_FILES.extend((proc.stdout, proc.stderr))
            line = proc.stdout.readline()
            assert line.strip() == "ready", line
            yield World(pair, tmp, ca, a, b)
    finally:
        for f in _OPEN_FILES:
            f.close()
        _OPEN_FILES.clear()
        shutil.rmtree(tmp, ignore_errors=True)


def _init(ns: netns.NetNS) -> None:
    ns.run(sys.executable, "-m", "init", *INIT_FLAGS, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=30)


def _start_proxy(kind: str, ns: netns.NetNS, name: str, bootstrap: dict[str, object], tmp: Path) -> None:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    path.chmod(0o644)
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - closed at teardown (_OPEN_FILES)
    _OPEN_FILES.append(log)
    os.chmod(log.name, 0o666)
    if kind == "envoy":
        base_id = str((os.getpid() * 2 + (name == "b")) % 50000 + 1000)
        argv = [
            str(REPO / ".venv" / "bin" / "envoy"),
            "-c",
            str(path),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warning",
            "--base-id",
            base_id,
        ]
    else:
        argv = [sys.executable, "-m", "sidecar", "-c", str(path), "--concurrency", "1", "-l", "warning"]
    ns.popen(*argv, user=PROXY_UID, read_all=True, stdout=log, stderr=log, cwd=str(REPO))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if _admin(ns, "/ready").strip() == "LIVE":
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{name} did not become ready:\n{(tmp / f'{name}.log').read_text()[-3000:]}")


def _admin(ns: netns.NetNS, path: str) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:15000{path}", timeout=3) as r:
            text: str = r.read().decode()
            return text

    return ns.call(get)


def _stat(ns: netns.NetNS, name: str) -> int:
    for line in _admin(ns, "/stats").splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def _call(ns: netns.NetNS, host: str, port: int, uid: int) -> dict[str, object]:
    done = ns.python(CLIENT, host, str(port), user=uid, timeout=20, read_all=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("mode", "proxy"),
    [("STRICT", "sidecar"), ("PERMISSIVE", "sidecar"), ("STRICT", "envoy")],  # envoy: the reference
)
def test_two_pods_talk_mtls_through_their_sidecars(mode: str, proxy: str, world: World) -> None:
    pair = world.pair
    pod_a, pod_b = pair.pod, pair.remote
    for ns in (pod_a, pod_b):
        _init(ns)
    b_config = inbound_bootstrap(world.b, world.ca.root_path, mode == "PERMISSIVE")
    _start_proxy(proxy, pod_b, "b", b_config, world.tmp)
    _start_proxy(
        proxy, pod_a, "a", outbound_bootstrap(world.a, world.ca.root_path, pair.remote_ip), world.tmp
    )

    # A's app calls B's service: A's sidecar originates mTLS, B's terminates it.
    r = _call(pod_a, SERVICE_IP, 80, APP_UID)
    assert r.get("status") == 200, (
        r,
        (world.tmp / "a.log").read_text()[-2000:],
        (world.tmp / "b.log").read_text()[-2000:],
    )
    seen = r["body"]
    assert isinstance(seen, dict)
    assert seen["path"] == "/ratings/1"
    assert seen["peer"] == "127.0.0.6"  # from B's sidecar (inbound cluster's bind address)
    # B's sidecar saw A's certificate: XFCC (Istio's inbound APPEND_FORWARD) names both identities.
    # A's sidecar sanitized the forged header the app sent (SANITIZE, plaintext from the app).
    xfcc = seen["headers"]["x-forwarded-client-cert"]
    assert xfcc.startswith(f"By={B_ID};Hash="), xfcc
    assert xfcc.endswith(f';Subject="";URI={A_ID}'), xfcc
    assert "forged" not in xfcc
    assert _stat(pod_b, "listener.0.0.0.0_15006.ssl.handshake") >= 1
    assert _stat(pod_a, "cluster.outbound|80||b.default.svc.cluster.local.ssl.handshake") >= 1
    assert _stat(pod_a, "listener.0.0.0.0_80.downstream_cx_total") >= 1  # handed over by 15001

    # A plaintext client in A's namespace bypassing A's sidecar (uid 1337 is not captured).
    before = _stat(pod_b, "listener.0.0.0.0_15006.no_filter_chain_match")
    plain = _call(pod_a, pair.remote_ip, 8080, PROXY_UID)
    if mode == "STRICT":
        assert "error" in plain, plain
        assert _stat(pod_b, "listener.0.0.0.0_15006.no_filter_chain_match") == before + 1
    else:
        assert plain.get("status") == 200, plain
        body = plain["body"]
        assert isinstance(body, dict)
        assert "x-forwarded-client-cert" not in body["headers"]  # not mTLS: the forged one is gone
        assert _stat(pod_b, "listener.0.0.0.0_15006.no_filter_chain_match") == before

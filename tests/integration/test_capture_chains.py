"""The sidecar process choosing filter chains on loopback: by source and destination address (several
127.0.0.x), by SNI from a real TLS ClientHello (tcp_proxy passthrough, the handshake completes with
the chosen upstream), by the http_inspector's verdict; listener filter timeouts; no matching chain;
upstream_bind_config's source address; the BlackHoleCluster."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.http1 import Client, request
from tests.support.loop_thread import LoopThread
from tests.support.proxy import ProxyProcess, start_proxy

pytestmark = pytest.mark.timeout(60)

LF = "type.googleapis.com/envoy.extensions.filters.listener."
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


class Recorder:
    """A TCP server that answers each connection with its own name (then echoes), and records who
    connected (peer address) and what arrived.  Runs on a given event loop."""

    def __init__(self, name: str, tls: ssl.SSLContext | None = None, http: bool = False) -> None:
        self.name = name
        self.tls = tls
        self.http = http  # answer one HTTP/1.1 request with 200 and the name instead
        self.port = 0
        self.peers: list[tuple[str, int]] = []
        self.received: list[bytes] = []
        self.cond = threading.Condition()
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Recorder:
        self.server = await asyncio.start_server(self._serve, host, port, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        with self.cond:
            self.peers.append((peer[0], peer[1]))
            self.received.append(b"")
            i = len(self.received) - 1
            self.cond.notify_all()
        try:
            if self.http:
                head = await reader.readuntil(b"\r\n\r\n")
                with self.cond:
                    self.received[i] = head
                    self.cond.notify_all()
                body = self.name.encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                writer.close()
                return
            writer.write(self.name.encode() + b"\n")
            for _ in range(10_000):  # bounded: one read per pass
                data = await reader.read(65536)
                if not data:
                    break
                with self.cond:
                    self.received[i] += data
                    self.cond.notify_all()
                writer.write(data)
            writer.close()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass

    def wait(self, n: int = 1, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.peers) >= n, timeout)


def tcp_chain(name: str, cluster: str, **match: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": name,
        "filters": [{"name": "tcp", "typed_config": {"@type": TCP, "stat_prefix": name, "cluster": cluster}}],
    }
    if match:
        d["filter_chain_match"] = match
    return d


def static(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
        **extra,
    }


def bootstrap(listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> str:
    text = yaml.safe_dump({"static_resources": {"listeners": listeners, "clusters": clusters}}, sort_keys=False)
    return "admin: {address: {socket_address: {address: 127.0.0.1, port_value: {admin_port}}}}\n" + text


def cidr(ip: str, n: int = 32) -> dict[str, Any]:
    return {"address_prefix": ip, "prefix_len": n}


def stat(proc: ProxyProcess, name: str) -> int:
    with Client(int(proc.admin_port or 0)) as c:
        c.send(request("GET", f"/stats?filter=^{name}$", host="admin"))
        for line in c.read_response().text.splitlines():
            k, _, v = line.partition(": ")
            if k == name:
                return int(v)
    return 0


def connect(port: int, dst: str = "127.0.0.1", src: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.settimeout(5)
    s.bind((src, 0))
    s.connect((dst, port))
    return s


def closed(s: socket.socket) -> bool:
    """The proxy closed the connection (FIN, or RST when it closed with our bytes unread)."""
    try:
        return s.recv(10) == b""
    except ConnectionResetError:
        return True


def first_line(s: socket.socket) -> bytes:
    out = b""
    for _ in range(100):
        chunk = s.recv(100)
        if not chunk:
            break
        out += chunk
        if b"\n" in out:
            break
    return out.split(b"\n")[0]


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread("capture-upstreams")
    yield lt
    lt.close()


def upstreams(loop: LoopThread, *names: str, tls: ssl.SSLContext | None = None) -> dict[str, Recorder]:
    return {n: loop.call(Recorder(n, tls).start()) for n in names}


def test_source_and_destination_prefixes(loop: LoopThread) -> None:
    ups = upstreams(loop, "dst5", "src2", "src24", "default")
    lst = {
        "name": "prefixes",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": "{main_port}"}},
        "filter_chains": [
            tcp_chain("dst5", "dst5", prefix_ranges=[cidr("127.0.0.5")]),
            tcp_chain("src2", "src2", source_prefix_ranges=[cidr("127.0.0.2")]),
            tcp_chain("src24", "src24", source_prefix_ranges=[cidr("127.0.0.0", 24)]),
        ],
        "default_filter_chain": tcp_chain("default", "default"),
    }
    text = bootstrap([lst], [static(n, u.port) for n, u in ups.items()]).replace("'{main_port}'", "{main_port}")
    proc, used = start_proxy("sidecar", text)
    try:
        port = int(str(used["main_port"]))
        before = stat(proc, f"listener.0.0.0.0_{port}.downstream_cx_total")  # the readiness probe's
        for src, dst, expected in [
            ("127.0.0.2", "127.0.0.1", b"src2"),
            ("127.0.0.3", "127.0.0.1", b"src24"),
            ("127.0.0.2", "127.0.0.5", b"dst5"),  # the destination decides before the source
            ("127.1.0.1", "127.0.0.1", b"default"),  # src24's branch has no match: the default chain
        ]:
            with connect(port, dst, src) as s:
                assert first_line(s) == expected, (src, dst)
        assert ups["src2"].peers and ups["dst5"].peers and ups["default"].peers
        assert stat(proc, f"listener.0.0.0.0_{port}.downstream_cx_total") - before == 4
    finally:
        proc.close()
        for u in ups.values():
            loop.call(u.stop())


def self_signed(tmp: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return ctx


def test_sni_picks_the_chain_and_tls_passes_through(loop: LoopThread, tmp_path: Path) -> None:
    server_ctx = self_signed(tmp_path)
    ups = upstreams(loop, "exact", "wildcard", "tls-other", tls=server_ctx)
    ups.update(upstreams(loop, "plain"))
    lst = {
        "name": "sni",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": "{main_port}"}},
        "listener_filters": [{"name": "tls", "typed_config": {"@type": LF + "tls_inspector.v3.TlsInspector"}}],
        "filter_chains": [
            tcp_chain("exact", "exact", server_names=["a.example.com"]),
            tcp_chain("wildcard", "wildcard", server_names=["*.example.com"]),
            tcp_chain("tls-other", "tls-other", transport_protocol="tls"),
            tcp_chain("plain", "plain", transport_protocol="raw_buffer"),
        ],
    }
    text = bootstrap([lst], [static(n, u.port) for n, u in ups.items()]).replace("'{main_port}'", "{main_port}")
    proc, used = start_proxy("sidecar", text)
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    try:
        port = int(str(used["main_port"]))
        for sni, expected in [("A.example.com", b"exact"), ("b.example.com", b"wildcard"), ("other.org", b"tls-other")]:
            with connect(port) as raw, client_ctx.wrap_socket(raw, server_hostname=sni) as s:
                # The handshake went through the proxy untouched, to the upstream the SNI chose.
                assert first_line(s) == expected
                s.sendall(b"ping")
                assert s.recv(4) == b"ping"
        with connect(port) as s:
            s.sendall(b"not tls\n")
            assert first_line(s) == b"plain"
        assert stat(proc, "tls_inspector.tls_found") == 3
        assert stat(proc, "tls_inspector.sni_found") == 3
        assert stat(proc, "tls_inspector.tls_not_found") == 1
    finally:
        proc.close()
        for u in ups.values():
            loop.call(u.stop())


def test_listener_filter_timeout_closes_or_continues(loop: LoopThread) -> None:
    ups = upstreams(loop, "http", "other")

    def lst(name: str, cont: bool) -> dict[str, Any]:
        return {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": f"{{{name}_port}}"}},
            "listener_filters": [{"name": "http", "typed_config": {"@type": LF + "http_inspector.v3.HttpInspector"}}],
            "listener_filters_timeout": "0.3s",
            "continue_on_listener_filters_timeout": cont,
            "filter_chains": [
                tcp_chain("http", "http", application_protocols=["http/1.1"]),
                tcp_chain("other", "other"),
            ],
        }

    text = bootstrap([lst("closing", False), lst("continuing", True)], [static(n, u.port) for n, u in ups.items()])
    text = text.replace("'{closing_port}'", "{closing_port}").replace("'{continuing_port}'", "{continuing_port}")
    proc, used = start_proxy("sidecar", text)
    try:
        closing, continuing = int(str(used["closing_port"])), int(str(used["continuing_port"]))
        with connect(closing) as s:
            s.sendall(b"GET / HT")  # never completes the request line
            assert closed(s)  # by the timeout
        with connect(continuing) as s:
            s.sendall(b"GET / HT")
            assert first_line(s) == b"other"  # no verdict: the chain without application_protocols
            s.sendall(b"TP/1.1\r\n")
            assert ups["other"].wait()
        with connect(continuing) as s:
            s.sendall(b"GET / HTTP/1.1\r\n")
            assert first_line(s) == b"http"
        # The peer half-closes before the inspector could decide: closed at once (a remote close),
        # not carried on to a chain as a timeout would be.
        remote_close = f"listener.127.0.0.1_{continuing}.downstream_listener_filter_remote_close"
        before = stat(proc, remote_close)  # the readiness probe's connection was one
        with connect(continuing) as s:
            s.sendall(b"GET / HT")
            s.shutdown(socket.SHUT_WR)
            assert closed(s)
        assert stat(proc, remote_close) - before == 1
        assert len(ups["other"].peers) == 1
        assert not ups["http"].peers[1:]
        assert stat(proc, f"listener.127.0.0.1_{closing}.downstream_pre_cx_timeout") == 1
        assert stat(proc, f"listener.127.0.0.1_{continuing}.downstream_pre_cx_timeout") == 1
        assert stat(proc, "http_inspector.http11_found") == 1
    finally:
        proc.close()
        for u in ups.values():
            loop.call(u.stop())


def test_no_chain_closes_and_counts(loop: LoopThread) -> None:
    ups = upstreams(loop, "only")
    lst = {
        "name": "strict",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": "{main_port}"}},
        "filter_chains": [tcp_chain("only", "only", source_prefix_ranges=[cidr("127.0.0.2")])],
    }
    text = bootstrap([lst], [static("only", ups["only"].port)]).replace("'{main_port}'", "{main_port}")
    proc, used = start_proxy("sidecar", text)
    try:
        port = int(str(used["main_port"]))
        before = stat(proc, f"listener.127.0.0.1_{port}.no_filter_chain_match")  # the readiness probe
        with connect(port, src="127.0.0.3") as s:
            assert closed(s)
        with connect(port, src="127.0.0.2") as s:
            assert first_line(s) == b"only"
        assert stat(proc, f"listener.127.0.0.1_{port}.no_filter_chain_match") - before == 1
    finally:
        proc.close()
        loop.call(ups["only"].stop())


def test_upstream_bind_config_and_blackhole(loop: LoopThread) -> None:
    ups = upstreams(loop, "bound")
    listeners = [
        {
            "name": "bound",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": "{bound_port}"}},
            "filter_chains": [tcp_chain("bound", "bound")],
        },
        {
            "name": "blackhole",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": "{blackhole_port}"}},
            "filter_chains": [tcp_chain("blackhole", "BlackHoleCluster")],
        },
        {
            "name": "blackhole_http",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": "{http_port}"}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "hcm",
                            "typed_config": {
                                "@type": HCM,
                                "stat_prefix": "bh",
                                "http_filters": [
                                    {"name": "router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                                ],
                                "route_config": {
                                    "virtual_hosts": [
                                        {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "BlackHoleCluster"}}]}
                                    ]
                                },
                            },
                        }
                    ]
                }
            ],
        },
    ]
    clusters = [
        static("bound", ups["bound"].port, upstream_bind_config={"source_address": {"address": "127.0.0.6", "port_value": 0}}),
        {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"},
    ]
    text = bootstrap(listeners, clusters)
    for p in ("bound", "blackhole", "http"):
        text = text.replace(f"'{{{p}_port}}'", f"{{{p}_port}}")
    proc, used = start_proxy("sidecar", text)
    try:
        with connect(int(str(used["bound_port"]))) as s:
            assert first_line(s) == b"bound"
        assert ups["bound"].peers[0][0] == "127.0.0.6"  # Istio's inbound passthrough source
        with connect(int(str(used["blackhole_port"]))) as s:
            assert closed(s)
        with Client(int(str(used["http_port"]))) as c:
            resp = c.exchange(request("GET", "/", host="x"))
            assert (resp.status, resp.body) == (503, b"no healthy upstream")
    finally:
        proc.close()
        loop.call(ups["bound"].stop())


def test_http_inspector_hands_http_to_the_hcm(loop: LoopThread) -> None:
    """The bytes the inspector peeked are still there for the chain's protocol to read."""
    ups = upstreams(loop, "other")
    hcm = {
        "@type": HCM,
        "stat_prefix": "in",
        "http_filters": [{"name": "router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "via-hcm"}}}],
                }
            ]
        },
    }
    lst = {
        "name": "sniffing",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": "{main_port}"}},
        "listener_filters": [
            {"name": "tls", "typed_config": {"@type": LF + "tls_inspector.v3.TlsInspector"}},
            {"name": "http", "typed_config": {"@type": LF + "http_inspector.v3.HttpInspector"}},
        ],
        "filter_chains": [
            {"name": "http", "filter_chain_match": {"application_protocols": ["http/1.1", "http/1.0"]}, "filters": [{"name": "hcm", "typed_config": hcm}]},
            tcp_chain("other", "other"),
        ],
    }
    text = bootstrap([lst], [static("other", ups["other"].port)]).replace("'{main_port}'", "{main_port}")
    proc, used = start_proxy("sidecar", text)
    try:
        port = int(str(used["main_port"]))
        with Client(port) as c:
            for _ in range(2):  # the connection stays with the HCM after the first request
                resp = c.exchange(request("GET", "/", host="x"))
                assert (resp.status, resp.body) == (200, b"via-hcm")
        with connect(port) as s:
            s.sendall(b"PING\n")
            assert first_line(s) == b"other"
        # The peeked bytes reached the upstream too.
        with ups["other"].cond:
            assert ups["other"].cond.wait_for(lambda: ups["other"].received == [b"PING\n"], 5)
    finally:
        proc.close()
        loop.call(ups["other"].stop())

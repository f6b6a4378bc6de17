"""Certificate rotation under load, between two sidecar processes: the server side's workload
certificate files (its `default` secret) are rewritten every second while requests run through
the client side and straight to the server over fresh TLS connections and over one long-lived
one.  No request may fail, new handshakes must present the new certificates, and the connection
opened before the first rotation must still work after the last (Envoy's file-watch rotation:
new contexts for new handshakes, nothing cut)."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.ca import TestCA, write_atomically
from tests.support.mtls_bootstraps import client_side, server_side, start
from tests.support.upstream import Upstreams

pytestmark = pytest.mark.timeout(60)
ROTATIONS = 4


@pytest.fixture
def app() -> Iterator[Upstreams]:
    with Upstreams(("app",)) as ups:
        yield ups


def _client_ctx(ca: TestCA, cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca.root_path))
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


def _fresh_tls_request(ctx: ssl.SSLContext, port: int) -> tuple[int, int]:
    """(status, serial of the server certificate) over a new TLS connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        der = s.getpeercert(binary_form=True)
        assert der is not None
        s.sendall(b"GET /private HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = b""
        for _ in range(100):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
        return status, x509.load_der_x509_certificate(der).serial_number


def test_rotation_under_load(tmp_path: Path, app: Upstreams) -> None:
    ca = TestCA(tmp_path / "ca")
    cert_path, key_path = tmp_path / "cert-chain.pem", tmp_path / "key.pem"
    first = ca.workload("default", "server", name="rot-0")
    write_atomically(cert_path, first.cert_pem)
    write_atomically(key_path, first.key_pem)
    client_cert = ca.workload("default", "client")
    server, used = start(
        "sidecar", server_side(cert_path, key_path, ca.root_path, permissive=False), {**app.ports}
    )
    client, cused = start(
        "sidecar",
        client_side(client_cert.cert_path, client_cert.key_path, ca.root_path),
        {"inbound_port": used["inbound_port"], "inbound_tcp_port": used["inbound_tcp_port"]},
    )
    inbound = int(used["inbound_port"])  # type: ignore[call-overload]
    ctx = _client_ctx(ca, client_cert.cert_path, client_cert.key_path)
    failures: list[str] = []
    counts = {"proxied": 0, "fresh": 0, "long": 0}
    serials: set[int] = set()
    stop = threading.Event()

    def through_client_sidecar() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", int(cused["outbound_port"]), timeout=10)  # type: ignore[call-overload]
        for _ in range(100_000):
            if stop.is_set():
                break
            try:
                conn.request("GET", "/private")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    failures.append(f"proxied: {resp.status}")
                counts["proxied"] += 1
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"proxied: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", int(cused["outbound_port"]), timeout=10)  # type: ignore[call-overload]
        conn.close()

    def fresh_handshakes() -> None:
        for _ in range(100_000):
            if stop.is_set():
                break
            try:
                status, serial = _fresh_tls_request(ctx, inbound)
                serials.add(serial)
                counts["fresh"] += 1
                if status != 200:
                    failures.append(f"fresh: {status}")
            except (OSError, ssl.SSLError) as exc:
                failures.append(f"fresh: {exc!r}")
            time.sleep(0.01)

    # One connection opened before any rotation, used throughout.
    long_raw = socket.create_connection(("127.0.0.1", inbound), timeout=5)
    long_tls = ctx.wrap_socket(long_raw)
    long_serial = x509.load_der_x509_certificate(long_tls.getpeercert(binary_form=True) or b"").serial_number

    def long_request() -> None:
        long_tls.sendall(b"GET /private HTTP/1.1\r\nhost: x\r\n\r\n")
        data = long_tls.recv(65536)
        if not data.startswith(b"HTTP/1.1 200"):
            failures.append(f"long-lived: {data[:40]!r}")
        counts["long"] += 1

    workers = [threading.Thread(target=through_client_sidecar), threading.Thread(target=fresh_handshakes)]
    try:
        for w in workers:
            w.start()
        issued = [first.serial]
        for i in range(1, ROTATIONS + 1):
            time.sleep(1.0)
            long_request()
            new = ca.workload("default", "server", name=f"rot-{i}")
            issued.append(new.serial)
            # Kubernetes swaps both files at once; writing them one after the other also checks
            # that a half-rotated pair (key not matching) keeps the previous contexts.
            write_atomically(cert_path, new.cert_pem)
            write_atomically(key_path, new.key_pem)
        deadline = time.monotonic() + 10
        while issued[-1] not in serials and time.monotonic() < deadline:
            time.sleep(0.1)
        long_request()
    finally:
        stop.set()
        for w in workers:
            w.join(15)
        long_tls.close()
        client.close()
        server.close()
    assert failures == []
    assert counts["proxied"] > 20 and counts["fresh"] > 20 and counts["long"] == ROTATIONS + 1
    assert long_serial == first.serial
    # New handshakes saw the rotated certificates, the last one included.
    assert issued[-1] in serials
    assert len(serials & set(issued)) >= 3

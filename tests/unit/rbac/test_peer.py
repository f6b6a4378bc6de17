"""rbac/peer.py: the names `authenticated` reads from a peer certificate (Istio-style workload
certificates have an empty subject and one URI SAN), and a real TLS handshake on a socket pair
feeding the engine.  The sidecar's own TLS transport is built separately: these tests use stdlib
ssl directly."""

from __future__ import annotations

import datetime
import socket
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.model.rbac import PeerIdentity
from sidecar.rbac import ConnectionView, evaluate
from sidecar.rbac.peer import NO_CERTIFICATE, identity_from_der, ssl_object_identity
from tests.unit.rbac.support import SPIFFE_SLEEP, rules

NOW = datetime.datetime.now(datetime.UTC)


def _cert(
    subject: x509.Name,
    sans: list[x509.GeneralName],
    issuer: x509.Name | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    ca: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=not list(subject))
    return b.sign(issuer_key or key, hashes.SHA256()), key


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_workload_certificate() -> None:
    cert, _ = _cert(x509.Name([]), [x509.UniformResourceIdentifier(SPIFFE_SLEEP)])
    assert identity_from_der(_der(cert)) == PeerIdentity(uri_sans=(SPIFFE_SLEEP,), dns_sans=(), subject="")


def test_sans_in_order_and_subject() -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"),
            x509.NameAttribute(NameOID.COMMON_NAME, "client"),
        ]
    )
    sans: list[x509.GeneralName] = [
        x509.DNSName("b.example"),
        x509.UniformResourceIdentifier("spiffe://td/a"),
        x509.DNSName("a.example"),
        x509.UniformResourceIdentifier("spiffe://td/b"),
    ]
    cert, _ = _cert(subject, sans)
    got = identity_from_der(_der(cert))
    assert got.uri_sans == ("spiffe://td/a", "spiffe://td/b")
    assert got.dns_sans == ("b.example", "a.example")
    assert got.subject == "CN=client,O=acme"  # RFC 2253 order: last RDN first


def test_no_or_bad_certificate() -> None:
    assert identity_from_der(None) is NO_CERTIFICATE
    assert identity_from_der(b"not der") is NO_CERTIFICATE


def test_a_real_mtls_handshake_feeds_authenticated() -> None:
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")])
    ca, ca_key = _cert(ca_name, [], ca=True)
    server, server_key = _cert(x509.Name([]), [x509.DNSName("localhost")], ca_name, ca_key)
    client, client_key = _cert(x509.Name([]), [x509.UniformResourceIdentifier(SPIFFE_SLEEP)], ca_name, ca_key)
    pem = serialization.Encoding.PEM

    def key_pem(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    with tempfile.TemporaryDirectory() as d:
        p = Path(d)
        (p / "ca.pem").write_bytes(ca.public_bytes(pem))
        (p / "server.pem").write_bytes(server.public_bytes(pem) + key_pem(server_key))
        (p / "client.pem").write_bytes(client.public_bytes(pem) + key_pem(client_key))
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(p / "server.pem")
        sctx.load_verify_locations(p / "ca.pem")
        sctx.verify_mode = ssl.CERT_REQUIRED
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.load_cert_chain(p / "client.pem")
        cctx.load_verify_locations(p / "ca.pem")
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    errors: list[BaseException] = []

    def client_side() -> None:
        try:
            with cctx.wrap_socket(b, server_hostname="localhost") as c:
                c.recv(1)
        except (OSError, ssl.SSLError) as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=client_side)
    t.start()
    try:
        with sctx.wrap_socket(a, server_side=True) as s:
            identity = ssl_object_identity(s)
            assert ssl_object_identity(s) is identity  # parsed once per SSL object
            s.sendall(b"x")
    finally:
        t.join(10)
    assert not errors
    assert identity == PeerIdentity(uri_sans=(SPIFFE_SLEEP,))
    policy = rules(
        {
            "action": "ALLOW",
            "policies": {
                "ns-default": {
                    "permissions": [{"any": True}],
                    "principals": [
                        {"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/default/.*"}}}}
                    ],
                }
            },
        }
    )
    assert evaluate(policy, ConnectionView(peer=identity)) == (True, "ns-default")
    assert evaluate(policy, ConnectionView(peer=None)) == (False, None)

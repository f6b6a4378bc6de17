"""Certificates for the mTLS benchmark: one root and two Istio-style workload certificates.

Istio's shape: an empty subject and a critical URI SAN `spiffe://cluster.local/ns/bench/sa/<name>`,
EC P-256 keys, signed by a self-signed root.  Written as PEM files into the run's work directory;
both proxies (Envoy pair and sidecar pair) read the same files.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TRUST_DOMAIN = "cluster.local"


def spiffe(sa: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/{sa}"


@dataclass(frozen=True)
class BenchCerts:
    root: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def make(directory: Path) -> BenchCerts:
    """A root and the two workload certificates (valid for a day), as files under `directory`; when
    they are there already (the other proxy kind's pair made them), the same files are used."""
    done = BenchCerts(
        directory / "root-cert.pem",
        directory / "server-cert-chain.pem",
        directory / "server-key.pem",
        directory / "client-cert-chain.pem",
        directory / "client-key.pem",
    )
    if all(p.exists() for p in (done.root, done.server_cert, done.server_key, done.client_cert, done.client_key)):
        return done
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN)])
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    (directory / "root-cert.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    paths: dict[str, tuple[Path, Path]] = {}
    for sa in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(root_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe(sa))]), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
            )
            .sign(root_key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{sa}-cert-chain.pem", directory / f"{sa}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        paths[sa] = (cert_path, key_path)
    return BenchCerts(directory / "root-cert.pem", *paths["server"], *paths["client"])

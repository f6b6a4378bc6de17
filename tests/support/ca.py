"""A test certificate authority that issues Istio-style workload certificates.

Istio's CA (istiod, or pilot-agent's CSR flow) signs leaf certificates with an EMPTY subject and one
critical subjectAltName extension holding the SPIFFE URI `spiffe://<trust domain>/ns/<ns>/sa/<sa>`
(security/pkg/pki/util/generate_cert.go: `genCertTemplateFromOptions`, `BuildSubjectAltNameExtension`).
trustme cannot make such certificates (it always writes a subject and no URI SANs), hence this module.

Besides the good case it issues the variants the TLS tests need: expired, not yet valid, a foreign
trust domain, a wrong service account (wrong SAN), certificates from an unrelated root, chains through
an intermediate CA, and CRLs revoking any of them.  Everything is written as PEM into a directory
and handed back as paths and bytes.  Keys are ECDSA P-256 (fast to make; Istio defaults to RSA 2048,
which changes nothing the tests look at)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_serials = itertools.count(1000)
_NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def spiffe_uri(trust_domain: str, ns: str, sa: str) -> str:
    return f"spiffe://{trust_domain}/ns/{ns}/sa/{sa}"


@dataclass
class Issued:
    """A leaf certificate and its key, as objects, PEM bytes and files."""

    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes  # the leaf followed by any intermediate CA (what a server or client sends)
    key_pem: bytes
    cert_path: Path
    key_path: Path
    uri: str = ""

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def serial(self) -> int:
        return self.cert.serial_number


@dataclass
class _Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    revoked: list[int] = field(default_factory=list)


class TestCA:
    """A root CA (optionally with one intermediate that signs the leaves), writing into `directory`.

    `root_pem`/`root_path` is the trust bundle (Istio's ROOTCA); `crl_pem()` the revocation lists."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        directory: Path | str,
        *,
        trust_domain: str = "cluster.local",
        name: str = "root",
        intermediate: bool = False,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.trust_domain = trust_domain
        self.name = name
        root_key = ec.generate_private_key(ec.SECP256R1())
        # Istio's self-signed root: O=<trust domain>, CA:TRUE, keyCertSign|cRLSign.
        root_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test root"),
            ]
        )
        root = self._ca_cert(root_name, root_key.public_key(), root_name, root_key, None)
        root_public = root_key.public_key()
        self.root = _Authority(root, root_key)
        self.issuer = self.root
        self.intermediate: _Authority | None = None
        if intermediate:
            ikey = ec.generate_private_key(ec.SECP256R1())
            iname = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test intermediate"),
                ]
            )
            icert = self._ca_cert(iname, ikey.public_key(), root_name, root_key, root_public)
            self.intermediate = _Authority(icert, ikey)
            self.issuer = self.intermediate
        self.root_pem = _pem(root)
        self.root_path = self.dir / f"{name}-root-cert.pem"
        self.root_path.write_bytes(self.root_pem)

    # -- CA certificates ----------------------------------------------------------------------------
    def _ca_cert(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        issuer_public: ec.EllipticCurvePublicKey | None,
    ) -> x509.Certificate:
        aki_key = issuer_public if issuer_public is not None else public_key
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(next(_serials))
            .not_valid_before(_NOW - dt.timedelta(days=1))
            .not_valid_after(_NOW + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_key), critical=False)
            .sign(signer, hashes.SHA256())
        )

    # -- leaves -------------------------------------------------------------------------------------
    def issue(
        self,
        name: str,
        *,
        uris: Sequence[str] = (),
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        emails: Sequence[str] = (),
        common_name: str = "",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        """A leaf with exactly the given SANs (critical when the subject is empty, RFC 5280 4.2.1.6)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        names += [x509.RFC822Name(e) for e in emails]
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(next(_serials))
            .not_valid_before(not_before or _NOW - dt.timedelta(hours=1))
            .not_valid_after(not_after or _NOW + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.issuer.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=not common_name)
        cert = builder.sign(self.issuer.key, hashes.SHA256())
        chain = _pem(cert) + (_pem(self.intermediate.cert) if self.intermediate else b"")
        cert_path = self.dir / f"{self.name}-{name}-cert-chain.pem"
        key_path = self.dir / f"{self.name}-{name}-key.pem"
        cert_path.write_bytes(chain)
        key_path.write_bytes(_key_pem(key))
        return Issued(name, cert, key, chain, _key_pem(key), cert_path, key_path, uris[0] if uris else "")

    def workload(
        self,
        ns: str = "default",
        sa: str = "default",
        *,
        trust_domain: str | None = None,
        name: str | None = None,
        expired: bool = False,
        not_yet_valid: bool = False,
        dns: Sequence[str] = (),
    ) -> Issued:
        """An Istio workload certificate: empty subject, critical URI SAN spiffe://TD/ns/NS/sa/SA."""
        uri = spiffe_uri(trust_domain or self.trust_domain, ns, sa)
        not_before = not_after = None
        if expired:
            not_before, not_after = _NOW - dt.timedelta(days=2), _NOW - dt.timedelta(days=1)
        elif not_yet_valid:
            not_before, not_after = _NOW + dt.timedelta(days=1), _NOW + dt.timedelta(days=2)
        label = name or f"{ns}-{sa}" + ("-expired" if expired else "") + ("-future" if not_yet_valid else "")
        return self.issue(label, uris=[uri], dns=dns, not_before=not_before, not_after=not_after)

    def wrong_trust_domain(self, ns: str = "default", sa: str = "default") -> Issued:
        """Signed by this CA, but for another trust domain (chain valid, SAN check fails)."""
        return self.workload(ns, sa, trust_domain="evil.example", name=f"{ns}-{sa}-wrong-td")

    # -- revocation ---------------------------------------------------------------------------------
    def revoke(self, issued: Issued) -> None:
        self.issuer.revoked.append(issued.serial)

    def crl_pem(self) -> bytes:
        """One CRL per CA level (root, then intermediate if any): with Envoy's default CRL check
        (the whole chain, X509_V_FLAG_CRL_CHECK_ALL) every issuer in the chain needs one."""
        out = b""
        for authority in (self.root, self.intermediate):
            if authority is None:
                continue
            builder = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(authority.cert.subject)
                .last_update(_NOW - dt.timedelta(hours=1))
                .next_update(_NOW + dt.timedelta(days=1))
            )
            for serial in authority.revoked:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(serial)
                    .revocation_date(_NOW - dt.timedelta(minutes=30))
                    .build()
                )
            out += builder.sign(authority.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        return out

    def write_crl(self) -> Path:
        path = self.dir / f"{self.name}-crl.pem"
        path.write_bytes(self.crl_pem())
        return path


def bundle(*cas: TestCA) -> bytes:
    """Several roots in one PEM trust bundle."""
    return b"".join(ca.root_pem for ca in cas)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` by rename, as Kubernetes secret volumes and cert-manager do."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)

"""Peer identity: what a peer certificate says (SANs, SPIFFE ID, validity) and whether it satisfies
a validation context's SAN, hash and SPKI checks, with Envoy's semantics.

Pure: it reads DER bytes with `cryptography`, takes `now` as an argument and imports no ssl, socket,
asyncio or time.  The TLS handshake itself (chain and CRL checks) is OpenSSL's, in
`sidecar.tls.contexts`; this module runs the checks Envoy's DefaultCertValidator runs on the leaf
after the chain verified (default_validator.cc verifyCertificate, san_matcher.cc, utility.cc)."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from dataclasses import dataclass
from enum import Enum

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sidecar.model.secret import CertificateValidationContext, MatchKind, SanMatcher, SanType, StringMatcher
from sidecar.routing import matchers as m

_ACE_PREFIX = "xn--"  # RFC 5890 2.3.2.5 A-label prefix: never wildcard-matched


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """spiffe://<trust_domain><path>; Istio's paths are /ns/<namespace>/sa/<service account>."""

    trust_domain: str
    path: str
    namespace: str = ""
    service_account: str = ""

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    @property
    def principal(self) -> str:
        """Istio's principal (AuthorizationPolicy `principals`): the URI without `spiffe://`."""
        return f"{self.trust_domain}{self.path}"


_TD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


def parse_spiffe_id(uri: str) -> SpiffeId | None:
    """A SPIFFE ID per the SPIFFE-ID spec (section 2): lowercase scheme and trust domain of
    [a-z0-9.-_], path segments of [A-Za-z0-9.-_] that are neither empty nor `.`/`..`, no query,
    fragment, port or userinfo, no trailing slash.  None when `uri` is not one."""
    prefix = "spiffe://"
    if not uri.startswith(prefix):
        return None
    rest = uri[len(prefix) :]
    slash = rest.find("/")
    td, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    if not td or not set(td) <= _TD_CHARS:
        return None
    if path:
        segments = path[1:].split("/")
        for seg in segments:
            if not seg or seg in (".", "..") or not set(seg) <= _PATH_CHARS:
                return None
        if len(segments) == 4 and segments[0] == "ns" and segments[2] == "sa":
            return SpiffeId(td, path, segments[1], segments[3])
    return SpiffeId(td, path)


def format_ip(packed: bytes) -> str:
    """An iPAddress SAN as Envoy prints it (Utility::generalNameAsString -> inet_ntop): dotted quad,
    or RFC 5952 text with glibc's embedded-IPv4 forms `::a.b.c.d` and `::ffff:a.b.c.d`."""
    if len(packed) == 4:
        return str(ipaddress.IPv4Address(packed))
    if len(packed) != 16:
        return ""
    addr = ipaddress.IPv6Address(packed)
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
    tail = str(ipaddress.IPv4Address(packed[12:]))
    if words[:5] == [0] * 5 and words[5] == 0xFFFF:
        return "::ffff:" + tail
    if words[:6] == [0] * 6 and (words[6] != 0):
        return "::" + tail
    return addr.compressed


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The facts about a peer certificate that filters, access logs and RBAC use."""

    sha256: str  # hex digest of the DER certificate (%DOWNSTREAM_PEER_FINGERPRINT_256%)
    spki_sha256: bytes
    serial: str  # BoringSSL BN_bn2hex: lowercase, whole bytes
    subject: str  # RFC 2253/4514; "" for Istio certificates
    issuer: str
    uri_sans: tuple[str, ...]
    dns_sans: tuple[str, ...]
    ip_sans: tuple[str, ...]
    email_sans: tuple[str, ...]
    not_before: float  # seconds since the epoch
    not_after: float

    @property
    def spiffe(self) -> SpiffeId | None:
        """The first URI SAN that is a SPIFFE ID (Istio certificates carry exactly one)."""
        for uri in self.uri_sans:
            sid = parse_spiffe_id(uri)
            if sid is not None:
                return sid
        return None

    def sans(self, san_type: SanType) -> tuple[str, ...]:
        if san_type is SanType.URI:
            return self.uri_sans
        if san_type is SanType.DNS:
            return self.dns_sans
        if san_type is SanType.IP_ADDRESS:
            return self.ip_sans
        return self.email_sans


def _serial_hex(n: int) -> str:
    if n == 0:
        return "0"
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big", signed=False) if n > 0 else b""
    return raw.hex() if raw else format(n, "x")


@functools.lru_cache(maxsize=1024)
def peer_identity(der: bytes) -> PeerIdentity:
    """Parse a DER certificate (cached: a mesh sees the same few peer certificates again and again).
    Raises ValueError when `der` is not a certificate."""
    cert = x509.load_der_x509_certificate(der)
    uris: list[str] = []
    dns: list[str] = []
    ips: list[str] = []
    emails: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        san = None
    if san is not None:
        for name in san:
            if isinstance(name, x509.UniformResourceIdentifier):
                uris.append(name.value)
            elif isinstance(name, x509.DNSName):
                dns.append(name.value)
            elif isinstance(name, x509.IPAddress):
                if isinstance(name.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
                    ips.append(format_ip(name.value.packed))
            elif isinstance(name, x509.RFC822Name):
                emails.append(name.value)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PeerIdentity(
        sha256=hashlib.sha256(der).hexdigest(),
        spki_sha256=hashlib.sha256(spki).digest(),
        serial=_serial_hex(cert.serial_number),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        uri_sans=tuple(uris),
        dns_sans=tuple(dns),
        ip_sans=tuple(ips),
        email_sans=tuple(emails),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def validity_error(ident: PeerIdentity, now: float) -> str | None:
    """OpenSSL's wording for a certificate outside its validity period at `now`, else None."""
    if now < ident.not_before:
        return "certificate is not yet valid"
    if now > ident.not_after:
        return "certificate has expired"
    return None


# --- SAN matching ------------------------------------------------------------------------------------


def _label_wildcard_match(label: str, pattern: str) -> bool:
    """Utility::labelWildcardMatch: `*` alone, or one `*` inside a label pattern."""
    if pattern == "*":
        return True
    if pattern.count("*") != 1:
        return False
    head, tail = pattern.split("*")
    return len(pattern) <= len(label) + 1 and label.startswith(head) and label.endswith(tail)


def dns_name_match(dns_name: str, pattern: str) -> bool:
    """Utility::dnsNameMatch(dns_name, pattern): does the certificate's DNS SAN `pattern` (maybe
    `*.example.com`) cover `dns_name`?  ASCII case-insensitive; the wildcard only in the leftmost
    label, never in an A-label, and covering exactly one label."""
    name = m.ascii_lower(dns_name)
    pat = m.ascii_lower(pattern)
    if name == pat:
        return True
    p = pat.split(".", 1)
    n = name.split(".", 1)
    if len(p) < 2 or len(n) < 2:
        return False
    if "*" in p[0] and "*" not in p[1] and not p[0].startswith(_ACE_PREFIX):
        return n[1] == p[1] and _label_wildcard_match(n[0], p[0])
    return False


def compile_string_matcher(sm: StringMatcher) -> m.ValueMatcher:
    """A StringMatcher as the routing layer's compiled matcher (the same Envoy semantics)."""
    if sm.kind is MatchKind.EXACT:
        return m.ExactMatcher(sm.pattern, sm.ignore_case)
    if sm.kind is MatchKind.PREFIX:
        return m.PrefixMatcher(sm.pattern, sm.ignore_case)
    if sm.kind is MatchKind.SUFFIX:
        return m.SuffixMatcher(sm.pattern, sm.ignore_case)
    if sm.kind is MatchKind.CONTAINS:
        return m.ContainsMatcher(sm.pattern, sm.ignore_case)
    return m.RegexMatcher(sm.pattern, sm.max_program_size)


class SanVerifier:
    """The compiled SAN matchers of one validation context (built once per context)."""

    __slots__ = ("_compiled", "matchers")

    def __init__(self, matchers: tuple[SanMatcher, ...]) -> None:
        self.matchers = matchers
        self._compiled = tuple(
            (sm.san_type, sm.matcher, compile_string_matcher(sm.matcher)) for sm in matchers
        )

    def __bool__(self) -> bool:
        return bool(self.matchers)

    def matches(self, ident: PeerIdentity) -> bool:
        """DefaultCertValidator::matchSubjectAltName: true when ANY SAN of the configured type matches
        ANY matcher.  An exact matcher on a DNS SAN follows DNS rules (StringSanMatcher::match): the
        certificate's SAN may be a wildcard and case is ignored."""
        for san_type, spec, compiled in self._compiled:
            dns_exact = san_type is SanType.DNS and spec.kind is MatchKind.EXACT
            for value in ident.sans(san_type):
                if dns_name_match(spec.pattern, value) if dns_exact else compiled.match(value):
                    return True
        return False


# --- the leaf checks of DefaultCertValidator::verifyCertificate -----------------------------------


class Validation(Enum):
    """Envoy's Ssl::ClientValidationStatus."""

    NOT_VALIDATED = "NotValidated"
    NO_CLIENT_CERTIFICATE = "NoClientCertificate"
    VALIDATED = "Validated"
    FAILED = "Failed"


@dataclass(frozen=True, slots=True)
class LeafVerdict:
    status: Validation
    stat: str = ""  # the ssl.* counter to bump on failure: fail_verify_san / fail_verify_cert_hash
    reason: str = ""  # Envoy's error_details


_OK = LeafVerdict(Validation.VALIDATED)
_NOT_VALIDATED = LeafVerdict(Validation.NOT_VALIDATED)


def verify_leaf(ident: PeerIdentity, vc: CertificateValidationContext, sans: SanVerifier) -> LeafVerdict:
    """SAN matchers first, then the certificate hash / SPKI pins (either list may match)."""
    checked = False
    if sans:
        if not sans.matches(ident):
            return LeafVerdict(Validation.FAILED, "fail_verify_san", "verify cert failed: SAN matcher")
        checked = True
    if vc.verify_certificate_hash or vc.verify_certificate_spki:
        digest = bytes.fromhex(ident.sha256)
        if digest not in vc.verify_certificate_hash and ident.spki_sha256 not in vc.verify_certificate_spki:
            return LeafVerdict(
                Validation.FAILED, "fail_verify_cert_hash", "verify cert failed: cert hash and spki"
            )
        checked = True
    return _OK if checked else _NOT_VALIDATED

"""sidecar.tls.identity: peer certificate facts, SPIFFE IDs, Envoy's SAN matching (checked against
a brute-force reference with hypothesis) and the leaf checks' verdicts."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.model.secret import CertificateValidationContext, MatchKind, SanMatcher, SanType, StringMatcher
from sidecar.tls.identity import (
    PeerIdentity,
    SanVerifier,
    SpiffeId,
    Validation,
    dns_name_match,
    format_ip,
    parse_spiffe_id,
    peer_identity,
    validity_error,
    verify_leaf,
)
from tests.support.ca import TestCA


def ident(uris: tuple[str, ...] = (), dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
          emails: tuple[str, ...] = ()) -> PeerIdentity:  # fmt: skip
    return PeerIdentity("00", b"", "1", "", "", uris, dns, ips, emails, 0.0, 1e10)


# --- parsing real certificates -------------------------------------------------------------------------------


def test_istio_workload_certificate(ca: TestCA) -> None:
    cert = ca.workload("bookinfo", "reviews")
    p = peer_identity(cert.der)
    assert p.subject == ""  # Istio leaves the subject empty
    assert p.uri_sans == ("spiffe://cluster.local/ns/bookinfo/sa/reviews",)
    assert p.dns_sans == () and p.ip_sans == () and p.email_sans == ()
    assert p.spiffe == SpiffeId("cluster.local", "/ns/bookinfo/sa/reviews", "bookinfo", "reviews")
    assert p.spiffe is not None and p.spiffe.principal == "cluster.local/ns/bookinfo/sa/reviews"
    assert p.sha256 == hashlib.sha256(cert.der).hexdigest()
    assert p.serial == cert.serial.to_bytes((cert.serial.bit_length() + 7) // 8, "big").hex()
    assert validity_error(p, cert.cert.not_valid_before_utc.timestamp() + 1) is None


def test_all_san_kinds_and_subject(ca: TestCA) -> None:
    cert = ca.issue(
        "mixed",
        uris=["spiffe://td/x", "https://example.com/a"],
        dns=["*.svc.cluster.local", "api.example.com"],
        ips=["10.0.0.1", "::ffff:1.2.3.4", "2001:db8::1"],
        emails=["ops@example.com"],
        common_name="legacy",
    )
    p = peer_identity(cert.der)
    assert p.subject == "CN=legacy"
    assert p.uri_sans == ("spiffe://td/x", "https://example.com/a")
    assert p.dns_sans == ("*.svc.cluster.local", "api.example.com")
    assert p.ip_sans == ("10.0.0.1", "::ffff:1.2.3.4", "2001:db8::1")
    assert p.email_sans == ("ops@example.com",)
    assert p.spiffe == SpiffeId("td", "/x")


def test_expired_and_future_certificates(ca: TestCA) -> None:
    old = peer_identity(ca.workload("a", "b", expired=True).der)
    new = peer_identity(ca.workload("a", "b", not_yet_valid=True).der)
    now = ca.root.cert.not_valid_before_utc.timestamp() + 86400  # about "now" for the test CA
    assert validity_error(old, now) == "certificate has expired"
    assert validity_error(new, now) == "certificate is not yet valid"


def test_garbage_is_refused() -> None:
    with pytest.raises(ValueError):
        peer_identity(b"not a certificate")


# --- SPIFFE IDs and IP formatting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("spiffe://cluster.local/ns/default/sa/bookinfo", SpiffeId("cluster.local", "/ns/default/sa/bookinfo", "default", "bookinfo")),
        ("spiffe://example.org", SpiffeId("example.org", "")),
        ("spiffe://example.org/a/b", SpiffeId("example.org", "/a/b")),
        ("spiffe://example.org/ns/x/sa", SpiffeId("example.org", "/ns/x/sa")),
        ("SPIFFE://example.org/a", None),  # scheme is lowercase
        ("spiffe://Example.org/a", None),  # trust domain is lowercase
        ("spiffe://example.org/a/", None),  # no trailing slash
        ("spiffe://example.org//a", None),  # no empty segment
        ("spiffe://example.org/a/../b", None),
        ("spiffe://example.org:8080/a", None),  # no port
        ("spiffe://user@example.org/a", None),
        ("spiffe://example.org/a?q=1", None),
        ("spiffe:///a", None),
        ("https://example.org/a", None),
    ],
)  # fmt: skip
def test_parse_spiffe_id(uri: str, expected: SpiffeId | None) -> None:
    assert parse_spiffe_id(uri) == expected


@pytest.mark.parametrize(
    ("packed", "text"),
    [
        (bytes([10, 1, 2, 3]), "10.1.2.3"),
        (bytes(15) + b"\x01", "::1"),
        (bytes(16), "::"),
        (bytes(10) + b"\xff\xff" + bytes([1, 2, 3, 4]), "::ffff:1.2.3.4"),  # glibc inet_ntop form
        (bytes(12) + bytes([1, 2, 3, 4]), "::1.2.3.4"),
        (bytes.fromhex("20010db8000000000000000000000001"), "2001:db8::1"),
        (bytes.fromhex("fe800000000000000202b3fffe1e8329"), "fe80::202:b3ff:fe1e:8329"),
        (b"\x01\x02", ""),
    ],
)
def test_format_ip(packed: bytes, text: str) -> None:
    assert format_ip(packed) == text


# --- DNS name matching (Envoy's utility_test.cc cases) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pattern", "ok"),
    [
        ("lyft.com", "lyft.com", True),
        ("LYFT.com", "lyft.COM", True),
        ("a.lyft.com", "*.lyft.com", True),
        ("A.LYFT.COM", "*.lyft.com", True),
        ("a.b.lyft.com", "*.lyft.com", False),  # one label only
        ("lyft.com", "*.lyft.com", False),
        ("foo.test.com", "*.lyft.com", False),
        ("foo.lyft.com", "*", False),  # a pattern needs two labels
        ("afoo.lyft.com", "*foo.lyft.com", True),
        ("foo.lyft.com", "fo*o.lyft.com", True),
        ("fo.lyft.com", "fo*o.lyft.com", False),
        ("foo.lyft.com", "f*o*.lyft.com", False),  # one wildcard at most
        ("xn--foo.lyft.com", "xn--*.lyft.com", False),  # never inside an A-label
        ("foo.lyft.com", "foo.*.com", False),  # only the leftmost label
        (".lyft.com", "*.lyft.com", True),
    ],
)
def test_dns_name_match(name: str, pattern: str, ok: bool) -> None:
    assert dns_name_match(name, pattern) is ok


# --- SAN matching against a brute-force reference ------------------------------------------------------------------

_ALPHA = "aAbB.*-/:x1"
_text = st.text(alphabet=_ALPHA, min_size=0, max_size=8)
_pattern = st.text(alphabet=_ALPHA.replace("*", ""), min_size=1, max_size=5)


def _ref_dns(name: str, pattern: str) -> bool:
    name, pattern = name.lower(), pattern.lower()
    if name == pattern:
        return True
    if "." not in name or "." not in pattern:
        return False
    label, rest = name.split(".", 1)
    plabel, prest = pattern.split(".", 1)
    if plabel.count("*") != 1 or "*" in prest or plabel.startswith("xn--") or rest != prest:
        return False
    head, tail = plabel.split("*")
    return re.fullmatch(re.escape(head) + ".*" + re.escape(tail), label, re.S) is not None and (
        len(head) + len(tail) <= len(label)
    )


def _ref_one(value: str, san_type: SanType, sm: StringMatcher) -> bool:
    if san_type is SanType.DNS and sm.kind is MatchKind.EXACT:
        return _ref_dns(sm.pattern, value)
    v, p = (value.lower(), sm.pattern.lower()) if sm.ignore_case else (value, sm.pattern)
    if sm.kind is MatchKind.EXACT:
        return v == p
    if sm.kind is MatchKind.PREFIX:
        return v[: len(p)] == p
    if sm.kind is MatchKind.SUFFIX:
        return len(v) >= len(p) and v[len(v) - len(p) :] == p
    if sm.kind is MatchKind.CONTAINS:
        return any(v[i : i + len(p)] == p for i in range(len(v) - len(p) + 1))
    return re.fullmatch(sm.pattern, value, re.S) is not None


@st.composite
def matchers(draw: st.DrawFn) -> SanMatcher:
    kind = draw(st.sampled_from(list(MatchKind)))
    san_type = draw(st.sampled_from(list(SanType)))
    if kind is MatchKind.SAFE_REGEX:
        lit = draw(_pattern)
        pattern = draw(
            st.sampled_from([re.escape(lit), re.escape(lit) + ".*", ".*" + re.escape(lit), "[ab]+"])
        )
        return SanMatcher(san_type, StringMatcher(kind, pattern))
    pattern = draw(_text if kind is MatchKind.EXACT else _pattern)
    if kind is MatchKind.EXACT and san_type is SanType.DNS and draw(st.booleans()):
        pattern = draw(_text) + ".b"
    return SanMatcher(san_type, StringMatcher(kind, pattern, draw(st.booleans())))


_sans = st.lists(_text, max_size=3).map(tuple)
_dns = st.lists(st.one_of(_text, st.builds(lambda a, b: a + "*" + b + ".b", _text, _text)), max_size=3).map(
    tuple
)


@settings(max_examples=400, deadline=None)
@given(st.lists(matchers(), max_size=4).map(tuple), _sans, _dns, _sans, _sans)
def test_san_matching_equals_reference(
    ms: tuple[SanMatcher, ...],
    uris: tuple[str, ...],
    dns: tuple[str, ...],
    ips: tuple[str, ...],
    emails: tuple[str, ...],
) -> None:
    peer = ident(uris, dns, ips, emails)
    expected = any(_ref_one(v, m.san_type, m.matcher) for m in ms for v in peer.sans(m.san_type))
    assert SanVerifier(ms).matches(peer) is expected


def test_san_type_must_agree() -> None:
    m = SanMatcher(SanType.DNS, StringMatcher(MatchKind.EXACT, "spiffe://td/ns/a/sa/b"))
    assert not SanVerifier((m,)).matches(ident(uris=("spiffe://td/ns/a/sa/b",)))
    assert SanVerifier((SanMatcher(SanType.URI, m.matcher),)).matches(ident(uris=("spiffe://td/ns/a/sa/b",)))


def test_empty_verifier_is_falsy_and_matches_nothing() -> None:
    v = SanVerifier(())
    assert not v
    assert not v.matches(ident(uris=("spiffe://a/b",)))


# --- leaf verdicts ---------------------------------------------------------------------------------------------------


def _uri(pattern: str, kind: MatchKind = MatchKind.EXACT) -> SanMatcher:
    return SanMatcher(SanType.URI, StringMatcher(kind, pattern))


def test_verify_leaf_san(ca: TestCA) -> None:
    p = peer_identity(ca.workload("ns1", "sa1").der)
    good = CertificateValidationContext(san_matchers=(_uri("spiffe://cluster.local/ns/ns1/sa/sa1"),))
    bad = CertificateValidationContext(san_matchers=(_uri("spiffe://cluster.local/ns/ns1/sa/other"),))
    assert verify_leaf(p, good, SanVerifier(good.san_matchers)).status is Validation.VALIDATED
    v = verify_leaf(p, bad, SanVerifier(bad.san_matchers))
    assert (v.status, v.stat, v.reason) == (
        Validation.FAILED,
        "fail_verify_san",
        "verify cert failed: SAN matcher",
    )
    nothing = CertificateValidationContext()
    assert verify_leaf(p, nothing, SanVerifier(())).status is Validation.NOT_VALIDATED


def test_verify_leaf_hash_and_spki(ca: TestCA) -> None:
    cert = ca.workload("ns1", "sa1")
    p = peer_identity(cert.der)
    other = peer_identity(ca.workload("ns1", "sa2").der)
    by_hash = CertificateValidationContext(verify_certificate_hash=(hashlib.sha256(cert.der).digest(),))
    by_spki = CertificateValidationContext(verify_certificate_spki=(p.spki_sha256,))
    for vc in (by_hash, by_spki):
        assert verify_leaf(p, vc, SanVerifier(())).status is Validation.VALIDATED
        v = verify_leaf(other, vc, SanVerifier(()))
        assert (v.status, v.stat) == (Validation.FAILED, "fail_verify_cert_hash")
    # Either list may match (DefaultCertValidator: hash OR spki).
    both = CertificateValidationContext(
        verify_certificate_hash=(b"\0" * 32,), verify_certificate_spki=(p.spki_sha256,)
    )
    assert verify_leaf(p, both, SanVerifier(())).status is Validation.VALIDATED


def test_san_checked_before_pins(ca: TestCA) -> None:
    p = peer_identity(ca.workload("ns1", "sa1").der)
    vc = CertificateValidationContext(san_matchers=(_uri("nope"),), verify_certificate_spki=(p.spki_sha256,))
    assert verify_leaf(p, vc, SanVerifier(vc.san_matchers)).stat == "fail_verify_san"


def test_prefix_matcher_on_trust_domain(ca: TestCA) -> None:
    """Istio's 'any workload of this trust domain' check: a prefix URI matcher."""
    v = SanVerifier((_uri("spiffe://cluster.local/", MatchKind.PREFIX),))
    assert v.matches(peer_identity(ca.workload("x", "y").der))
    assert not v.matches(peer_identity(ca.wrong_trust_domain("x", "y").der))


def test_ascii_only_case_folding() -> None:
    """ignore_case folds ASCII only (absl::AsciiStrToLower): the Kelvin sign is not a 'k'."""
    v = SanVerifier((SanMatcher(SanType.DNS, StringMatcher(MatchKind.SUFFIX, "K", True)),))
    assert v.matches(ident(dns=("ak",)))
    assert not v.matches(ident(dns=("a\u212a",)))

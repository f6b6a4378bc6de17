"""Generated hash cookies (routing/hash_policy.py): the value Envoy computes, the Set-Cookie it
writes, and when the callback runs at all."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.http.events import RequestHead
from sidecar.model.route import HashPolicy, HashPolicyKind
from sidecar.routing.hash_policy import generated_cookie, request_hash, set_cookie
from sidecar.upstream.lb.ring_hash import xxhash64

COOKIE, HDR = HashPolicyKind.COOKIE, HashPolicyKind.HEADER


def head(headers: list[tuple[bytes, bytes]] | None = None) -> RequestHead:
    return RequestHead(b"GET", b"/", b"1.1", headers or [], b"example.com", True)


def test_generated_value_matches_envoys_formula() -> None:
    # Observed on envoy 1.40: client 127.0.0.1:36378 to a listener on 127.0.0.1:31534.
    assert generated_cookie(b"127.0.0.1:36378", b"127.0.0.1:31534") == b"2f8b495f74a400b7"
    assert generated_cookie(b"127.0.0.1:36384", b"127.0.0.1:31534") == b"0d890519abb25dd9"


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_generated_value_is_16_hex_digits_of_the_addresses(remote: bytes, local: bytes) -> None:
    value = generated_cookie(remote, local)
    assert len(value) == 16 and int(value, 16) == xxhash64(remote + local)


def test_set_cookie_format() -> None:
    full = HashPolicy(COOKIE, "sess", ttl=60, path="/p", attributes=(("SameSite", "Strict"), ("Secure", "")))
    assert set_cookie(full, b"abc") == b'sess="abc"; Max-Age=60; Path=/p; SameSite=Strict; Secure; HttpOnly'
    # ttl 0: a session cookie (no Max-Age); no path: no Path.
    assert set_cookie(HashPolicy(COOKIE, "s", ttl=0), b"v") == b's="v"; HttpOnly'


def test_absent_cookie_with_ttl_is_generated_and_hashed() -> None:
    made: list[HashPolicy] = []

    def add(p: HashPolicy) -> bytes:
        made.append(p)
        return b"0123456789abcdef"

    p = HashPolicy(COOKIE, "sess", ttl=10)
    assert request_hash((p,), head(), b"", add) == xxhash64(b"0123456789abcdef")
    assert made == [p]
    # Present (and not empty): hashed as sent, nothing generated.
    assert request_hash((p,), head([(b"cookie", b"sess=abc")]), b"", add) == xxhash64(b"abc")
    assert request_hash((p,), head([(b"cookie", b"sess=")]), b"", add) == xxhash64(b"0123456789abcdef")
    assert len(made) == 2


def test_no_ttl_no_generation() -> None:
    def add(p: HashPolicy) -> bytes:
        raise AssertionError("a cookie policy without ttl generates nothing")

    assert request_hash((HashPolicy(COOKIE, "sess"),), head(), b"", add) is None


def test_a_terminal_policy_before_it_keeps_the_cookie_from_being_made() -> None:
    made: list[HashPolicy] = []

    def add(p: HashPolicy) -> bytes:
        made.append(p)
        return b"v"

    policies = (HashPolicy(HDR, "x-user", terminal=True), HashPolicy(COOKIE, "sess", ttl=5))
    assert request_hash(policies, head([(b"x-user", b"u")]), b"", add) == xxhash64(b"u")
    assert made == []
    request_hash(policies, head(), b"", add)  # no x-user: the cookie policy runs
    assert len(made) == 1

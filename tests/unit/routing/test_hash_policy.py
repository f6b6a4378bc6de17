"""routing.hash_policy: each of Envoy's hash methods, and how several combine."""

from __future__ import annotations

from sidecar.http.events import RequestHead
from sidecar.model.route import HashPolicy, HashPolicyKind
from sidecar.routing.hash_policy import cookie_value, query_value, request_hash
from sidecar.upstream.lb.ring_hash import xxhash64

HDR, COOKIE, IP, QP = (
    HashPolicyKind.HEADER,
    HashPolicyKind.COOKIE,
    HashPolicyKind.SOURCE_IP,
    HashPolicyKind.QUERY_PARAMETER,
)
M64 = 2**64 - 1


def head(path: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None) -> RequestHead:
    return RequestHead(b"GET", path, b"1.1", headers or [], b"example.com", True)


def rotl(h: int) -> int:
    return ((h << 1) | (h >> 63)) & M64


def test_header_single_and_repeated_values() -> None:
    p = (HashPolicy(HDR, "x-user"),)
    assert request_hash(p, head(headers=[(b"x-user", b"alice")]), b"") == xxhash64(b"alice")
    a = request_hash(p, head(headers=[(b"x-user", b"b"), (b"x-user", b"a")]), b"")
    b = request_hash(p, head(headers=[(b"x-user", b"a"), (b"x-user", b"b")]), b"")
    # Sorted values chained through the seed (Envoy's HashUtil::xxHash64 over a span).
    assert a == b == xxhash64(b"b", xxhash64(b"a"))
    assert request_hash(p, head(), b"") is None


def test_header_authority() -> None:
    p = (HashPolicy(HDR, ":authority"),)
    assert request_hash(p, head(), b"") == xxhash64(b"example.com")


def test_cookie_parsing() -> None:
    h = head(headers=[(b"cookie", b'a=1; sess="xyz"'), (b"cookie", b"sess=late")])
    assert cookie_value(h, "sess") == b"xyz"
    assert cookie_value(h, "a") == b"1"
    assert cookie_value(h, "nope") is None
    p = (HashPolicy(COOKIE, "sess"),)
    assert request_hash(p, h, b"") == xxhash64(b"xyz")
    # An empty cookie value gives no hash (no generation in sidecar).
    assert request_hash(p, head(headers=[(b"cookie", b"sess=")]), b"") is None


def test_query_parameter_is_raw_and_first() -> None:
    assert query_value(b"/p?x=1&y=a%20b&y=2", "y") == b"a%20b"
    assert query_value(b"/p?flag&x=1", "flag") == b""
    assert query_value(b"/p", "x") is None
    p = (HashPolicy(QP, "x"),)
    assert request_hash(p, head(b"/p?x=1"), b"") == xxhash64(b"1")


def test_source_ip() -> None:
    assert request_hash((HashPolicy(IP),), head(), b"10.1.2.3") == xxhash64(b"10.1.2.3")
    assert request_hash((HashPolicy(IP),), head(), b"") is None


def test_policies_combine_with_rotation() -> None:
    h = head(b"/p?x=1", [(b"x-user", b"alice")])
    hu, hx = xxhash64(b"alice"), xxhash64(b"1")
    assert request_hash((HashPolicy(HDR, "x-user"), HashPolicy(QP, "x")), h, b"") == rotl(hu) ^ hx
    # The same policy twice does not cancel out.
    twice = request_hash((HashPolicy(HDR, "x-user"), HashPolicy(HDR, "x-user")), h, b"")
    assert twice == rotl(hu) ^ hu != 0
    # A missing value is skipped.
    assert request_hash((HashPolicy(HDR, "missing"), HashPolicy(QP, "x")), h, b"") == hx


def test_terminal_stops_only_once_a_hash_exists() -> None:
    h = head(b"/p?x=1", [(b"x-user", b"alice")])
    hu, hx = xxhash64(b"alice"), xxhash64(b"1")
    assert request_hash((HashPolicy(HDR, "x-user", terminal=True), HashPolicy(QP, "x")), h, b"") == hu
    assert request_hash((HashPolicy(HDR, "missing", terminal=True), HashPolicy(QP, "x")), h, b"") == hx
    # Terminal on a later policy: the hash so far already counts.
    both = (HashPolicy(QP, "x"), HashPolicy(HDR, "missing", terminal=True), HashPolicy(HDR, "x-user"))
    assert request_hash(both, h, b"") == hx

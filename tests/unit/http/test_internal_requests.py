"""Internal and external requests (http/edge.py): which addresses internal_address_config trusts,
how a request is classified, and which headers each kind keeps."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http import edge
from sidecar.http.edge import InternalAddresses, classify, mutate_request_headers_trusting
from sidecar.http.events import RequestHead
from sidecar.model.listener import HttpConnectionManager
from sidecar.model.route import InternalAddressConfig, RouteConfiguration

TEN = InternalAddresses(InternalAddressConfig(cidr_ranges=("10.0.0.0/8", "fd12::/16")))
LEGACY = InternalAddresses(InternalAddressConfig())
UNIX = InternalAddresses(InternalAddressConfig(unix_sockets=True))


def hcm(**kw: object) -> HttpConnectionManager:
    return HttpConnectionManager(stat_prefix="t", route_config=RouteConfiguration(name="rc"), **kw)  # type: ignore[arg-type]


def head(*headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(b"GET", b"/", b"1.1", list(headers), b"a.test", True)


@pytest.mark.parametrize(
    ("trust", "addr", "internal"),
    [
        (TEN, b"10.1.2.3", True),
        (TEN, b"11.1.2.3", False),
        (TEN, b"fd12::1", True),
        (TEN, b"::ffff:10.1.2.3", False),  # a v4-mapped address is IPv6
        (TEN, b"fe80::1%eth0", False),
        (TEN, b"10.1.2.3:80", False),
        (TEN, b"010.1.2.3", False),
        (TEN, b"", False),  # a Unix socket peer, unix_sockets off
        (UNIX, b"", True),
        (LEGACY, b"127.0.0.1", True),
        (LEGACY, b"127.0.0.2", False),  # exactly INADDR_LOOPBACK
        (LEGACY, b"172.31.255.255", True),
        (LEGACY, b"172.32.0.0", False),
        (LEGACY, b"fdff::1", True),
        (LEGACY, b"fc00::1", False),
        (LEGACY, b"::1", True),
        (LEGACY, b"::2", False),
    ],
)
def test_internal_addresses(trust: InternalAddresses, addr: bytes, internal: bool) -> None:
    assert trust.internal(addr) is internal
    assert trust.internal(addr) is internal  # from the cache too


@given(st.ip_addresses(v=4))
def test_legacy_ipv4_ranges(ip: ipaddress.IPv4Address) -> None:
    want = (
        ip in ipaddress.ip_network("10.0.0.0/8")
        or ip in ipaddress.ip_network("172.16.0.0/12")
        or ip in ipaddress.ip_network("192.168.0.0/16")
        or ip == ipaddress.ip_address("127.0.0.1")
    )
    assert InternalAddresses(InternalAddressConfig()).internal(str(ip).encode()) is want


def test_the_cache_stays_bounded() -> None:
    t = InternalAddresses(InternalAddressConfig(cidr_ranges=("10.0.0.0/8",)))
    for i in range(3 * edge._CACHE_SIZE):
        t.internal(b"10.0.%d.%d" % (i // 256 % 256, i % 256))
    assert len(t._cache) <= edge._CACHE_SIZE


@pytest.mark.parametrize(
    ("headers", "internal"),
    [
        ([(b"x-forwarded-for", b"10.1.2.3")], True),
        ([(b"x-forwarded-for", b" 10.1.2.3 ")], True),
        ([(b"x-forwarded-for", b"10.1.2.3, 10.2.2.2")], False),  # several addresses
        ([(b"x-forwarded-for", b"10.1.2.3"), (b"x-forwarded-for", b"10.2.2.2")], False),  # joined
        ([(b"x-forwarded-for", b"10.1.2.3,")], False),
        ([(b"x-forwarded-for", b"1.2.3.4")], False),
        ([(b"x-forwarded-for", b"")], False),
        ([], False),  # no x-forwarded-for: the peer is not looked at
    ],
)
def test_classify_without_remote_address(headers: list[tuple[bytes, bytes]], internal: bool) -> None:
    assert classify(head(*headers), hcm(), b"10.9.9.9", TEN) is internal


def test_classify_with_remote_address() -> None:
    cfg = hcm(use_remote_address=True)
    assert classify(head(), cfg, b"10.9.9.9", TEN) is True
    assert classify(head(), cfg, b"1.2.3.4", TEN) is False
    # Any x-forwarded-for makes the request external, whatever it says.
    assert classify(head((b"x-forwarded-for", b"10.1.1.1")), cfg, b"10.9.9.9", TEN) is False


CONTROL = [
    (b"x-envoy-retry-on", b"5xx"),
    (b"x-envoy-upstream-rq-timeout-ms", b"5"),
    (b"x-envoy-original-url", b"http://a/b"),
    (b"x-envoy-internal", b"yes"),
    (b"x-envoy-external-address", b"9.9.9.9"),
    (b"x-envoy-is-timeout-retry", b"true"),
    (b"x-envoy-upstream-stream-duration-ms", b"5"),
    (b"x-envoy-decorator-operation", b"op"),
    (b"x-only-inside", b"1"),
]


def names(h: RequestHead) -> set[bytes]:
    return {k for k, _ in h.headers}


def test_internal_request_keeps_control_headers_and_is_marked() -> None:
    h = head((b"x-forwarded-for", b"10.1.2.3"), (b"x-request-id", b"mine"), *CONTROL)
    rid, internal = mutate_request_headers_trusting(h, hcm(), b"10.9.9.9", TEN, (b"x-only-inside",))
    assert internal and rid == b"mine"
    assert h.get(b"x-envoy-internal") == b"true" and [
        v for k, v in h.headers if k == b"x-envoy-internal"
    ] == [b"true"]
    assert {b"x-envoy-retry-on", b"x-envoy-upstream-rq-timeout-ms", b"x-only-inside"} <= names(h)
    assert b"x-envoy-upstream-stream-duration-ms" not in names(h)  # consumed by the router
    assert h.get(b"x-forwarded-proto") == b"http"


def test_external_request_loses_control_and_internal_only_headers() -> None:
    h = head((b"x-forwarded-for", b"1.2.3.4"), *CONTROL)
    _, internal = mutate_request_headers_trusting(h, hcm(), b"10.9.9.9", TEN, (b"x-only-inside",))
    assert not internal
    # cleanInternalHeaders keeps these (and the edge-only ones away from the edge).
    assert names(h) - {b"x-request-id", b"x-forwarded-proto"} == {
        b"x-forwarded-for",
        b"x-envoy-external-address",
        b"x-envoy-is-timeout-retry",
        b"x-envoy-decorator-operation",
    }
    assert h.get(b"x-envoy-external-address") == b"9.9.9.9"


def test_internal_only_headers_go_even_without_trust() -> None:
    h = head((b"x-forwarded-for", b"10.1.2.3"), *CONTROL)
    _, internal = mutate_request_headers_trusting(h, hcm(), b"10.9.9.9", None, (b"x-only-inside",))
    assert not internal and b"x-only-inside" not in names(h) and b"x-envoy-retry-on" not in names(h)


def test_edge_internal_request() -> None:
    cfg = hcm(use_remote_address=True)
    h = head((b"x-request-id", b"mine"), *CONTROL)
    rid, internal = mutate_request_headers_trusting(h, cfg, b"10.9.9.9", TEN)
    # Internal at the edge: the peer appended to x-forwarded-for, no external address set, the
    # request id kept, the downstream-service headers kept.
    assert internal and rid == b"mine"
    assert h.get(b"x-forwarded-for") == b"10.9.9.9"
    assert h.get(b"x-envoy-external-address") == b"9.9.9.9"
    assert h.get(b"x-envoy-decorator-operation") == b"op"


def test_edge_external_request() -> None:
    cfg = hcm(use_remote_address=True)
    h = head((b"x-request-id", b"mine"), *CONTROL)
    rid, internal = mutate_request_headers_trusting(h, cfg, b"1.2.3.4", TEN)
    assert not internal and rid != b"mine"
    assert [v for k, v in h.headers if k == b"x-envoy-external-address"] == [b"1.2.3.4"]
    assert b"x-envoy-decorator-operation" not in names(h)

"""x-forwarded-client-cert: the pure rules (sidecar.http.xfcc), the edge hook (http/edge.py) with a
fake connection, and the translation of the two HCM fields."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http import xfcc
from sidecar.http.edge import mutate_request_headers
from sidecar.http.events import RequestHead
from sidecar.http.xfcc import ClientCert, XfccAction, decide, element, parse_element, rewrite, split_elements
from sidecar.model.listener import ClientCertDetails, ForwardClientCert, HttpConnectionManager
from sidecar.model.route import RouteConfiguration

M = ForwardClientCert
ALL = ClientCertDetails(subject=True, cert=True, chain=True, dns=True, uri=True)
NONE = ClientCertDetails()
PEER = ClientCert(
    local_uri_sans=("spiffe://cluster.local/ns/default/sa/server",),
    sha256="ab" * 32,
    subject="",
    uri_sans=("spiffe://cluster.local/ns/default/sa/client",),
    dns_sans=("a.example", "b.example"),
    der=b"\x30\x03\x02\x01\x01",
)


@pytest.mark.parametrize(
    ("mode", "mtls", "want"),
    [
        (M.SANITIZE, True, XfccAction.REMOVE),
        (M.SANITIZE, False, XfccAction.REMOVE),
        (M.FORWARD_ONLY, True, XfccAction.KEEP),
        (M.FORWARD_ONLY, False, XfccAction.REMOVE),
        (M.APPEND_FORWARD, True, XfccAction.APPEND),
        (M.APPEND_FORWARD, False, XfccAction.REMOVE),
        (M.SANITIZE_SET, True, XfccAction.SET),
        (M.SANITIZE_SET, False, XfccAction.REMOVE),
        (M.ALWAYS_FORWARD_ONLY, True, XfccAction.KEEP),
        (M.ALWAYS_FORWARD_ONLY, False, XfccAction.KEEP),
    ],
)
def test_decide(mode: ForwardClientCert, mtls: bool, want: XfccAction) -> None:
    assert decide(mode, mtls) is want


def test_element_order_and_istio_shape() -> None:
    # Istio's sidecar inbound: subject, uri, dns.
    got = element(PEER, ClientCertDetails(subject=True, uri=True, dns=True))
    assert got == (
        b"By=spiffe://cluster.local/ns/default/sa/server;Hash=" + b"ab" * 32 + b';Subject="";'
        b"URI=spiffe://cluster.local/ns/default/sa/client;DNS=a.example;DNS=b.example"
    )
    assert (
        element(PEER, ClientCertDetails())
        == b"By=spiffe://cluster.local/ns/default/sa/server;Hash=" + b"ab" * 32
    )


def test_uri_key_kept_without_uri_sans_and_no_by_without_local_uri() -> None:
    bare = ClientCert(local_uri_sans=(), sha256="00", subject="CN=x")
    assert (
        element(bare, ClientCertDetails(uri=True, dns=True, subject=True)) == b'Hash=00;Subject="CN=x";URI='
    )


def test_cert_and_chain_are_url_encoded_pem() -> None:
    got = element(PEER, ClientCertDetails(cert=True, chain=True)).decode()
    pairs = parse_element(got)
    cert = xfcc.values(pairs, "Cert")[0]
    assert cert.startswith("-----BEGIN%20CERTIFICATE-----%0A") and cert.endswith(
        "-----END%20CERTIFICATE-----%0A"
    )
    assert "/" not in cert and "+" not in cert and "=" not in cert and " " not in cert
    assert xfcc.values(pairs, "Chain") == [cert]  # the chain of a lone leaf is the leaf
    assert [k for k, _ in pairs] == ["By", "Hash", "Cert", "Chain"]


def test_rewrite() -> None:
    h = [(b"a", b"1"), (xfcc.HEADER, b"x"), (b"b", b"2"), (xfcc.HEADER, b"y")]
    assert rewrite(list(h), XfccAction.REMOVE, b"") == [(b"a", b"1"), (b"b", b"2")]
    assert rewrite(list(h), XfccAction.APPEND, b"z") == [(b"a", b"1"), (xfcc.HEADER, b"x,y,z"), (b"b", b"2")]
    assert rewrite(list(h), XfccAction.SET, b"z") == [(b"a", b"1"), (xfcc.HEADER, b"z"), (b"b", b"2")]
    keep = list(h)
    assert rewrite(keep, XfccAction.KEEP, b"z") is keep
    assert rewrite([(b"a", b"1")], XfccAction.APPEND, b"z") == [(b"a", b"1"), (xfcc.HEADER, b"z")]
    none = [(b"a", b"1")]
    assert rewrite(none, XfccAction.REMOVE, b"") is none  # nothing to drop: no new list


_SUBJECT = st.text(st.characters(blacklist_characters='"\\', blacklist_categories=("Cs", "Cc")), max_size=40)
# What OpenSSL's RFC 2253 printing gives for any attribute value: '"' and '\\' come escaped.
_RFC2253 = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40).map(
    lambda v: "CN=" + v.replace("\\", "\\\\").replace('"', '\\"').replace(",", "\\,")
)
_NAME = st.from_regex(r"[a-z0-9][a-z0-9.:/-]{0,30}", fullmatch=True)


@given(
    subject=st.one_of(_SUBJECT, _RFC2253),
    uris=st.lists(_NAME, max_size=3),
    dns=st.lists(_NAME, max_size=3),
    by=st.lists(_NAME, max_size=2),
    hops=st.integers(1, 3),
)
def test_elements_read_back(subject: str, uris: list[str], dns: list[str], by: list[str], hops: int) -> None:
    """Whatever the subject holds (',' ';' '=' included), the quoted value keeps each hop's element
    and each pair apart."""
    cert = ClientCert(tuple(by), "cd" * 32, subject, tuple(uris), tuple(dns), b"\x01\x02")
    one = element(cert, ALL)
    headers: list[tuple[bytes, bytes]] = []
    for _ in range(hops):
        headers = rewrite(headers, XfccAction.APPEND, one)
    value = headers[0][1].decode()
    elements = split_elements(value)
    assert len(elements) == hops
    for e in elements:
        pairs = parse_element(e)
        assert xfcc.values(pairs, "By") == by
        assert xfcc.values(pairs, "Hash") == ["cd" * 32]
        assert xfcc.values(pairs, "Subject") == [subject]
        assert xfcc.values(pairs, "URI") == (uris or [""])
        assert xfcc.values(pairs, "DNS") == dns


# -- the edge hook -------------------------------------------------------------------------------


class _SslObject:
    def __init__(self, der: bytes) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes:
        return self.der


class _Transport:
    def __init__(self, ssl_object: Any) -> None:
        self.ssl_object = ssl_object

    def get_extra_info(self, name: str) -> Any:
        return self.ssl_object if name == "ssl_object" else None


@dataclass
class _Peer:
    sha256: str
    subject: str = ""
    uri_sans: tuple[str, ...] = ("spiffe://td/ns/a/sa/client",)
    dns_sans: tuple[str, ...] = ()


class _Conn:
    def __init__(self, mtls: bool) -> None:
        der = b"\x30\x00"
        self.transport = _Transport(_SslObject(der) if mtls else None)
        self.peer_identity = _Peer(hashlib.sha256(der).hexdigest()) if mtls else None


def _cfg(mode: ForwardClientCert, details: ClientCertDetails = NONE) -> HttpConnectionManager:
    return HttpConnectionManager(
        "s",
        RouteConfiguration("r"),
        forward_client_cert_details=mode,
        set_current_client_cert_details=details,
    )


def _head(*extra: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(b"GET", b"/", b"1.1", [(b"a", b"1"), *extra], b"h", True)


@pytest.mark.parametrize("mode", list(M))
@pytest.mark.parametrize("mtls", [True, False])
def test_edge_hook(mode: ForwardClientCert, mtls: bool) -> None:
    head = _head((xfcc.HEADER, b"By=up;Hash=00"))
    mutate_request_headers(head, _cfg(mode, ClientCertDetails(uri=True)), b"10.0.0.1", _Conn(mtls))
    got = head.get(xfcc.HEADER)
    action = decide(mode, mtls)
    sha = hashlib.sha256(b"\x30\x00").hexdigest().encode()
    mine = b"Hash=" + sha + b";URI=spiffe://td/ns/a/sa/client"  # the fake has no local certificate
    want = {
        XfccAction.KEEP: b"By=up;Hash=00",
        XfccAction.REMOVE: None,
        XfccAction.APPEND: b"By=up;Hash=00," + mine,
        XfccAction.SET: mine,
    }[action]
    assert got == want


def test_edge_adds_without_incoming_header_only_on_mtls() -> None:
    head = _head()
    mutate_request_headers(head, _cfg(M.SANITIZE_SET), b"10.0.0.1", _Conn(True))
    assert head.get(xfcc.HEADER) is not None
    head = _head()
    mutate_request_headers(head, _cfg(M.APPEND_FORWARD), b"10.0.0.1", _Conn(False))
    assert head.get(xfcc.HEADER) is None


def test_sanitize_plaintext_without_header_keeps_the_list() -> None:
    head = _head()
    before = head.headers
    mutate_request_headers(head, _cfg(M.SANITIZE), b"10.0.0.1", None)
    assert head.headers is before and head.get(xfcc.HEADER) is None


# -- translation ---------------------------------------------------------------------------------


def test_translate_fields() -> None:
    from envoy.extensions.filters.http.router.v3 import router_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    from sidecar.translate import lds

    pb = hcm_pb2.HttpConnectionManager(stat_prefix="s")
    pb.route_config.name = "r"
    router = pb.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router())
    got = lds._hcm(pb, "hcm", None)
    assert got.forward_client_cert_details is M.SANITIZE
    assert got.set_current_client_cert_details == ClientCertDetails()
    pb.forward_client_cert_details = hcm_pb2.HttpConnectionManager.APPEND_FORWARD
    pb.set_current_client_cert_details.subject.value = True
    pb.set_current_client_cert_details.uri = True
    pb.set_current_client_cert_details.dns = True
    got = lds._hcm(pb, "hcm", None)
    assert got.forward_client_cert_details is M.APPEND_FORWARD
    assert got.set_current_client_cert_details == ClientCertDetails(subject=True, dns=True, uri=True)

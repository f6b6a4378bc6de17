"""listener.sniff: the tls_inspector's ClientHello reading and the http_inspector's request-line
detection.  The HTTP cases are the answers envoy 1.40 gave to the same bytes (a listener with the
http_inspector and one chain per application protocol); hypothesis checks that no input, whole or cut
anywhere, gives anything but a documented answer."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.listener.sniff import (
    H2C_PREFACE,
    NEED_MORE,
    NOT_HTTP,
    NOT_TLS,
    TOO_LARGE,
    ClientHello,
    Sniff,
    detect_http,
    parse_client_hello,
)


def client_hello(server_name: str | None = "Example.COM", alpn: list[str] | None = None, **ctx_opts: object) -> bytes:
    """The ClientHello Python's ssl module (OpenSSL) sends."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    for k, v in ctx_opts.items():
        setattr(ctx, k, v)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


# -- TLS -------------------------------------------------------------------------------------------
def test_real_client_hello() -> None:
    hello = client_hello("Example.COM", ["h2", "http/1.1"])
    assert parse_client_hello(hello) == ClientHello("example.com", ("h2", "http/1.1"))
    # Followed by more bytes (the client's next flight): still the same answer.
    assert parse_client_hello(hello + b"\x14\x03\x03\x00\x01\x01") == ClientHello("example.com", ("h2", "http/1.1"))


def test_no_sni_no_alpn_and_tls12_only() -> None:
    assert parse_client_hello(client_hello(None)) == ClientHello("", ())
    hello = client_hello("a.b", maximum_version=ssl.TLSVersion.TLSv1_2)
    assert parse_client_hello(hello) == ClientHello("a.b", ())


def test_every_prefix_needs_more() -> None:
    hello = client_hello("svc.ns.svc.cluster.local", ["istio-http/1.1", "istio"])
    for cut in range(len(hello)):
        assert parse_client_hello(hello[:cut]) is NEED_MORE, cut
    assert parse_client_hello(hello) == ClientHello("svc.ns.svc.cluster.local", ("istio-http/1.1", "istio"))


def test_hello_split_across_records() -> None:
    hello = client_hello("split.example", ["h2"])
    body = hello[5:]
    records = b"".join(b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p for p in (body[:7], body[7:100], body[100:]))
    assert parse_client_hello(records) == ClientHello("split.example", ("h2",))


def _with_body(hello: bytes, body: bytes) -> bytes:
    """`hello` with its ClientHello body replaced (record and handshake lengths fixed up)."""
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    return hello[:3] + len(msg).to_bytes(2, "big") + msg


def _ext(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def _body(extensions: bytes, version: bytes = b"\x03\x03", compression: bytes = b"\x01\x00") -> bytes:
    return version + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + compression + len(extensions).to_bytes(2, "big") + extensions


SNI = _ext(0, b"\x00\x08\x00\x00\x05a.com")
TEMPLATE = client_hello()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_body(SNI), ClientHello("a.com")),
        (_body(SNI + _ext(16, b"\x00\x03\x02h2")), ClientHello("a.com", ("h2",))),
        # A malformed ALPN list is ignored (Envoy's onALPN), the hello is still TLS.
        (_body(SNI + _ext(16, b"\x00\x04\x02h2")), ClientHello("a.com")),
        (_body(SNI + _ext(16, b"\x00\x03\x00h2")), ClientHello("a.com")),
        # BoringSSL's extract_sni: exactly one host_name entry, non-empty, no NUL.
        (_body(_ext(0, b"\x00\x03\x00\x00\x00")), NOT_TLS),
        (_body(_ext(0, b"\x00\x08\x01\x00\x05a.com")), NOT_TLS),
        (_body(_ext(0, b"\x00\x08\x00\x00\x05a\x00com")), NOT_TLS),
        (_body(_ext(0, b"\x00\x10\x00\x00\x05a.com\x00\x00\x05b.com")), NOT_TLS),
        (_body(SNI + SNI), NOT_TLS),  # duplicate extension
        (_body(SNI, compression=b"\x01\x01"), NOT_TLS),  # no null compression
        (_body(SNI, version=b"\x03\x00"), NOT_TLS),  # SSL 3.0 only
        (_body(SNI + _ext(43, b"\x04\x03\x04\x03\x03")), ClientHello("a.com")),
        (_body(SNI + _ext(43, b"\x02\x7f\x17")), NOT_TLS),  # only an unknown version offered
        (_body(SNI) + b"junk", NOT_TLS),  # bytes after the extensions
        (_body(b""), ClientHello()),
    ],
)
def test_client_hello_cases(body: bytes, expected: object) -> None:
    assert parse_client_hello(_with_body(TEMPLATE, body)) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",  # not a handshake record
        b"\x17\x03\x03\x00\x05hello",  # application data
        b"\x16\x02\x00\x00\x05hello",  # SSL 2-style version
        b"\x16\x03\x01\x00\x05hello",  # a handshake record that is not a client_hello
        b"\x16\x03\x01\x40\x01" + b"\x00" * 10,  # record longer than 16384
        b"\x16\x03\x01\x00\x04\x01\x00\x40\x01",  # a ClientHello longer than 16384
    ],
)
def test_not_tls(data: bytes) -> None:
    assert parse_client_hello(data) is NOT_TLS


def test_too_large() -> None:
    # A record announcing 16384 bytes and a ClientHello that fills it: incomplete at 1000 bytes
    # with max_client_hello_size 1000.
    data = b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc" + b"\x03\x03" + b"\x00" * 2000
    assert parse_client_hello(data, max_size=1000) is TOO_LARGE
    assert parse_client_hello(data[:999], max_size=1000) is NEED_MORE


TLS_RESULTS = (NEED_MORE, NOT_TLS, TOO_LARGE)


def _check_tls(data: bytes) -> None:
    r = parse_client_hello(data)
    assert r in TLS_RESULTS or isinstance(r, ClientHello)
    if isinstance(r, ClientHello):
        # ASCII letters lowercased (Envoy's AsciiStrToLower); other bytes kept as they came.
        assert not any("A" <= ch <= "Z" for ch in r.server_name)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_documented_tls_answer(data: bytes) -> None:
    for whole in (data, b"\x16\x03\x01" + data):  # the second gets past the record header check
        final = parse_client_hello(whole)
        for cut in range(len(whole) + 1):
            _check_tls(whole[:cut])
            # A decision made on a prefix stands when more bytes come (the inspector acts on it).
            r = parse_client_hello(whole[:cut])
            if r is not NEED_MORE:
                assert r == final, (cut, r, final)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=8))
def test_mutated_hello_gives_a_documented_answer(pos: int, junk: bytes) -> None:
    pos = min(pos, len(TEMPLATE))
    _check_tls(TEMPLATE[:pos] + junk + TEMPLATE[pos + len(junk) :])


# -- HTTP -------------------------------------------------------------------------------------------
OTHER = NOT_HTTP
ENVOY_HTTP = [
    (b"GET / HTTP/1.1\r\n", "http/1.1"),
    (b"GET / HTTP/1.0\r\n", "http/1.0"),
    (b"GET / HTTP/2.0\r\n", "http/1.0"),
    (b"FOO / HTTP/1.1\r\n", "http/1.1"),
    (b"get / HTTP/1.1\r\n", "http/1.1"),
    (b"GET /\r\n", "http/1.0"),
    (b"GET / \r\n", "http/1.0"),
    (b"GET / HTTP/0.9\r\n", "http/1.0"),
    (b"hello\n", OTHER),
    (b"\x00\x01\x02\n", OTHER),
    (b"GET / HTTP/1.1", NEED_MORE),
    (b"GET / HTTP/1.1\r", NEED_MORE),
    (b"x", NEED_MORE),
    (b"GET", NEED_MORE),
    (b"GET ", NEED_MORE),
    (b"!", NEED_MORE),
    (b"0", NEED_MORE),
    (b"GET \x00", NEED_MORE),
    (b"GET \x16", NEED_MORE),
    (b"GET /a b", NEED_MORE),
    (b"GE T", NEED_MORE),
    (b"G\x0c", NEED_MORE),
    (b"G ", NEED_MORE),
    (b"\x16\x03\x01\x00\x05hello", OTHER),
    (b"\x16", OTHER),
    (b"\x80", OTHER),
    (b"\x7f", OTHER),
    (b"\t", OTHER),
    (b" ", OTHER),
    (b"(", OTHER),
    (b"/", OTHER),
    (b"{", OTHER),
    (b"G\x01", OTHER),
    (b"Gx\x16", OTHER),
    (b"GET\x7f", OTHER),
    (b"GET / HTTP/1.1\n", "http/1.1"),
    (b"G E T / HTTP/1.1\r\n", OTHER),
    (b"GET  /  HTTP/1.1\r\n", "http/1.1"),
    (b"GET\t/\tHTTP/1.1\r\n", "http/1.1"),
    (b"GET\x0c/ HTTP/1.1\r\n", "http/1.1"),
    (b"GET\x0b/ HTTP/1.1\r\n", "http/1.1"),
    (b"GET\r/ HTTP/1.1\r\n", "http/1.1"),
    (b"GET\x01/ HTTP/1.1\r\n", OTHER),
    (b"GET\x00/ HTTP/1.1\r\n", OTHER),
    (b"G\x00ET / HTTP/1.1\r\n", OTHER),
    (b"G(T / HTTP/1.1\r\n", OTHER),
    (b"GET / HTTP/1.12\r\n", OTHER),
    (b"GET / HTTP/11.1\r\n", OTHER),
    (b"GET / http/1.1\r\n", OTHER),
    (b"GET / HTTP/1.x\r\n", OTHER),
    (b" GET / HTTP/1.1\r\n", OTHER),
    (b"\r\nGET / HTTP/1.1\r\n", OTHER),
    (b"GET / HTTP/1.1 \r\n", "http/1.1"),
    (b"GET / HTTP/1.1\t\r\n", "http/1.1"),
    (b"GET / HTTP/1.1\x0b\r\n", "http/1.1"),
    (b"GET / HTTP/1.1\x00\r\n", "http/1.1"),
    (b"GET / HTTP/1.1\r\r\n", "http/1.1"),
    (b"GET / HTTP/1.1 x\r\n", OTHER),
    (b"GET /a b HTTP/1.1\r\n", OTHER),
    (b"GET /a\tb HTTP/1.1\r\n", OTHER),
    (b"GET /\x01 HTTP/1.1\r\n", "http/1.1"),
    (b"GET /\x00 HTTP/1.1\r\n", "http/1.1"),
    (b"GET /\x1f HTTP/1.1\r\n", "http/1.1"),
    (b"GET /\x00/ HTTP/1.1\r\n", OTHER),
    (b"GET / \x00HTTP/1.1\r\n", "http/1.1"),
    (b"GET /\x7f HTTP/1.1\r\n", OTHER),
    (b"GET /\x80 HTTP/1.1\r\n", OTHER),
    (b"GET /\xa0 HTTP/1.1\r\n", OTHER),
    (b"GET /\xff HTTP/1.1\r\n", OTHER),
    (b'GET /"x HTTP/1.1\r\n', "http/1.1"),
    (b"GET /{} HTTP/1.1\r\n", "http/1.1"),
    (b"GET /# HTTP/1.1\r\n", "http/1.1"),
    (b"GET * HTTP/1.1\r\n", "http/1.1"),
    (b"GET http://a/ HTTP/1.1\r\n", "http/1.1"),
    (b"GET a:b HTTP/1.1\r\n", OTHER),
    (b"CONNECT a:443 HTTP/1.1\r\n", "http/1.1"),
    (b"GET HTTP/1.1\r\n", OTHER),
    (b"GET \r\n", OTHER),
    (b"GET\r\n", OTHER),
    (b"/ HTTP/1.1\r\n", OTHER),
    (b"GET /\r\nxyz", "http/1.0"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "http/1.1"),
    (H2C_PREFACE, "h2c"),
    (H2C_PREFACE[:10], NEED_MORE),
    (b"PRI * HTTP/2.0\r\n\r\nXX", "http/1.0"),
]


@pytest.mark.parametrize(("data", "expected"), ENVOY_HTTP)
def test_http_inspector_as_envoy(data: bytes, expected: object) -> None:
    assert detect_http(data) == expected


def test_http_line_too_long() -> None:
    assert detect_http(b"GET /" + b"a" * 9000) is TOO_LARGE
    assert detect_http(b"GET /" + b"a" * 8000) is NEED_MORE


HTTP_RESULTS = (NEED_MORE, NOT_HTTP, TOO_LARGE, "http/1.1", "http/1.0", "h2c")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64) | st.sampled_from([d for d, _ in ENVOY_HTTP]))
def test_any_bytes_whole_or_cut_give_a_documented_http_answer(data: bytes) -> None:
    final = detect_http(data)
    assert final in HTTP_RESULTS
    for cut in range(len(data) + 1):
        r = detect_http(data[:cut])
        assert r in HTTP_RESULTS
        # A decision made on a prefix stands once more bytes come (the inspector acts on the first).
        if r is not NEED_MORE and final is not TOO_LARGE:
            assert r == final or (r is NOT_HTTP and final is NOT_HTTP), (cut, r, final)


def test_sniff_results_are_the_documented_set() -> None:
    assert set(Sniff) == {NEED_MORE, NOT_TLS, NOT_HTTP, TOO_LARGE}

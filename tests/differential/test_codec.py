"""What Envoy's HTTP/1.1 codec accepts and rejects: HTTP/1.0 (426 unless accept_http_10), header size
and count limits (431), malformed requests (400 and the connection closed), request smuggling probes
(Content-Length with Transfer-Encoding, two Content-Lengths, obs-fold, bare LF, bad chunk sizes)."""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import PeerClosed, request

pytestmark = pytest.mark.differential
BOOTSTRAP = "codec.yaml"
UPSTREAMS = ("service1",)


def _send_raw(t: Target, raw: bytes, listener: str = "listener_port") -> dict[str, object]:
    """Send `raw`; return the status line, body, connection header, whether the proxy closed the
    connection, and how many requests reached the upstream.  A proxy that closes without answering
    gives status None."""
    t.ups.clear()
    with t.client(listener) as c:
        c.send(raw)
        try:
            resp = c.read_response()
        except PeerClosed:
            return {"status": None, "closed": True, "upstream": len(t.ups.requests())}
        # Wait for a close the proxy announced; otherwise only check it did not close at once.
        closed = c.wait_closed(3.0 if resp.header("connection") == "close" else 0.2)
    return {
        "status": resp.status,
        "line": f"{resp.version} {resp.status} {resp.reason}",
        "body": resp.body,
        "content_type": resp.header("content-type"),
        "connection": resp.header("connection"),
        "closed": closed,
        "upstream": len(t.ups.requests()),
    }


def test_http10_is_426(diff: Differential) -> None:
    got = diff.run(lambda t: _send_raw(t, b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n"))
    assert got == {
        "status": 426,
        "line": "HTTP/1.1 426 Upgrade Required",
        "body": b"Upgrade Required",
        "content_type": "text/plain",
        "connection": "close",
        "closed": True,
        "upstream": 0,
    }


def test_http10_accepted_when_configured(diff: Differential) -> None:
    obs = diff.exchange(b"GET /ten HTTP/1.0\r\n\r\n", listener="http10_port", check_close=True)
    assert obs.status == 200
    assert obs.response.version == "HTTP/1.0"
    assert obs.closed is True
    up = obs.only_upstream
    assert (up.request_line, up.header("host")) == (b"GET /ten HTTP/1.1", "default.test")


def test_http10_keep_alive_when_asked(diff: Differential) -> None:
    def scenario(t: Target) -> list[object]:
        with t.client("http10_port") as c:
            raw = b"GET /a HTTP/1.0\r\nHost: h.test\r\nConnection: keep-alive\r\n\r\n"
            first = c.exchange(raw)
            second = c.exchange(raw.replace(b"/a", b"/b"))
            return [first.status, first.header("connection"), second.status, c.wait_closed(0.5)]

    assert diff.run(scenario) == [200, "keep-alive", 200, False]


@pytest.mark.parametrize(
    ("listener", "headers", "status"),
    [
        ("smallhdr_port", [("x-big", "a" * 500)], 200),
        ("smallhdr_port", [("x-big", "a" * 2000)], 431),
        ("smallhdr_port", [(f"x-h{i}", "v") for i in range(8)], 200),  # 9 with Host
        ("smallhdr_port", [(f"x-h{i}", "v") for i in range(12)], 431),
        ("listener_port", [("x-big", "a" * 50_000)], 200),
        ("listener_port", [("x-big", "a" * 70_000)], 431),  # default max_request_headers_kb: 60
        ("listener_port", [(f"x-h{i}", "v") for i in range(120)], 431),  # default max_headers_count: 100
    ],
    ids=["1k-ok", "1k-over", "count-ok", "count-over", "60k-ok", "60k-over", "100-over"],
)
def test_header_limits(
    diff: Differential, listener: str, headers: list[tuple[str, str]], status: int
) -> None:
    got = diff.run(lambda t: _send_raw(t, request("GET", "/", headers=headers), listener))
    assert got["status"] == status
    if status == 431:
        assert got["line"] == "HTTP/1.1 431 Request Header Fields Too Large"
        assert (got["body"], got["closed"], got["upstream"]) == (b"Request Header Fields Too Large", True, 0)


BAD = (400, b"Bad Request")  # errors of the codec itself answer with the reason phrase as text/plain body
EMPTY_400 = (400, b"")  # errors found later by the connection manager answer with an empty body
HTTP09 = (426, b"Upgrade Required")  # a request line without a valid HTTP/1.x version
NOT_IMPLEMENTED = (501, b"Not Implemented")

MALFORMED = {
    "garbage-request-line": (b"GARBAGE\r\n\r\n", BAD),
    "no-version": (b"GET /\r\nHost: a\r\n\r\n", HTTP09),
    "bad-version": (b"GET / HTTP/2.7\r\nHost: a\r\n\r\n", HTTP09),
    "bad-method-char": (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", BAD),
    "space-in-target": (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", BAD),
    "fragment-in-target": (b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", EMPTY_400),
    "ctl-in-header-value": (b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\x01b\r\n\r\n", BAD),
    "space-in-header-name": (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n\r\n", BAD),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A : v\r\n\r\n", BAD),
    "no-colon": (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", BAD),
    "missing-host": (b"GET / HTTP/1.1\r\nX-A: v\r\n\r\n", EMPTY_400),
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        BAD,
    ),
    "two-different-cl": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        BAD,
    ),
    "same-cl-twice": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        BAD,
    ),
    "bad-cl": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\nabc", BAD),
    "negative-cl": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", BAD),
    "te-not-chunked": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", NOT_IMPLEMENTED),
    "te-chunked-not-last": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        NOT_IMPLEMENTED,
    ),
    "bare-cr": (b"GET / HTTP/1.1\rHost: a\r\n\r\n", BAD),
    "bad-chunk-size": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        BAD,
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_is_rejected_and_closes(diff: Differential, name: str) -> None:
    raw, (status, body) = MALFORMED[name]
    got = diff.run(lambda t: _send_raw(t, raw))
    reason = {400: "Bad Request", 426: "Upgrade Required", 501: "Not Implemented"}[status]
    assert got == {
        "status": status,
        "line": f"HTTP/1.1 {status} {reason}",
        "body": body,
        "content_type": "text/plain" if body else None,
        "connection": "close",
        "closed": True,
        "upstream": 0,
    }


# Inputs Envoy 1.40 (Balsa) accepts and the sidecar refuses on purpose: RFC 9112 section 3.2 requires
# a 400 for two Host lines; obs-fold (section 5.2), bare LF (section 2.2) and junk after chunk data are
# classic request-smuggling ingredients that llhttp's strict mode rejects (DEPENDENCIES.md).
STRICTER_THAN_ENVOY = frozenset({"two-hosts", "obs-fold", "bare-lf", "chunk-missing-crlf"})


@pytest.mark.parametrize(
    ("name", "raw", "target", "body"),
    [
        ("absolute-form", b"GET http://abs.test/p?q HTTP/1.1\r\nHost: a\r\n\r\n", "/p?q", b""),
        (
            "te-chunked-mixed-case",
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "/x",
            b"abc",
        ),
        (
            "chunk-extension",
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;name=value\r\nabc\r\n0\r\n\r\n",
            "/x",
            b"abc",
        ),
        ("header-value-trailing-space", b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: v \t\r\n\r\n", "/x", b""),
        # Envoy 1.40's codec (Balsa) is lenient where a strict parser would say 400:
        ("two-hosts", b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "/x", b""),
        ("obs-fold", b"GET /x HTTP/1.1\r\nHost: a\r\nX-Fold: one\r\n two\r\n\r\n", "/x", b""),
        ("bare-lf", b"GET /x HTTP/1.1\nHost: a\nX-A: v\n\n", "/x", b""),
        (
            "chunk-missing-crlf",
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
            "/x",
            b"abc",
        ),
    ],
)
def test_accepted_edge_cases(diff: Differential, name: str, raw: bytes, target: str, body: bytes) -> None:
    if diff.kind == "sidecar" and name in STRICTER_THAN_ENVOY:
        # A deliberate difference (README "Where the sidecar differs from Envoy"): llhttp in strict mode
        # refuses these request-smuggling-shaped inputs with the codec's 400 and a close.
        got = _send_raw(diff.target(), raw)
        assert (got["status"], got["body"], got["closed"], got["upstream"]) == (400, b"Bad Request", True, 0)
        return
    obs = diff.exchange(raw)
    assert obs.status == 200, name
    up = obs.only_upstream
    assert (up.target, up.body) == (target, body)
    if name == "two-hosts":
        assert up.header_all("host") == ["a,b"]  # joined, as a repeated header
    if name == "obs-fold":
        assert up.header_all("x-fold") == ["one two"]  # unfolded
    if name == "bare-lf":
        assert up.header_all("x-a") == ["v"]


@pytest.mark.parametrize(
    ("raw", "connection"),
    [
        (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", None),
        (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", "close"),
    ],
    ids=["options-asterisk", "connect"],
)
def test_asterisk_form_and_connect_match_no_prefix_route(
    diff: Differential, raw: bytes, connection: str | None
) -> None:
    got = diff.run(lambda t: _send_raw(t, raw))
    assert (got["status"], got["body"], got["connection"], got["closed"], got["upstream"]) == (
        404,
        b"",
        connection,
        connection == "close",
        0,
    )

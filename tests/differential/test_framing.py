"""Message framing and connection reuse through Envoy's HTTP/1.1 codec: keep-alive, pipelining,
Expect: 100-continue, chunked bodies both ways, close-delimited upstream responses, HEAD and 204,
and the hop-by-hop headers Envoy removes (connection, keep-alive, proxy-connection, te, upgrade,
transfer-encoding, which it re-encodes)."""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import chunked, request
from tests.support.upstream import Behaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "codec.yaml"
UPSTREAMS = ("service1",)


@pytest.fixture(autouse=True)
def echo_upstream(diff: Differential) -> None:
    diff.ups["service1"].on("/echo", Behaviour(echo=True))


def test_keep_alive_reuses_the_connection(diff: Differential) -> None:
    def scenario(t: Target) -> list[object]:
        t.ups.clear()
        out: list[object] = []
        with t.client() as c:
            for i in range(3):
                r = c.exchange(request("GET", f"/ka/{i}"))
                out.append((r.status, r.header("connection")))
            out.append(c.wait_closed(0.2))
        out.append([r.target for r in t.ups.requests()])
        return out

    assert diff.run(scenario) == [(200, None), (200, None), (200, None), False, ["/ka/0", "/ka/1", "/ka/2"]]


def test_client_connection_close_is_honoured(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/bye", headers=[("Connection", "close")]), check_close=True)
    assert (obs.status, obs.header("connection"), obs.closed) == (200, "close", True)
    assert obs.only_upstream.header("connection") is None


def test_pipelined_requests_answered_in_order(diff: Differential) -> None:
    diff.ups["service1"].on("/slow", Behaviour(delay=0.2, body=b"slow"))
    diff.ups["service1"].on("/fast", Behaviour(body=b"fast"))

    def scenario(t: Target) -> list[object]:
        t.ups.clear()
        with t.client() as c:
            c.send(request("GET", "/slow") + request("POST", "/echo", body=b"xyz") + request("GET", "/fast"))
            bodies = [c.read_response().body for _ in range(3)]
        return [bodies[0], bodies[2], [r.target for r in t.ups.requests()]]

    assert diff.run(scenario) == [b"slow", b"fast", ["/slow", "/echo", "/fast"]]


def test_expect_100_continue(diff: Differential) -> None:
    def scenario(t: Target) -> list[object]:
        t.ups.clear()
        with t.client() as c:
            c.send(request("POST", "/echo", headers=[("Expect", "100-continue"), ("Content-Length", "5")]))
            interim = c.read_interim(timeout=3.0)
            c.send(b"hello")
            final = c.read_response()
        up = t.ups.requests()
        return [
            f"{interim.version} {interim.status} {interim.reason}",
            interim.headers,
            final.status,
            up[0].header("expect"),
            up[0].body,
        ]

    assert diff.run(scenario) == ["HTTP/1.1 100 Continue", [], 200, None, b"hello"]


def test_chunked_request_body_stays_chunked(diff: Differential) -> None:
    body = chunked(b"hello ", b"chunked ", b"world", trailers=(("x-trailer", "t"),))
    obs = diff.exchange(request("POST", "/up", headers=[("Transfer-Encoding", "chunked")], body=body))
    up = obs.only_upstream
    assert (obs.status, up.framing, up.body) == (200, "chunked", b"hello chunked world")
    assert up.header_all("transfer-encoding") == ["chunked"]
    assert up.trailers == ()  # request trailers are dropped (http_protocol_options.enable_trailers is off)


def test_content_length_request_body(diff: Differential) -> None:
    obs = diff.exchange(request("POST", "/up", body=b"x" * 100_000))
    up = obs.only_upstream
    assert (up.framing, len(up.body), up.header("content-length")) == ("content-length", 100_000, "100000")


@pytest.mark.parametrize(
    ("behaviour", "framing", "headers"),
    [
        (Behaviour(body=b"abc"), "content-length", {"content-length": "3"}),
        (
            Behaviour(framing="chunked", chunks=(b"ab", b"c"), trailers=(("x-t", "1"),)),
            "chunked",
            {"transfer-encoding": "chunked"},
        ),
        (Behaviour(framing="close", body=b"abc"), "chunked", {"transfer-encoding": "chunked"}),
    ],
    ids=["content-length", "chunked", "close-delimited"],
)
def test_response_framing(
    diff: Differential, behaviour: Behaviour, framing: str, headers: dict[str, str]
) -> None:
    diff.ups["service1"].behave(behaviour)
    obs = diff.exchange(request("GET", "/down"), check_close=False)
    r = obs.response
    assert (obs.status, obs.body, r.framing, r.trailers) == (200, b"abc", framing, [])
    for name, value in headers.items():
        assert r.header_all(name) == [value]


def test_head_response_has_no_body(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(headers=(("content-length", "42"),), framing="close"))

    def scenario(t: Target) -> list[object]:
        with t.client() as c:
            r = c.exchange(request("HEAD", "/head"))
            again = c.exchange(request("GET", "/echo"))  # the connection is still in sync
        return [r.status, r.header("content-length"), r.body, again.status]

    assert diff.run(scenario) == [200, "42", b"", 200]


def test_204_has_no_length(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(status=204))
    obs = diff.exchange(request("GET", "/nocontent"))
    assert (obs.status, obs.body, obs.header("content-length"), obs.header("transfer-encoding")) == (
        204,
        b"",
        None,
        None,
    )


def test_hop_by_hop_request_headers_are_removed(diff: Differential) -> None:
    headers = [
        ("Connection", "keep-alive, x-nominated"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Upgrade", "websocket"),
        ("X-Nominated", "1"),
        ("X-Normal", "2"),
    ]
    up = diff.exchange(request("GET", "/hop", headers=headers)).only_upstream
    names = {k for k, _ in up.headers}
    # Headers the client's Connection header nominates go too (but not in responses: see below).
    assert names == {
        "host",
        "te",
        "x-normal",
        "x-forwarded-proto",
        "x-request-id",
        "x-envoy-expected-rq-timeout-ms",
    }
    assert up.header_all("te") == ["trailers"]  # te is kept only when it says "trailers"


def test_te_other_than_trailers_is_removed(diff: Differential) -> None:
    up = diff.exchange(request("GET", "/hop", headers=[("TE", "gzip, trailers")])).only_upstream
    assert up.header_all("te") == ["trailers"]


def test_hop_by_hop_response_headers_are_removed(diff: Differential) -> None:
    diff.ups["service1"].behave(
        Behaviour(
            headers=(
                ("Connection", "keep-alive, x-nominated"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("Upgrade", "h2c"),
                ("X-Nominated", "1"),
                ("X-Normal", "2"),
            ),
            body=b"ok",
        )
    )
    obs = diff.exchange(request("GET", "/hop"))
    names = {k for k, _ in obs.response.headers}
    # Unlike requests, a response's connection-nominated headers are passed on.
    assert names == {
        "x-nominated",
        "x-normal",
        "content-length",
        "x-envoy-upstream-service-time",
        "date",
        "server",
    }


def test_websocket_upgrade_without_upgrade_config_is_403(diff: Differential) -> None:
    headers = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]
    obs = diff.exchange(request("GET", "/ws", headers=headers), check_close=True)
    assert (obs.status, obs.body, obs.header("connection"), obs.closed) == (403, b"", "close", True)
    assert obs.upstream == []


def test_h2c_upgrade_is_stripped_and_forwarded(diff: Differential) -> None:
    headers = [
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ]
    obs = diff.exchange(request("GET", "/h2c", headers=headers))
    assert obs.status == 200
    names = {k for k, _ in obs.only_upstream.headers}
    assert names == {"host", "x-forwarded-proto", "x-request-id", "x-envoy-expected-rq-timeout-ms"}


def test_zero_content_length_is_forwarded(diff: Differential) -> None:
    up = diff.exchange(b"GET /z HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").only_upstream
    assert (up.framing, up.header_all("content-length")) == ("content-length", ["0"])

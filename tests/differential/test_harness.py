"""Self-checks of the test helpers this suite stands on (no proxy involved): the recording upstream
writes down exactly what arrived, the client reads each framing correctly, templates render, and the
comparison masks only what it should.  If these fail, no differential result can be trusted."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.differential.harness import Observation, assert_same
from tests.support.http1 import Client, chunked, request
from tests.support.ports import first_non_loopback_ipv4, free_port
from tests.support.proxy import listener_ports, render
from tests.support.upstream import Behaviour, Upstreams

pytestmark = pytest.mark.differential


@pytest.fixture(scope="module")
def ups() -> Iterator[Upstreams]:
    u = Upstreams(["one", "two"])
    yield u
    u.close()


@pytest.fixture(autouse=True)
def _reset(ups: Upstreams) -> None:
    ups.reset()


def test_upstream_records_exactly(ups: Upstreams) -> None:
    raw = b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nX-MiXeD: a\r\nx-mixed: b\r\nTransfer-Encoding: chunked\r\n\r\n"
    with Client(ups["one"].port) as c:
        r = c.exchange(raw + chunked(b"ab", b"cd", trailers=(("x-t", "1"),)))
    rec = ups["one"].requests[0]
    assert r.status == 200
    assert (rec.request_line, rec.method, rec.target, rec.version) == (
        b"POST /p?q=1 HTTP/1.1",
        "POST",
        "/p?q=1",
        "HTTP/1.1",
    )
    assert rec.headers == (
        ("Host", "h"),
        ("X-MiXeD", "a"),
        ("x-mixed", "b"),
        ("Transfer-Encoding", "chunked"),
    )
    assert (rec.body, rec.framing, rec.trailers) == (b"abcd", "chunked", (("x-t", "1"),))
    assert rec.header_all("X-MIXED") == ["a", "b"]
    assert ups["two"].requests == []


def test_upstream_keep_alive_rules_and_arrival_order(ups: Upstreams) -> None:
    ups["one"].on("/a", Behaviour(status=201, body=b"A"))
    ups["two"].behave(Behaviour(status=202, body=b"B"))
    with Client(ups["one"].port) as c1, Client(ups["two"].port) as c2:
        assert (c1.exchange(request("GET", "/a")).body, c2.exchange(request("GET", "/x")).body) == (
            b"A",
            b"B",
        )
        assert c1.exchange(request("GET", "/other")).status == 200
    recs = ups.requests()
    assert [(r.upstream, r.target) for r in recs] == [("one", "/a"), ("two", "/x"), ("one", "/other")]
    assert recs[0].connection == recs[2].connection  # the same kept-alive connection


@pytest.mark.parametrize(
    ("behaviour", "framing", "body"),
    [
        (Behaviour(body=b"xyz"), "content-length", b"xyz"),
        (Behaviour(framing="chunked", chunks=(b"x", b"yz")), "chunked", b"xyz"),
        (Behaviour(framing="close", body=b"xyz"), "close", b"xyz"),
        (Behaviour(echo=True), "content-length", None),
    ],
)
def test_client_reads_each_framing(
    ups: Upstreams, behaviour: Behaviour, framing: str, body: bytes | None
) -> None:
    ups["one"].behave(behaviour)
    with Client(ups["one"].port) as c:
        r = c.exchange(request("GET", "/f"))
    assert r.framing == framing
    if body is None:
        assert b'"target": "/f"' in r.body and r.header("content-type") == "application/json"
    else:
        assert r.body == body


@pytest.mark.parametrize(("mode", "reset"), [("close", False), ("reset", True)])
def test_upstream_closes_or_resets_before_headers(ups: Upstreams, mode: str, reset: bool) -> None:
    ups["one"].behave(Behaviour(before_headers=mode))  # type: ignore[arg-type]
    with Client(ups["one"].port) as c:
        c.send(request("GET", "/"))
        assert c.read_until_close(5.0) == b""
        assert c.reset is reset


def test_client_reads_pipelined_and_interim_responses(ups: Upstreams) -> None:
    with Client(ups["one"].port) as c:
        c.send(request("GET", "/1") + request("GET", "/2"))
        assert [c.read_response().status, c.read_response().status] == [200, 200]
        c.send(request("POST", "/3", headers=[("Expect", "100-continue"), ("Content-Length", "2")]))
        assert c.read_interim().status == 100
        c.send(b"hi")
        assert c.read_response().status == 200
    assert ups["one"].requests[-1].body == b"hi"


def test_render_fills_ports_and_leaves_yaml_braces() -> None:
    text, used = render("a: {x: 1}\nb: {listener_port}\nc: {given}\nd: {}\n", given="v")
    assert re.fullmatch(r"a: \{x: 1\}\nb: \d+\nc: v\nd: \{\}\n", text)
    assert set(used) == {"listener_port", "given"}
    with pytest.raises(KeyError):
        render("{typo}")
    cfg = {
        "static_resources": {
            "listeners": [
                {"address": {"socket_address": {"port_value": 1}}},
                {"bind_to_port": False, "address": {"socket_address": {"port_value": 2}}},
            ]
        }
    }
    assert listener_ports(cfg) == [1]


def test_ports_are_distinct_and_local_address_is_ipv4() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", first_non_loopback_ipv4())


def test_comparison_masks_volatile_values_but_not_presence(ups: Upstreams) -> None:
    with Client(ups["one"].port) as c:
        resp = c.exchange(request("GET", "/"))
    base = Observation(resp, ups["one"].requests)

    def variant(headers: list[tuple[str, str]]) -> Observation:
        r = type(resp)(resp.version, resp.status, resp.reason, headers, resp.body, resp.framing)
        return Observation(r, base.upstream)

    with_date = variant([("date", "Mon"), *resp.headers])
    assert_same(with_date, variant([("date", "Tue"), *resp.headers]), "self")  # only the value differs
    with pytest.raises(AssertionError, match="differs from envoy"):
        assert_same(with_date, variant(list(resp.headers)), "self")  # presence differs
    with pytest.raises(AssertionError, match="differs from envoy"):
        assert_same(with_date, variant([("date", "Mon"), ("x-extra", "1"), *resp.headers]), "self")

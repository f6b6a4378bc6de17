"""The connection manager's per-request timers: request_timeout, stream_idle_timeout,
request_headers_timeout and max_stream_duration, with Envoy's statuses and bodies."""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import PeerClosed
from tests.support.upstream import Behaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "timers.yaml"
UPSTREAMS = ("service1",)

INCOMPLETE_BODY = b"POST /p HTTP/1.1\r\nHost: t.test\r\nContent-Length: 10\r\n\r\nabc"
INCOMPLETE_HEAD = b"GET /h HTTP/1.1\r\nHost: t.test\r\n"
COMPLETE = b"GET /slow HTTP/1.1\r\nHost: t.test\r\n\r\n"


def _probe(t: Target, listener: str, raw: bytes) -> dict[str, object]:
    t.ups.clear()
    with t.client(listener, timeout=5.0) as c:
        c.send(raw)
        try:
            resp = c.read_response(timeout=4.0)
        except PeerClosed:
            return {"status": None, "closed": True}
        closed = c.wait_closed(2.0 if resp.header("connection") == "close" else 0.3)
    return {
        "status": resp.status,
        "body": resp.body,
        "connection": resp.header("connection"),
        "content_type": resp.header("content-type"),
        "closed": closed,
    }


@pytest.mark.parametrize(
    ("listener", "raw", "expected"),
    [
        ("request_port", INCOMPLETE_BODY, (408, b"request timeout", "close")),
        ("request_port", INCOMPLETE_HEAD, (408, b"request timeout", "close")),
        ("idle_port", INCOMPLETE_BODY, (408, b"stream timeout", "close")),
        ("idle_port", INCOMPLETE_HEAD, (408, b"stream timeout", "close")),
        ("idle_port", COMPLETE, (504, b"stream timeout", None)),
        ("headers_port", INCOMPLETE_HEAD, (408, b"request header timeout", "close")),
        ("duration_port", INCOMPLETE_BODY, (408, b"downstream duration timeout", "close")),
        ("duration_port", COMPLETE, (504, b"downstream duration timeout", None)),
    ],
    ids=[
        "request-body",
        "request-head",
        "idle-body",
        "idle-head",
        "idle-upstream",
        "headers",
        "duration-body",
        "duration-upstream",
    ],
)
def test_stream_timer_fires_with_envoys_reply(
    diff: Differential, listener: str, raw: bytes, expected: tuple[int, bytes, str | None]
) -> None:
    diff.ups["service1"].behave(Behaviour(delay=1.5, body=b"too late"))
    got = diff.run(lambda t: _probe(t, listener, raw))
    assert (got["status"], got["body"], got["connection"]) == expected
    assert got["content_type"] == "text/plain"
    assert got["closed"] is (expected[2] == "close")


def test_request_timeout_is_disarmed_once_the_request_is_complete(diff: Differential) -> None:
    # The upstream takes longer than request_timeout, but the request itself was complete.
    diff.ups["service1"].behave(Behaviour(delay=0.8, body=b"slow but fine"))
    got = diff.run(lambda t: _probe(t, "request_port", COMPLETE))
    assert (got["status"], got["body"]) == (200, b"slow but fine")

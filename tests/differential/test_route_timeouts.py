"""A route's own timers and its generated hash cookie, against Envoy 1.40:

- RouteAction.idle_timeout replaces the connection manager's stream_idle_timeout (0 switches it off);
- retry_policy.per_try_idle_timeout resets a silent attempt and retries it like a per-try timeout;
- RouteAction.max_stream_duration replaces the stream duration timer, and with
  grpc_timeout_header_max takes the request's grpc-timeout (capped, minus the offset), rewriting the
  header a gRPC upstream sees; under it the route `timeout` is not announced nor enforced;
- a cookie hash_policy with a ttl generates the cookie (Set-Cookie, Envoy's exact attributes) and
  requests that send it back stick to one upstream."""

from __future__ import annotations

import pytest

from sidecar.upstream.lb.ring_hash import xxhash64
from tests.differential.harness import Differential, Target
from tests.support.http1 import PeerClosed, request
from tests.support.upstream import Behaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "route_timeouts.yaml"
UPSTREAMS = ("service1", "service2")
SLOW = Behaviour(delay=1.0, body=b"too late")
GRPC = ("content-type", "application/grpc")


def _probe(t: Target, raw: bytes, listener: str = "listener_port") -> dict[str, object]:
    """What the client got (status, body, the headers timeouts shape, whether the proxy closed) and
    what each upstream attempt carried of the timeout headers (x-envoy-expected-rq-timeout-ms after
    the first attempt depends on the clock: only its presence counts)."""
    t.ups.clear()
    with t.client(listener, timeout=5.0) as c:
        c.send(raw)
        try:
            resp = c.read_response(timeout=4.0)
        except PeerClosed:
            return {"status": None, "closed": True}
        closed = c.wait_closed(2.0 if resp.header("connection") == "close" else 0.3)
    attempts = []
    for i, r in enumerate(t.ups.requests()):
        expected = r.header("x-envoy-expected-rq-timeout-ms")
        attempts.append(
            (r.target, r.header("grpc-timeout"), expected if i == 0 or expected is None else "present")
        )
    names = ("connection", "content-type", "content-length", "grpc-status", "grpc-message")
    return {
        "status": resp.status,
        "body": resp.body,
        "headers": {n: resp.header(n) for n in names},
        "closed": closed,
        "attempts": attempts,
    }


INCOMPLETE = b"POST /%s HTTP/1.1\r\nHost: t.test\r\nContent-Length: 10\r\n\r\nabc"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (request("GET", "/idle", host="t.test"), (504, b"stream timeout", False)),
        (INCOMPLETE % b"idle", (408, b"stream timeout", True)),
    ],
    ids=["waiting-for-upstream", "request-incomplete"],
)
def test_route_idle_timeout(diff: Differential, raw: bytes, expected: tuple[int, bytes, bool]) -> None:
    diff.ups["service1"].behave(SLOW)
    got = diff.run(lambda t: _probe(t, raw))
    assert (got["status"], got["body"], got["closed"]) == expected


@pytest.mark.parametrize(
    ("path", "status"),
    [("/off", 200), ("/longer", 200), ("/other", 504)],
    ids=["zero-switches-it-off", "longer-than-the-hcm", "hcm-stream-idle-timeout"],
)
def test_route_idle_timeout_replaces_the_connection_managers(
    diff: Differential, path: str, status: int
) -> None:
    diff.ups["service1"].behave(Behaviour(delay=0.8, body=b"slow but fine"))
    got = diff.run(lambda t: _probe(t, request("GET", path, host="t.test"), "idle_port"))
    assert got["status"] == status
    assert got["body"] == (b"slow but fine" if status == 200 else b"stream timeout")


def test_per_try_idle_timeout_retries_a_silent_attempt(diff: Differential) -> None:
    diff.ups["service1"].behave(SLOW)
    got = diff.run(lambda t: _probe(t, request("GET", "/pti", host="t.test")))
    assert (got["status"], got["body"]) == (504, b"upstream request timeout")
    # Two attempts (num_retries 1); the retry still announces the route timeout's remainder.
    assert got["attempts"] == [("/pti", None, "15000"), ("/pti", None, "present")]


def test_per_try_idle_timeout_lets_a_prompt_response_through(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(body=b"prompt"))
    got = diff.run(lambda t: _probe(t, request("GET", "/pti", host="t.test")))
    assert (got["status"], got["body"], len(got["attempts"])) == (200, b"prompt", 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (request("GET", "/msd", host="t.test"), (504, b"downstream duration timeout", False)),
        (INCOMPLETE % b"msd", (408, b"downstream duration timeout", True)),
    ],
    ids=["waiting-for-upstream", "request-incomplete"],
)
def test_route_max_stream_duration(diff: Differential, raw: bytes, expected: tuple[int, bytes, bool]) -> None:
    diff.ups["service1"].behave(SLOW)
    got = diff.run(lambda t: _probe(t, raw))
    assert (got["status"], got["body"], got["closed"]) == expected
    if expected[0] == 504:
        # Envoy's "new timeouts": the route's 7 s timeout is neither announced nor enforced.
        assert got["attempts"] == [("/msd", None, None)]


@pytest.mark.parametrize(("path", "status"), [("/off", 200), ("/other", 504)])
def test_route_max_stream_duration_replaces_the_connection_managers(
    diff: Differential, path: str, status: int
) -> None:
    diff.ups["service1"].behave(Behaviour(delay=0.7, body=b"slow but fine"))
    got = diff.run(lambda t: _probe(t, request("GET", path, host="t.test"), "duration_port"))
    assert got["status"] == status


GRPC_CASES = [
    # (listener, path, request headers, upstream's grpc-timeout, status, grpc-status)
    ("listener_port", "/grpc", [GRPC, ("grpc-timeout", "300m")], "200m", 200, "4"),  # minus the offset
    ("listener_port", "/grpc", [GRPC, ("grpc-timeout", "2S")], "400m", 200, "4"),  # capped, minus the offset
    ("listener_port", "/grpc", [("grpc-timeout", "2S")], "2S", 504, None),  # not gRPC: header kept
    ("listener_port", "/gnomax", [GRPC, ("grpc-timeout", "400m")], "400m", 200, "4"),  # 0: no cap
    ("duration_port", "/grpc", [GRPC], "400m", 200, "4"),  # no header: the HCM's duration, announced
    ("duration_port", "/off", [GRPC, ("grpc-timeout", "5S")], None, 200, None),  # switched off: dropped
]


@pytest.mark.parametrize(
    ("listener", "path", "headers", "upstream_timeout", "status", "grpc_status"),
    GRPC_CASES,
    ids=["offset", "capped", "not-grpc", "uncapped", "hcm-duration", "duration-off"],
)
def test_grpc_timeout_header(
    diff: Differential,
    listener: str,
    path: str,
    headers: list[tuple[str, str]],
    upstream_timeout: str | None,
    status: int,
    grpc_status: str | None,
) -> None:
    fast = path == "/off"
    diff.ups["service1"].behave(Behaviour(body=b"fine") if fast else SLOW)
    got = diff.run(lambda t: _probe(t, request("GET", path, host="t.test", headers=headers), listener))
    assert got["attempts"] == [(path, upstream_timeout, None)]
    assert got["status"] == status
    hs = got["headers"]
    assert hs["grpc-status"] == grpc_status  # type: ignore[index]
    if grpc_status is not None:
        # A gRPC request's local reply: HTTP 200, DEADLINE_EXCEEDED and the body as grpc-message.
        assert hs["grpc-message"] == "downstream duration timeout"  # type: ignore[index]
        assert hs["content-type"] == "application/grpc"  # type: ignore[index]


# --- generated hash cookies ------------------------------------------------------------------------


def _cookie_value(client: tuple[str, int], proxy_port: int) -> str:
    """Envoy's generated cookie: hex xxHash64 of the downstream remote then local address."""
    return f"{xxhash64(f'{client[0]}:{client[1]}127.0.0.1:{proxy_port}'.encode()):016x}"


def _cookie_session(t: Target, path: str) -> dict[str, object]:
    t.ups.clear()
    with t.client() as c:
        first = c.exchange(request("GET", path, host="t.test"))
        again = c.exchange(request("GET", path, host="t.test"))
        value = _cookie_value(c.sock.getsockname(), t.port())
    cookies = [h.replace(value, "<generated>") for h in first.header_all("set-cookie")]
    assert again.header_all("set-cookie") == first.header_all("set-cookie")  # same for the connection
    return {"status": first.status, "set-cookie": cookies}


def test_generated_cookie_set_cookie_is_exactly_envoys(diff: Differential) -> None:
    got = diff.run(lambda t: _cookie_session(t, "/cookie/a"))
    assert got == {
        "status": 200,
        "set-cookie": ['sess="<generated>"; Max-Age=60; Path=/p; SameSite=Strict; Secure; HttpOnly'],
    }


def test_no_cookie_is_generated_for_a_cluster_that_does_not_hash(diff: Differential) -> None:
    assert diff.run(lambda t: _cookie_session(t, "/roundrobin")) == {"status": 200, "set-cookie": []}


def test_each_retry_adds_its_set_cookie(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(status=503))
    diff.ups["service2"].behave(Behaviour(status=503))
    got = diff.run(lambda t: _cookie_session(t, "/session"))
    # ttl 0s: a session cookie (no Max-Age); one per host choice (three attempts).
    assert got == {"status": 503, "set-cookie": ['sess="<generated>"; HttpOnly'] * 3}


def _stickiness(t: Target) -> list[bool]:
    """Six clients each get a cookie; sending it back must reach the upstream the first request hit."""
    out = []
    for _ in range(6):
        t.ups.clear()
        with t.client() as c:
            first = c.exchange(request("GET", "/cookie", host="t.test"))
            value = _cookie_value(c.sock.getsockname(), t.port())
        hit = t.ups.requests()[0].upstream
        assert first.header_all("set-cookie")[0].startswith(f'sess="{value}"')
        seen = []
        for _ in range(3):
            t.ups.clear()
            obs = t.exchange(
                request("GET", "/cookie", host="t.test", headers=[("cookie", f"a=1; sess={value}")])
            )
            assert obs.header("set-cookie") is None
            seen.append(obs.only_upstream.upstream)
        out.append(seen == [hit] * 3)
    return out


def test_requests_sending_the_generated_cookie_stick_to_its_upstream(diff: Differential) -> None:
    assert diff.run(_stickiness) == [True] * 6


def test_route_timers_count_as_envoy_counts_them(diff: Differential) -> None:
    diff.ups["service1"].behave(SLOW)
    names = ("downstream_rq_idle_timeout", "downstream_rq_max_duration_reached", "downstream_rq_timeout")

    def scenario(t: Target) -> dict[str, int]:
        before = {n: t.stat(f"http.main.{n}") for n in names}
        _probe(t, request("GET", "/idle", host="t.test"))
        _probe(t, request("GET", "/msd", host="t.test"))
        return {n: t.stat(f"http.main.{n}") - before[n] for n in names}

    assert diff.run(scenario) == dict(zip(names, (1, 1, 0), strict=True))

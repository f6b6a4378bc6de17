"""internal_address_config: which requests are internal, and what an internal request may ask of the
router through Envoy's request headers (retries and timeouts), against Envoy 1.40.

Listeners: `listener_port` trusts x-forwarded-for addresses in 10.0.0.0/8; `legacy_port` has an
internal_address_config without ranges (Envoy's legacy private ranges); `edge_port` uses the remote
address and trusts 127.0.0.1.  External requests lose the steering headers; internal ones get
`x-envoy-internal: true` and the router obeys and consumes them.

The sidecar half needs translate/lds.py to pass internal_address_config to the model (the hook in
sidecar/translate/hcm_internal.py); until then it is an expected (strict) failure."""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import request
from tests.support.ports import first_non_loopback_ipv4
from tests.support.upstream import Behaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "internal.yaml"
UPSTREAMS = ("service1",)
INTERNAL = ("x-forwarded-for", "10.1.2.3")
EXTERNAL = ("x-forwarded-for", "1.2.3.4")
FAILING = Behaviour(status=503, body=b"bad")
SLOW = Behaviour(delay=1.0, body=b"too late")


def _seen(
    t: Target, headers: list[tuple[str, str]], path: str = "/none", listener: str = "listener_port"
) -> dict[str, object]:
    """Status and body, whether the response carried x-request-id, and per upstream attempt its
    x-envoy-* headers (the expected timeout of a retry depends on the clock: only its presence)."""
    obs = t.exchange(request("GET", path, host="i.test", headers=headers), listener)
    attempts = []
    for i, r in enumerate(obs.upstream):
        hs = sorted((k, v) for k, v in r.headers if k.startswith(("x-envoy", "x-only", "x-forwarded-for")))
        if i:
            hs = [(k, "present" if k == "x-envoy-expected-rq-timeout-ms" else v) for k, v in hs]
        attempts.append(hs)
    return {
        "status": obs.status,
        "body": obs.body,
        "content-length": obs.header("content-length"),
        "request-id": obs.header("x-request-id") is not None,
        "attempts": attempts,
    }


def _attempts(
    diff: Differential, headers: list[tuple[str, str]], behaviour: Behaviour, path: str = "/none"
) -> int:
    diff.ups["service1"].behave(behaviour)
    got = diff.run(lambda t: _seen(t, headers, path))
    return len(got["attempts"])  # type: ignore[arg-type]


# --- retries -----------------------------------------------------------------------------------------


def test_internal_retry_on_makes_a_route_without_policy_retry(diff: Differential) -> None:
    diff.ups["service1"].behave(FAILING)
    got = diff.run(lambda t: _seen(t, [INTERNAL, ("x-envoy-retry-on", "5xx")]))
    assert (got["status"], got["body"]) == (503, b"bad")
    # Envoy's default policy (num_retries 1); the header is consumed, the request marked internal.
    assert got["attempts"] == [
        [
            ("x-envoy-expected-rq-timeout-ms", "15000"),
            ("x-envoy-internal", "true"),
            ("x-forwarded-for", "10.1.2.3"),
        ],
        [
            ("x-envoy-expected-rq-timeout-ms", "present"),
            ("x-envoy-internal", "true"),
            ("x-forwarded-for", "10.1.2.3"),
        ],
    ]


@pytest.mark.parametrize(
    "xff",
    ["1.2.3.4", "10.1.2.3, 10.2.2.2", "10.1.2.3:80", "[10.1.2.3]"],
    ids=["outside", "two-addresses", "with-port", "bracketed"],
)
def test_external_retry_on_is_stripped_and_ignored(diff: Differential, xff: str) -> None:
    diff.ups["service1"].behave(FAILING)
    got = diff.run(lambda t: _seen(t, [("x-forwarded-for", xff), ("x-envoy-retry-on", "5xx")]))
    assert got["attempts"] == [[("x-envoy-expected-rq-timeout-ms", "15000"), ("x-forwarded-for", xff)]]


RETRY_CASES = [
    # (request headers besides the internal x-forwarded-for, upstream behaviour, path, attempts)
    ([("x-envoy-retry-on", " 5xx , bogus")], FAILING, "/none", 2),
    ([("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "3")], FAILING, "/none", 4),
    ([("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "0")], FAILING, "/none", 1),
    ([("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "4294967297")], FAILING, "/none", 2),  # 32 bits
    ([("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "-1")], FAILING, "/none", 2),  # ignored
    ([("x-envoy-max-retries", "2")], FAILING, "/none", 1),  # no condition: no retry
    ([("x-envoy-max-retries", "2")], FAILING, "/retry", 3),  # the route's condition
    (
        [("x-envoy-retry-on", "retriable-4xx"), ("x-envoy-max-retries", "2")],
        Behaviour(status=409),
        "/retry",
        3,
    ),
    (
        [("x-envoy-retry-on", "retriable-status-codes"), ("x-envoy-retriable-status-codes", "418, 419")],
        Behaviour(status=418),
        "/none",
        2,
    ),
    (
        [("x-envoy-retry-on", "retriable-headers"), ("x-envoy-retriable-header-names", "X-Foo, x-bar")],
        Behaviour(headers=(("x-bar", "1"),)),
        "/none",
        2,
    ),
    ([("x-envoy-retry-grpc-on", "unavailable")], Behaviour(headers=(("grpc-status", "14"),)), "/none", 2),
    ([("x-envoy-retry-on", "unavailable")], Behaviour(headers=(("grpc-status", "14"),)), "/none", 1),
]


@pytest.mark.parametrize(
    ("headers", "behaviour", "path", "attempts"),
    RETRY_CASES,
    ids=[
        "tokens-trimmed",
        "max-retries",
        "max-retries-0",
        "max-retries-wraps",
        "max-retries-negative",
        "max-retries-alone",
        "max-retries-route-policy",
        "merged-with-route",
        "status-codes",
        "header-names",
        "grpc-on",
        "grpc-name-in-retry-on",
    ],
)
def test_retry_headers(
    diff: Differential, headers: list[tuple[str, str]], behaviour: Behaviour, path: str, attempts: int
) -> None:
    assert _attempts(diff, [INTERNAL, *headers], behaviour, path) == attempts


# --- timeouts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "behaviour", "status", "body", "announced"),
    [
        ([("x-envoy-upstream-rq-timeout-ms", "200")], SLOW, 504, b"upstream request timeout", ["200"]),
        ([("x-envoy-upstream-rq-timeout-ms", " +300 ")], Behaviour(), 200, b"", ["300"]),
        ([("x-envoy-upstream-rq-timeout-ms", "abc")], Behaviour(), 200, b"", ["15000"]),
        ([("x-envoy-upstream-rq-timeout-ms", "0")], Behaviour(), 200, b"", [None]),
        (
            [("x-envoy-upstream-rq-timeout-ms", "300"), ("x-envoy-upstream-rq-per-try-timeout-ms", "300")],
            Behaviour(),
            200,
            b"",
            ["300"],
        ),
        ([("x-envoy-upstream-rq-per-try-timeout-ms", "150")], Behaviour(), 200, b"", ["150"]),
        (
            [("x-envoy-upstream-rq-per-try-timeout-ms", "150"), ("x-envoy-retry-on", "5xx")],
            SLOW,
            504,
            b"upstream request timeout",
            ["150", "150"],
        ),
        ([("x-envoy-expected-rq-timeout-ms", "777")], Behaviour(), 200, b"", ["15000"]),
    ],
    ids=[
        "shortens",
        "signed-spaced",
        "malformed",
        "zero-disables",
        "per-try-not-below",
        "per-try",
        "per-try-retried",
        "expected-overwritten",
    ],
)
def test_timeout_headers(
    diff: Differential,
    headers: list[tuple[str, str]],
    behaviour: Behaviour,
    status: int,
    body: bytes,
    announced: list[str | None],
) -> None:
    diff.ups["service1"].behave(behaviour)
    got = diff.run(lambda t: _seen(t, [INTERNAL, *headers]))
    assert (got["status"], got["body"]) == (status, body)
    seen = [dict(a).get("x-envoy-expected-rq-timeout-ms") for a in got["attempts"]]  # type: ignore[attr-defined]
    # The per-try timeout is announced on each attempt (it is below what is left of 15 s).
    assert [seen[0], *(a if a != "present" else "150" for a in seen[1:])] == announced
    for attempt in got["attempts"]:  # type: ignore[attr-defined]
        assert not {k for k, _ in attempt} & {
            "x-envoy-upstream-rq-timeout-ms",
            "x-envoy-upstream-rq-per-try-timeout-ms",
        }


def test_expected_timeout_is_kept_when_the_route_has_none(diff: Differential) -> None:
    # Under max_stream_duration the router has no timeout to announce: the caller's value goes on.
    got = diff.run(lambda t: _seen(t, [INTERNAL, ("x-envoy-expected-rq-timeout-ms", "777")], "/nodeadline"))
    assert ("x-envoy-expected-rq-timeout-ms", "777") in got["attempts"][0]  # type: ignore[index]


def test_timeout_alt_response_is_204(diff: Differential) -> None:
    diff.ups["service1"].behave(SLOW)
    headers = [
        INTERNAL,
        ("x-envoy-upstream-rq-timeout-ms", "200"),
        ("x-envoy-upstream-rq-timeout-alt-response", "x"),
    ]
    got = diff.run(lambda t: _seen(t, headers))
    assert (got["status"], got["body"], got["content-length"]) == (204, b"", None)


# --- which headers go on ------------------------------------------------------------------------------

CONTROL = [
    ("x-envoy-retry-on", "5xx"),
    ("x-envoy-retry-grpc-on", "internal"),
    ("x-envoy-max-retries", "1"),
    ("x-envoy-retriable-status-codes", "418"),
    ("x-envoy-retriable-header-names", "x-a"),
    ("x-envoy-upstream-alt-stat-name", "alt"),
    ("x-envoy-upstream-rq-timeout-ms", "5000"),
    ("x-envoy-upstream-rq-per-try-timeout-ms", "3000"),
    ("x-envoy-upstream-rq-timeout-alt-response", "1"),
    ("x-envoy-expected-rq-timeout-ms", "9"),
    ("x-envoy-hedge-on-per-try-timeout", "true"),
    ("x-envoy-is-timeout-retry", "true"),
    ("x-envoy-ip-tags", "t"),
    ("x-envoy-force-trace", "1"),
    ("x-envoy-upstream-stream-duration-ms", "5000"),
    ("x-envoy-internal", "true"),
    ("x-envoy-external-address", "9.9.9.9"),
    ("x-envoy-original-url", "http://a/b"),
    ("x-envoy-decorator-operation", "op"),
    ("x-envoy-downstream-service-cluster", "c"),
    ("x-only-inside", "secret"),
]


@pytest.mark.parametrize(("xff", "internal"), [(INTERNAL, True), (EXTERNAL, False), (None, False)])
def test_control_headers_forwarded(diff: Differential, xff: tuple[str, str] | None, internal: bool) -> None:
    got = diff.run(lambda t: _seen(t, ([xff] if xff else []) + CONTROL))
    names = {k for k, _ in got["attempts"][0]} - {"x-forwarded-for"}  # type: ignore[index]
    kept_always = {
        "x-envoy-is-timeout-retry",
        "x-envoy-external-address",
        "x-envoy-decorator-operation",
        "x-envoy-downstream-service-cluster",
    }
    if internal:
        # The router consumed what steers it; the rest stays, and the request is marked internal.
        assert names == kept_always | {
            "x-envoy-expected-rq-timeout-ms",
            "x-envoy-ip-tags",
            "x-envoy-force-trace",
            "x-envoy-original-url",
            "x-envoy-internal",
            "x-only-inside",
        }
        assert got["request-id"] is True  # x-envoy-force-trace: the id comes back
    else:
        assert names == kept_always | {"x-envoy-expected-rq-timeout-ms"}
        assert got["request-id"] is False


@pytest.mark.parametrize(
    ("xff", "internal"),
    [
        ("10.1.2.3", True),
        ("127.0.0.1", True),
        ("127.0.0.2", False),
        ("192.168.1.1", True),
        ("172.16.0.1", True),
        ("172.32.0.1", False),
        ("fd00::1", True),
        ("fc00::1", False),
        ("::1", True),
        ("8.8.8.8", False),
    ],
)
def test_internal_address_config_without_ranges_trusts_the_legacy_ranges(
    diff: Differential, xff: str, internal: bool
) -> None:
    diff.ups["service1"].behave(FAILING)
    got = diff.run(
        lambda t: _seen(t, [("x-forwarded-for", xff), ("x-envoy-retry-on", "5xx")], listener="legacy_port")
    )
    assert len(got["attempts"]) == (2 if internal else 1)  # type: ignore[arg-type]


def test_edge_trusts_the_peer_when_no_forwarded_for_arrived(diff: Differential) -> None:
    headers = [("x-envoy-retry-on", "5xx"), ("x-request-id", "mine"), ("x-envoy-external-address", "9.9.9.9")]
    diff.ups["service1"].behave(FAILING)

    def scenario(t: Target) -> list[object]:
        out: list[object] = []
        for extra in ([], [("x-forwarded-for", "127.0.0.1")]):
            obs = t.exchange(request("GET", "/none", host="i.test", headers=headers + extra), "edge_port")
            up = obs.upstream[0]
            out.append(
                (len(obs.upstream), up.header("x-envoy-internal"), up.header("x-request-id") == "mine")
            )
            out.append((up.header_all("x-forwarded-for"), up.header_all("x-envoy-external-address")))
        return out

    local = first_non_loopback_ipv4()
    assert diff.run(scenario) == [
        (2, "true", True),  # internal: retried, its request id kept, its external address kept
        ([local], ["9.9.9.9"]),
        (1, None, False),  # x-forwarded-for arrived: external, at the edge
        ([f"127.0.0.1,{local}"], ["127.0.0.1"]),
    ]

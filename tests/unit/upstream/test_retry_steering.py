"""upstream.retry.steer: an internal request's x-envoy-retry-* headers merged into the route's policy
as Envoy's RetryStateImpl does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.http.events import ResponseHead
from sidecar.model.retry import GRPC_CONDITIONS, HTTP_CONDITIONS, RetryPolicy
from sidecar.upstream.retry import Outcome, retriable, steer

ROUTE = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=2, retriable_status_codes=frozenset({418}))


def test_no_policy_and_no_header_means_no_retries() -> None:
    assert steer(None) is None
    assert steer(None, max_retries=b"3", status_codes=b"500") is None
    assert steer(RetryPolicy(retry_on=frozenset())) is None


def test_the_route_policy_alone_is_kept() -> None:
    p = steer(ROUTE)
    assert p == ROUTE


def test_retry_on_without_a_route_policy_gets_envoys_defaults() -> None:
    p = steer(None, b"5xx")
    assert p is not None
    assert p.retry_on == {"5xx"} and p.num_retries == 1
    assert (p.base_interval, p.max_interval) == (0.025, 0.25)


def test_tokens_are_trimmed_and_unknown_ones_dropped() -> None:
    p = steer(None, b" 5xx ,, bogus,\tretriable-4xx")
    assert p is not None and p.retry_on == {"5xx", "retriable-4xx"}
    # gRPC names count only in x-envoy-retry-grpc-on, HTTP ones only in x-envoy-retry-on.
    assert steer(None, b"unavailable") is None
    assert steer(None, retry_grpc_on=b"5xx") is None
    g = steer(None, retry_grpc_on=b"unavailable, cancelled")
    assert g is not None and g.retry_on == {"unavailable", "cancelled"}


def test_headers_merge_with_the_route() -> None:
    p = steer(ROUTE, b"retriable-4xx", b"internal")
    assert p is not None and p.retry_on == {"5xx", "retriable-4xx", "internal"}
    assert p.num_retries == 2


def test_max_retries_wins_once_a_condition_is_on() -> None:
    def n(raw: bytes, policy: RetryPolicy | None = ROUTE) -> int | None:
        p = steer(policy, max_retries=raw)
        return None if p is None else p.num_retries

    assert n(b"5") == 5
    assert n(b"0") == 0
    assert n(b" +3 ") == 3
    assert n(b"-1") == 2  # not an unsigned number: the route's
    assert n(b"x") == 2
    assert n(b"4294967297") == 1  # Envoy keeps retries_remaining_ in 32 bits
    assert n(b"5", None) is None


def test_status_codes_and_header_names_are_added() -> None:
    p = steer(
        ROUTE,
        b"retriable-status-codes,retriable-headers",
        status_codes=b"500, x,429,,-1",
        header_names=b"X-A, ,x-b",
    )
    assert p is not None
    assert p.retriable_status_codes == {418, 500, 429}
    assert retriable(p, Outcome.RESPONSE, 429)
    names = [m.name for m in p.retriable_headers]  # type: ignore[attr-defined]
    assert names == ["x-a", "x-b"]
    with_b = ResponseHead(200, [(b"x-b", b"anything")])
    without = ResponseHead(200, [(b"x-c", b"1")])
    assert any(m.matches(with_b, "") for m in p.retriable_headers)  # type: ignore[attr-defined]
    assert not any(m.matches(without, "") for m in p.retriable_headers)  # type: ignore[attr-defined]


def test_derived_fields_follow_the_merge() -> None:
    # The router's fast path reads status_floor / reads_headers: they must see the header conditions.
    p = steer(None, b"retriable-4xx", status_codes=b"404")
    assert p is not None and p.status_floor == 409
    p = steer(None, retry_grpc_on=b"unavailable")
    assert p is not None and p.reads_headers


TOKENS = [*sorted(HTTP_CONDITIONS), "bogus", ""]


@given(
    st.frozensets(st.sampled_from(sorted(HTTP_CONDITIONS)), max_size=3),
    st.lists(st.sampled_from(TOKENS), max_size=5),
    st.lists(st.sampled_from([*sorted(GRPC_CONDITIONS), "x"]), max_size=3),
)
def test_retry_on_is_the_union_of_the_known_names(
    route_on: frozenset[str], http: list[str], grpc: list[str]
) -> None:
    route = RetryPolicy(retry_on=route_on) if route_on else None
    p = steer(route, b",".join(t.encode() for t in http), b" , ".join(g.encode() for g in grpc))
    want = set(route_on) | (set(http) & HTTP_CONDITIONS) | (set(grpc) & set(GRPC_CONDITIONS))
    assert (p.retry_on if p is not None else set()) == want

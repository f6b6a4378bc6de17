"""The shortcuts the request path takes must not change what it does: each is checked against the
behaviour it replaces (x-request-id shape and uniqueness, a 0% fault filter left out of the chain
only when no route can switch it on, a retry policy skipped only for statuses it can't retry)."""

from __future__ import annotations

import re
import uuid

from hypothesis import given
from hypothesis import strategies as st

from sidecar.http import edge
from sidecar.http.filters.fault import FAULT_TYPE_URL, FaultSettings, Percent
from sidecar.http.filters.registry import active_filters, filter_factories
from sidecar.http.filters.router import Router
from sidecar.model.listener import HttpConnectionManager, HttpFilterConfig
from sidecar.model.retry import GRPC_CONDITIONS, HTTP_CONDITIONS, RetryPolicy
from sidecar.model.route import Route, RouteConfiguration, RouteMatch, VirtualHost
from sidecar.observe.stats import Stats
from sidecar.routing.matchers import PrefixPathMatcher
from sidecar.upstream.retry import Outcome, retriable

_UUID4 = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_request_ids_are_distinct_version_4_uuids() -> None:
    ids = [edge.new_request_id() for _ in range(3 * edge._ID_BATCH + 7)]  # crosses several refills
    assert len(set(ids)) == len(ids)
    for rid in ids:
        assert _UUID4.match(rid), rid
        u = uuid.UUID(rid.decode())
        assert u.version == 4 and u.variant == uuid.RFC_4122
    # The variant nibble takes all four of its values (the batch maps hex digits onto 8, 9, a, b).
    assert {rid[19:20] for rid in ids} == {b"8", b"9", b"a", b"b"}


def _hcm(fault: FaultSettings, per_route: bool) -> HttpConnectionManager:
    route = Route(
        match=RouteMatch(path=PrefixPathMatcher("/")),
        action=None,  # type: ignore[arg-type]  # the registry only reads typed_per_filter_config
        typed_per_filter_config=(("envoy.filters.http.fault", FaultSettings(abort=Percent(100))),) if per_route else (),
    )
    rc = RouteConfiguration(name="rc", virtual_hosts=(VirtualHost(name="vh", domains=("*",), routes=(route,)),))
    return HttpConnectionManager(
        stat_prefix="t",
        route_config=rc,
        http_filters=(
            HttpFilterConfig("envoy.filters.http.fault", FAULT_TYPE_URL, fault),
            HttpFilterConfig("envoy.filters.http.router", "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"),
        ),
    )


def test_zero_percent_fault_filter_is_left_out_unless_a_route_configures_it() -> None:
    zero = FaultSettings(delay=Percent(0), delay_ms=1000, abort=Percent(0), abort_http=503)
    assert zero.inert
    without, with_route = _hcm(zero, per_route=False), _hcm(zero, per_route=True)
    factories = filter_factories(without, Stats())
    assert len(factories) == 2  # every configured filter is built (stats registered once) ...
    assert active_filters(factories, without.route_config) == (Router,)  # ... and left out when idle
    # RDS: the same factories, a route configuration that sets a per-route fault: it is back.
    assert active_filters(factories, with_route.route_config) == factories
    some = FaultSettings(abort=Percent(1), abort_http=503)
    assert not some.inert
    hcm = _hcm(some, per_route=False)
    assert len(active_filters(filter_factories(hcm, Stats()), hcm.route_config)) == 2


@given(
    on=st.frozensets(st.sampled_from(sorted(HTTP_CONDITIONS | set(GRPC_CONDITIONS)))),
    codes=st.frozensets(st.integers(100, 599), max_size=3),
    status=st.integers(100, 599),
)
def test_status_floor_never_skips_a_retriable_response(on: frozenset[str], codes: frozenset[int], status: int) -> None:
    p = RetryPolicy(retry_on=on, retriable_status_codes=codes)
    if not p.reads_headers and status < p.status_floor:
        # The router skips the decision here: it must be a "no" whatever the decision would say.
        assert not retriable(p, Outcome.RESPONSE, status, None, False, False)

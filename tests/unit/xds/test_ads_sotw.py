"""Transcripts of the SotW protocol core: what XdsState sends for each event, request by request.

The first test replays, step for step, what envoy 1.40 sent to tests/support/fake_xds.py for the
same pushes (recorded with ADS api_type GRPC; see tests/integration/test_xds_envoy.py for the live
comparison)."""

from __future__ import annotations

from google.protobuf import any_pb2

from sidecar.xds.ads import (
    CLUSTER,
    ENDPOINT,
    INTERNAL,
    LISTENER,
    RESOURCE,
    ROUTE,
    Rejected,
    Update,
    XdsState,
)
from tests.unit.xds.helpers import NODE, Recorder, brief, cla, cluster, listener, packed, route, sotw


class Runtime:
    """What the sidecar runtime will do around the core: EDS for the clusters of a CDS update, LDS
    once the first EDS arrives (clusters warm), RDS for the listeners of an LDS update."""

    def __init__(self, state: XdsState) -> None:
        self.state = state
        self.updates: list[Update] = []
        self.reject: dict[str, list[Rejected]] = {}

    def __call__(self, update: Update) -> list[Rejected]:
        self.updates.append(update)
        if update.type_url in self.reject:
            return self.reject.pop(update.type_url)
        if update.type_url == CLUSTER:
            names = set(self.state.names(ENDPOINT) or ()) | set(update.updated)
            self.state.watch(ENDPOINT, names - update.removed)
        elif update.type_url == ENDPOINT and self.state.names(LISTENER) is None:
            if LISTENER not in self.state.types():
                self.state.watch(LISTENER)
        elif update.type_url == LISTENER:
            self.state.watch(ROUTE, {m.stat_prefix for m in update.updated.values()})
        return []


def test_envoy_startup_transcript() -> None:
    s = XdsState(NODE)
    rt = Runtime(s)
    s.watch(CLUSTER)
    s.connected()
    assert [brief(r) for r in s.take_requests()] == [("Cluster", [], "", "", None, True)]

    s.on_response(sotw(CLUSTER, [cluster("c1")], "1", "n1"), rt)
    # EDS for the new cluster goes before the CDS ACK (Envoy pauses CDS while applying it).
    assert [brief(r) for r in s.take_requests()] == [
        ("ClusterLoadAssignment", ["c1"], "", "", None, True),
        ("Cluster", [], "1", "n1", None, True),
    ]
    s.on_response(sotw(ENDPOINT, [cla("c1")], "1", "n2"), rt)
    assert [brief(r) for r in s.take_requests()] == [
        ("Listener", [], "", "", None, True),
        ("ClusterLoadAssignment", ["c1"], "1", "n2", None, True),
    ]
    s.on_response(sotw(LISTENER, [listener("l1", route="r1")], "1", "n3"), rt)
    assert [brief(r) for r in s.take_requests()] == [
        ("RouteConfiguration", ["r1"], "", "", None, True),
        ("Listener", [], "1", "n3", None, True),
    ]
    s.on_response(sotw(ROUTE, [route("r1")], "1", "n4"), rt)
    assert [brief(r) for r in s.take_requests()] == [("RouteConfiguration", ["r1"], "1", "n4", None, True)]


def test_nack_keeps_previous_version_and_names_resource_and_field() -> None:
    s = XdsState(NODE)
    rec = Recorder()
    s.watch(LISTENER)
    s.connected()
    s.take_requests()
    s.on_response(sotw(LISTENER, [listener("l1")], "1", "n1"), rec)
    s.take_requests()
    rec.answers.append([Rejected("l1", "filter_chains[0].filters[0]", "unknown filter")])
    errors = s.on_response(sotw(LISTENER, [listener("l1", port=1)], "2", "n2"), rec)
    assert errors
    (req,) = s.take_requests()
    assert req.version_info == "1" and req.response_nonce == "n2"
    assert req.error_detail.code == INTERNAL
    assert req.error_detail.message == "l1: filter_chains[0].filters[0]: unknown filter"
    st = s.stats(LISTENER)
    assert st is not None and (st.update_success, st.update_rejected) == (1, 1)
    # The rejected bytes were not committed: the same listener again is a change again.
    s.on_response(sotw(LISTENER, [listener("l1", port=1)], "3", "n3"), rec)
    assert list(rec.last.updated) == ["l1"]
    (req,) = s.take_requests()
    assert (req.version_info, req.response_nonce, req.HasField("error_detail")) == ("3", "n3", False)


def test_first_nack_has_empty_version() -> None:
    s = XdsState(NODE)
    s.watch(CLUSTER)
    s.connected()
    s.take_requests()
    s.on_response(sotw(CLUSTER, [cluster("c1")], "7", "n1"), lambda u: [Rejected("c1", "type", "no")])
    (req,) = s.take_requests()
    assert (req.version_info, req.response_nonce, req.error_detail.message) == ("", "n1", "c1: type: no")


def test_node_on_first_message_only() -> None:
    s = XdsState(NODE, node_on_first_message_only=True)
    s.watch(CLUSTER)
    s.watch(LISTENER)
    s.connected()
    reqs = s.take_requests()
    assert [r.HasField("node") for r in reqs] == [True, False]
    assert reqs[0].node == NODE
    s.on_response(sotw(CLUSTER, [], "1", "n1"), lambda u: [])
    assert [r.HasField("node") for r in s.take_requests()] == [False]
    s.disconnected()
    s.connected()  # a new stream: the node again, once
    assert [r.HasField("node") for r in s.take_requests()] == [True, False]


def test_node_on_every_request_by_default() -> None:
    s = XdsState(NODE)
    s.watch(CLUSTER)
    s.watch(LISTENER)
    s.connected()
    assert all(r.HasField("node") for r in s.take_requests())


def test_complete_sets_remove_absent_and_skip_unchanged() -> None:
    s = XdsState(NODE)
    rec = Recorder()
    s.watch(CLUSTER)
    s.connected()
    s.on_response(sotw(CLUSTER, [cluster("a"), cluster("b")], "1", "n1"), rec)
    assert sorted(rec.last.updated) == ["a", "b"] and rec.last.removed == frozenset()
    s.on_response(sotw(CLUSTER, [cluster("a"), cluster("c")], "2", "n2"), rec)
    assert sorted(rec.last.updated) == ["c"] and rec.last.removed == {"b"}
    changed = cluster("a")
    changed.connect_timeout.seconds = 5
    s.on_response(sotw(CLUSTER, [changed, cluster("c")], "3", "n3"), rec)
    assert list(rec.last.updated) == ["a"] and rec.last.updated["a"].connect_timeout.seconds == 5
    assert rec.last.version == "3"


def test_by_name_types_ignore_unrequested_and_keep_absent() -> None:
    s = XdsState(NODE)
    rec = Recorder()
    s.watch(ENDPOINT, ["a", "b"])
    s.connected()
    s.on_response(sotw(ENDPOINT, [cla("a"), cla("zzz")], "1", "n1"), rec)
    assert list(rec.last.updated) == ["a"] and rec.last.removed == frozenset()
    s.on_response(sotw(ENDPOINT, [cla("b")], "2", "n2"), rec)
    assert list(rec.last.updated) == ["b"] and rec.last.removed == frozenset()


def test_subscription_change_carries_current_version_and_nonce() -> None:
    s = XdsState(NODE)
    s.watch(ROUTE, ["r1"])
    s.connected()
    s.take_requests()
    s.on_response(sotw(ROUTE, [route("r1")], "4", "n9"), lambda u: [])
    s.take_requests()
    s.watch(ROUTE, ["r1", "r2"])
    assert [brief(r) for r in s.take_requests()] == [
        ("RouteConfiguration", ["r1", "r2"], "4", "n9", None, True)
    ]
    s.watch(ROUTE, ["r1", "r2"])  # no change, no request
    assert s.take_requests() == []
    # All names gone: an empty list goes out, as Envoy sends when its last EDS watch is removed.
    s.watch(ROUTE, [])
    assert [brief(r) for r in s.take_requests()] == [("RouteConfiguration", [], "4", "n9", None, True)]


def test_no_watch_left_response_handling() -> None:
    s = XdsState(NODE)
    rec = Recorder()
    s.watch(ENDPOINT, [])
    s.connected()
    s.take_requests()
    s.on_response(sotw(ENDPOINT, [], "2", "n1"), rec)
    assert s.take_requests() == [] and s.version(ENDPOINT) == "2"
    s.on_response(sotw(ENDPOINT, [cla("c1")], "3", "n2"), rec)
    assert rec.updates == []
    assert [brief(r) for r in s.take_requests()] == [("ClusterLoadAssignment", [], "2", "n2", None, True)]


def test_reconnect_resubscribes_in_envoy_order_with_versions_and_no_nonce() -> None:
    s = XdsState(NODE, node_on_first_message_only=True)
    for t, names in ((ROUTE, ["r1"]), (LISTENER, None), (ENDPOINT, ["c1"]), (CLUSTER, None)):
        s.watch(t, names)
    s.connected()
    for t, res, n in (
        (CLUSTER, cluster("c1"), "n1"),
        (LISTENER, listener("l1"), "n2"),
        (ROUTE, route("r1"), "n3"),
    ):
        s.on_response(sotw(t, [res], "1", n), lambda u: [])
    s.take_requests()
    s.disconnected()
    assert s.take_requests() == []
    s.watch(ENDPOINT, ["c1", "c2"])  # a change while down is part of the resubscription
    s.connected()
    assert [brief(r) for r in s.take_requests()] == [
        ("Cluster", [], "1", "", None, True),
        ("ClusterLoadAssignment", ["c1", "c2"], "", "", None, False),
        ("Listener", [], "1", "", None, False),
        ("RouteConfiguration", ["r1"], "1", "", None, False),
    ]
    st = s.stats(CLUSTER)
    assert st is not None and st.update_failure == 1


def test_paused_type_holds_its_ack_and_resubscription() -> None:
    s = XdsState(NODE)
    s.watch(CLUSTER)
    s.watch(ENDPOINT, ["c1"])
    s.connected()
    s.take_requests()
    s.pause(CLUSTER)
    s.on_response(sotw(CLUSTER, [cluster("c1"), cluster("c2")], "2", "n6"), lambda u: [])
    s.watch(ENDPOINT, ["c1", "c2"])
    assert [brief(r)[:2] for r in s.take_requests()] == [("ClusterLoadAssignment", ["c1", "c2"])]
    s.disconnected()
    s.connected()
    assert [brief(r)[0] for r in s.take_requests()] == ["ClusterLoadAssignment"]
    s.resume(CLUSTER)
    assert [brief(r) for r in s.take_requests()] == [("Cluster", [], "2", "", None, True)]


def test_every_response_is_acked_with_its_own_nonce() -> None:
    # Envoy's client does not drop a response whose nonce is older or unexpected: each one is applied
    # in order and (N)ACKed with its own nonce; the server decides what is stale.
    s = XdsState(NODE)
    rec = Recorder()
    s.watch(LISTENER)
    s.connected()
    s.take_requests()
    s.on_response(sotw(LISTENER, [listener("a")], "1", "n1"), rec)
    first = s.take_requests()
    s.on_response(sotw(LISTENER, [listener("b")], "2", "n2"), rec)
    second = s.take_requests()
    assert [(r.version_info, r.response_nonce) for r in first + second] == [("1", "n1"), ("2", "n2")]
    assert rec.last.removed == {"a"}
    # Two responses before the adapter drains: one request with the latest state.
    s.on_response(sotw(LISTENER, [listener("c")], "3", "n3"), rec)
    s.on_response(sotw(LISTENER, [listener("d")], "4", "n4"), rec)
    assert [(r.version_info, r.response_nonce) for r in s.take_requests()] == [("4", "n4")]


def test_core_level_rejections_never_call_apply() -> None:
    s = XdsState(NODE)
    rec = Recorder()
    s.watch(LISTENER)
    s.connected()
    s.take_requests()
    s.on_response(sotw(LISTENER, [listener("a"), listener("a", port=1)], "1", "n1"), rec)
    (req,) = s.take_requests()
    assert rec.updates == [] and "duplicate" in req.error_detail.message
    wrong = sotw(LISTENER, [cluster("x")], "1", "n2")
    s.on_response(wrong, rec)
    (req,) = s.take_requests()
    assert rec.updates == [] and "does not match" in req.error_detail.message
    garbage = sotw(LISTENER, [], "1", "n3")
    garbage.resources.add(type_url=LISTENER, value=b"\xff\xff")
    s.on_response(garbage, rec)
    (req,) = s.take_requests()
    assert rec.updates == [] and "cannot decode" in req.error_detail.message


def test_resource_wrapper_is_unwrapped() -> None:
    from envoy.service.discovery.v3 import discovery_pb2

    s = XdsState(NODE)
    rec = Recorder()
    s.watch(ROUTE, ["r1"])
    s.connected()
    wrapped = discovery_pb2.Resource(name="r1", version="v7", resource=packed(route("r1")))
    resp = sotw(ROUTE, [], "1", "n1")
    any_msg = any_pb2.Any(type_url=RESOURCE, value=wrapped.SerializeToString())
    resp.resources.append(any_msg)
    s.on_response(resp, rec)
    assert list(rec.last.updated) == ["r1"]


def test_responses_for_unsubscribed_types_are_dropped() -> None:
    s = XdsState(NODE)
    s.watch(CLUSTER)
    s.connected()
    s.take_requests()
    assert s.receive(sotw(LISTENER, [listener("a")], "1", "n1")) is None
    assert s.take_requests() == []


def test_settle_after_a_reconnect_commits_but_does_not_ack_on_the_new_stream() -> None:
    s = XdsState(NODE)
    s.watch(CLUSTER)
    s.connected()
    s.take_requests()
    update = s.receive(sotw(CLUSTER, [cluster("a")], "1", "n1"))
    assert update is not None
    s.disconnected()
    s.connected()
    s.take_requests()
    s.settle(update, [])
    assert s.take_requests() == [] and s.version(CLUSTER) == "1"


def test_initial_fetch_timeout_per_name_and_wildcard() -> None:
    s = XdsState(NODE)
    s.watch(LISTENER, now=0.0, initial_fetch_timeout=15.0)
    s.watch(ROUTE, ["r1", "r2"], now=1.0, initial_fetch_timeout=5.0)
    s.watch(ENDPOINT, ["c1"], now=0.0, initial_fetch_timeout=0.0)  # 0 waits forever
    s.connected()
    assert s.next_deadline() == 6.0
    s.on_response(sotw(ROUTE, [route("r1")], "1", "n1"), lambda u: [])
    assert s.expire(5.9) == []
    assert s.expire(6.0) == [(ROUTE, "r2")]
    st = s.stats(ROUTE)
    assert st is not None and st.init_fetch_timeout == 1
    s.on_response(sotw(LISTENER, [], "1", "n2"), lambda u: [])
    assert s.next_deadline() is None and s.expire(100.0) == []


def test_rejection_stops_initial_fetch_timers() -> None:
    s = XdsState(NODE)
    s.watch(CLUSTER, now=0.0, initial_fetch_timeout=1.0)
    s.connected()
    s.on_response(sotw(CLUSTER, [cluster("a")], "1", "n1"), lambda u: [Rejected("a", "", "bad")])
    assert s.next_deadline() is None


def test_stats_count_like_envoy() -> None:
    s = XdsState(NODE)
    s.watch(CLUSTER)
    s.connected()
    s.on_response(sotw(CLUSTER, [], "1", "n1"), lambda u: [])
    s.on_response(sotw(CLUSTER, [cluster("a")], "2", "n2"), lambda u: [Rejected("a", "", "no")])
    s.disconnected()
    st = s.stats(CLUSTER)
    assert st is not None
    # start + success + rejection + connection failure
    assert (st.update_attempt, st.update_success, st.update_rejected, st.update_failure) == (4, 1, 1, 1)
    assert st.version_text == "1" and st.version == 13237225503670494420  # xxHash64("1"), Envoy's gauge


def test_long_errors_are_truncated() -> None:
    s = XdsState(NODE)
    s.watch(CLUSTER)
    s.connected()
    s.take_requests()
    s.on_response(sotw(CLUSTER, [cluster("a")], "1", "n1"), lambda u: [Rejected("a", "x", "é" * 5000)])
    (req,) = s.take_requests()
    assert len(req.error_detail.message.encode()) <= 4096 and req.error_detail.message.endswith("...")

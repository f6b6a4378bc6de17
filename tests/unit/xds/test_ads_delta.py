"""Transcripts of the Delta (incremental) protocol core, and hypothesis properties of both modes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.xds.ads import CLUSTER, ENDPOINT, LISTENER, ROUTE, Rejected, XdsState
from tests.unit.xds.helpers import NODE, Recorder, brief, cla, cluster, delta, listener, route, sotw


def test_envoy_delta_transcript() -> None:
    # What envoy 1.40 sent with api_type DELTA_GRPC for the same pushes (test_xds_envoy.py replays it).
    s = XdsState(NODE, delta=True)
    s.watch(CLUSTER)
    s.connected()
    assert [brief(r) for r in s.take_requests()] == [("Cluster", [], [], {}, "", None, True)]

    def on_cds(u):  # the runtime subscribes EDS for new clusters while the CDS update applies
        s.watch(ENDPOINT, set(s.names(ENDPOINT) or ()) | set(u.updated))
        return []

    s.on_response(delta(CLUSTER, [("c1", "1", cluster("c1"))], nonce="n1"), on_cds)
    assert [brief(r) for r in s.take_requests()] == [
        ("ClusterLoadAssignment", ["c1"], [], {}, "", None, True),
        ("Cluster", [], [], {}, "n1", None, True),
    ]
    s.on_response(delta(ENDPOINT, [("c1", "1", cla("c1"))], nonce="n2"), lambda u: [])
    assert [brief(r) for r in s.take_requests()] == [("ClusterLoadAssignment", [], [], {}, "n2", None, True)]
    s.watch(LISTENER)
    s.on_response(delta(LISTENER, [("l1", "1", listener("l1"))], nonce="n3"), lambda u: [])
    s.watch(ROUTE, ["r1"])
    s.on_response(delta(ROUTE, [("r1", "1", route("r1"))], nonce="n4"), lambda u: [])
    s.take_requests()
    # A bad listener: NACK with the nonce and error_detail (Delta requests have no version_info).
    s.on_response(
        delta(LISTENER, [("l1", "2", listener("l1", port=1))], nonce="n5"),
        lambda u: [Rejected("l1", "address", "bad")],
    )
    assert [brief(r) for r in s.take_requests()] == [("Listener", [], [], {}, "n5", "l1: address: bad", True)]
    # The stream breaks; the new one re-subscribes with what we hold (the accepted versions).
    s.watch(ENDPOINT, ["c1", "c2"])
    s.disconnected()
    s.connected()
    assert [brief(r) for r in s.take_requests()] == [
        ("Cluster", [], [], {"c1": "1"}, "", None, True),
        ("ClusterLoadAssignment", ["c1", "c2"], [], {"c1": "1"}, "", None, True),
        ("Listener", [], [], {"l1": "1"}, "", None, True),
        ("RouteConfiguration", ["r1"], [], {"r1": "1"}, "", None, True),
    ]


def test_delta_subscribe_unsubscribe_and_removed() -> None:
    s = XdsState(NODE, delta=True, node_on_first_message_only=True)
    rec = Recorder()
    s.watch(ENDPOINT, ["a", "b"])
    s.connected()
    assert [brief(r) for r in s.take_requests()] == [
        ("ClusterLoadAssignment", ["a", "b"], [], {}, "", None, True)
    ]
    s.on_response(
        delta(ENDPOINT, [("a", "1", cla("a")), ("b", "1", cla("b")), ("x", "1", cla("x"))], nonce="n1"), rec
    )
    assert sorted(rec.last.updated) == ["a", "b"]  # x was not asked for
    s.watch(ENDPOINT, ["b", "c"])
    reqs = s.take_requests()
    assert [brief(r) for r in reqs] == [("ClusterLoadAssignment", ["c"], ["a"], {}, "n1", None, False)]
    s.on_response(delta(ENDPOINT, removed=["b", "zzz"], nonce="n2", system_version="sv2"), rec)
    assert rec.last.removed == {"b"} and rec.last.version == "sv2"
    s.watch(ENDPOINT, ["b", "c", "d"])
    s.watch(ENDPOINT, ["b", "c"])  # added then removed before a request: nothing to say about d
    assert [brief(r) for r in s.take_requests()] == [("ClusterLoadAssignment", [], [], {}, "n2", None, False)]


def test_delta_heartbeats_duplicates_and_type_mismatch() -> None:
    s = XdsState(NODE, delta=True)
    rec = Recorder()
    s.watch(CLUSTER)
    s.connected()
    s.take_requests()
    s.on_response(delta(CLUSTER, [("a", "1", cluster("a"))], nonce="n1"), rec)
    s.on_response(delta(CLUSTER, [("a", "1", None)], nonce="n2"), rec)  # heartbeat: nothing to apply
    assert rec.last.updated == {} and len(rec.updates) == 2
    s.on_response(delta(CLUSTER, [("a", "2", cluster("a")), ("a", "3", cluster("a"))], nonce="n3"), rec)
    s.on_response(delta(CLUSTER, [("b", "2", cluster("b"))], removed=["b"], nonce="n4"), rec)
    s.on_response(delta(CLUSTER, [("c", "2", listener("c"))], nonce="n5"), rec)
    assert len(rec.updates) == 2
    errs = [r.error_detail.message for r in s.take_requests() if r.HasField("error_detail")]
    assert len(errs) == 3
    assert "duplicate" in errs[0] and "duplicate" in errs[1] and "does not match" in errs[2]


def test_delta_acks_queue_while_paused_and_keep_their_nonces() -> None:
    s = XdsState(NODE, delta=True)
    s.watch(CLUSTER)
    s.connected()
    s.take_requests()
    s.pause(CLUSTER)
    s.on_response(delta(CLUSTER, [("a", "1", cluster("a"))], nonce="n1"), lambda u: [])
    s.on_response(
        delta(CLUSTER, [("a", "2", cluster("a", eds=False))], nonce="n2"), lambda u: [Rejected("a", "", "x")]
    )
    assert s.take_requests() == []
    s.resume(CLUSTER)
    assert [brief(r)[4:6] for r in s.take_requests()] == [("n1", None), ("n2", "a: x")]


def test_delta_named_type_with_no_names_says_nothing_on_a_new_stream() -> None:
    s = XdsState(NODE, delta=True)
    s.watch(ENDPOINT, [])
    s.connected()
    assert s.take_requests() == []


def test_delta_removed_then_reconnect_drops_the_version() -> None:
    s = XdsState(NODE, delta=True)
    s.watch(ENDPOINT, ["a"])
    s.connected()
    s.on_response(delta(ENDPOINT, [("a", "1", cla("a"))], nonce="n1"), lambda u: [])
    s.on_response(delta(ENDPOINT, removed=["a"], nonce="n2"), lambda u: [])
    s.disconnected()
    s.connected()
    assert [brief(r) for r in s.take_requests()] == [("ClusterLoadAssignment", ["a"], [], {}, "", None, True)]


# ---------------------------------------------------------------------------------- properties

NAMES = st.sampled_from(["a", "b", "c", "d"])
PORTS = st.integers(min_value=1, max_value=3)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.dictionaries(NAMES, PORTS, max_size=4), st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_sotw_applied_state_equals_last_accepted_response(steps: list[tuple[dict[str, int], bool]]) -> None:
    """Whatever sequence of complete sets arrives and whichever are rejected, the runtime's view
    (built only from `updated` and `removed`) equals the last accepted set, and every request
    carries the last accepted version."""
    s = XdsState(NODE)
    s.watch(CLUSTER)
    s.connected()
    s.take_requests()
    view: dict[str, int] = {}
    accepted: dict[str, int] = {}
    accepted_version = ""

    for i, (content, reject) in enumerate(steps):

        def apply(u, reject=reject):
            if reject:
                return [Rejected("", "", "no")]
            for name in u.removed:
                del view[name]
            for name, msg in u.updated.items():
                view[name] = msg.connect_timeout.seconds
            return []

        resources = [cluster(n) for n in sorted(content)]
        for r in resources:
            r.connect_timeout.seconds = content[r.name]
        s.on_response(sotw(CLUSTER, resources, str(i), f"n{i}"), apply)
        if not reject:
            accepted, accepted_version = dict(content), str(i)
        (req,) = s.take_requests()
        assert req.version_info == accepted_version and req.response_nonce == f"n{i}"
        assert req.HasField("error_detail") == reject
        assert view == accepted


@settings(max_examples=200, deadline=None)
@given(st.lists(st.frozensets(NAMES, max_size=4), min_size=1, max_size=8))
def test_delta_subscription_changes_sum_to_the_interest(interests: list[frozenset[str]]) -> None:
    """Replaying every subscribe/unsubscribe a server receives (across a reconnect) gives the client's
    current interest."""
    s = XdsState(NODE, delta=True)
    server_view: set[str] = set()
    s.watch(ENDPOINT, interests[0])
    s.connected()
    for i, names in enumerate(interests):
        if i == len(interests) // 2:
            s.disconnected()
            s.connected()
            server_view = set()  # a new stream starts from nothing
        s.watch(ENDPOINT, names)
        for req in s.take_requests():
            server_view |= set(req.resource_names_subscribe)
            server_view -= set(req.resource_names_unsubscribe)
        assert server_view == set(names)


def test_delta_update_carries_resource_versions() -> None:
    s = XdsState(NODE, delta=True)
    rec = Recorder()
    s.watch(ROUTE, ["r1"])
    s.connected()
    s.on_response(delta(ROUTE, [("r1", "rv9", route("r1"))], nonce="n1", system_version="sys"), rec)
    assert (rec.last.version, rec.last.resource_version("r1"), rec.last.resource_version("x")) == (
        "sys",
        "rv9",
        "",
    )

"""The dev ADS server's sans-IO core (sidecar/devtools/xds_core.py) and file parsing (xds_files.py):
versions, nonces, ACK/NACK/stale handling, wildcard vs named types, Delta diffs and removals,
REST-JSON 304s.  No sockets."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2 as d
from google.protobuf.message import Message

from sidecar.devtools.xds_core import DeltaSession, SotwSession, Store, rest_response
from sidecar.devtools.xds_files import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    FileError,
    dir_signature,
    load_dir,
    merge,
)


def cluster(name: str, timeout: int = 1) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name)
    c.connect_timeout.seconds = timeout
    return c


def rc(name: str, to: str) -> route_pb2.RouteConfiguration:
    pb = route_pb2.RouteConfiguration(name=name)
    r = pb.virtual_hosts.add(name="v", domains=["*"]).routes.add()
    r.match.prefix = "/"
    r.route.cluster = to
    return pb


def store_with(**types: dict[str, Message]) -> Store:
    s = Store()
    s.replace({CLUSTER: types.get("clusters", {}), ROUTE: types.get("routes", {})})
    return s


def nonces() -> Any:
    c = itertools.count(1)
    return lambda: f"n{next(c)}"


def names(resp: Any) -> list[str]:
    out = []
    for a in resp.resources:
        if isinstance(resp, d.DeltaDiscoveryResponse):
            out.append(a.name)
        else:
            msg = cluster_pb2.Cluster() if a.type_url.endswith("Cluster") else route_pb2.RouteConfiguration()
            a.Unpack(msg)
            out.append(msg.name)
    return sorted(out)


def test_store_bumps_only_the_types_that_changed() -> None:
    s = Store()
    assert set(s.replace({CLUSTER: {"a": cluster("a")}})) >= {CLUSTER, ROUTE, LISTENER}  # first load
    assert s.version(CLUSTER) == "1"
    assert s.replace({CLUSTER: {"a": cluster("a")}}) == []
    assert s.replace({CLUSTER: {"a": cluster("a", 2)}, ROUTE: {}}) == [CLUSTER]
    assert s.version(CLUSTER) == "2" and s.version(ROUTE) == "1"


def test_sotw_wildcard_ack_nack_and_push() -> None:
    s = store_with(clusters={"a": cluster("a"), "b": cluster("b")})
    sess = SotwSession(s, nonces())
    out = sess.on_request(d.DiscoveryRequest(type_url=CLUSTER))
    (resp,) = out.responses
    assert (resp.version_info, resp.nonce, names(resp)) == ("1", "n1", ["a", "b"])
    ack = sess.on_request(d.DiscoveryRequest(type_url=CLUSTER, version_info="1", response_nonce="n1"))
    assert ack.ack and ack.responses == []
    # A file change reaches the stream with the next version and a new nonce.
    s.replace({CLUSTER: {"a": cluster("a", 3)}})
    (push,) = sess.on_change([CLUSTER, ROUTE])
    assert (push.version_info, push.nonce, names(push)) == ("2", "n2", ["a"])
    # The ACK of n1 arriving now is stale: ignored.
    stale = sess.on_request(d.DiscoveryRequest(type_url=CLUSTER, version_info="1", response_nonce="n1"))
    assert stale.stale and stale.responses == []
    nack = d.DiscoveryRequest(type_url=CLUSTER, version_info="1", response_nonce="n2")
    nack.error_detail.message = "bad cluster"
    out = sess.on_request(nack)
    assert out.nack == "bad cluster" and out.responses == []  # no resend of the same content


def test_sotw_named_types_get_only_what_they_ask_for() -> None:
    s = store_with(routes={"r1": rc("r1", "a"), "r2": rc("r2", "b")})
    sess = SotwSession(s, nonces())
    assert sess.on_request(d.DiscoveryRequest(type_url=ROUTE, resource_names=["missing"])).responses == []
    (resp,) = sess.on_request(
        d.DiscoveryRequest(type_url=ROUTE, resource_names=["r1", "missing"], response_nonce="")
    ).responses
    assert names(resp) == ["r1"]
    # Changing r2, which this stream did not ask for, sends nothing.
    s.replace({ROUTE: {"r1": rc("r1", "a"), "r2": rc("r2", "a")}})
    assert sess.on_change([ROUTE]) == []
    # Asking for r2 too (an ACK of the latest nonce with new names) sends both.
    (both,) = sess.on_request(
        d.DiscoveryRequest(type_url=ROUTE, resource_names=["r1", "r2"], response_nonce=resp.nonce)
    ).responses
    assert names(both) == ["r1", "r2"]


def test_per_type_sessions_fill_in_the_type_and_refuse_others() -> None:
    s = store_with(clusters={"a": cluster("a")})
    sess = SotwSession(s, nonces(), only_type=CLUSTER)
    (resp,) = sess.on_request(d.DiscoveryRequest()).responses
    assert resp.type_url == CLUSTER
    assert sess.on_request(d.DiscoveryRequest(type_url=ROUTE)).unknown_type


def test_delta_sends_changes_and_removals_only() -> None:
    s = store_with(clusters={"a": cluster("a"), "b": cluster("b")})
    sess = DeltaSession(s, nonces())
    (first,) = sess.on_request(d.DeltaDiscoveryRequest(type_url=CLUSTER)).responses  # legacy wildcard
    assert names(first) == ["a", "b"] and first.system_version_info == "1" and not first.removed_resources
    assert sess.on_request(d.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=first.nonce)).ack
    s.replace({CLUSTER: {"a": cluster("a", 5), "c": cluster("c")}})
    (push,) = sess.on_change([CLUSTER])
    assert names(push) == ["a", "c"] and list(push.removed_resources) == ["b"]
    nack = d.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=push.nonce)
    nack.error_detail.message = "no"
    assert sess.on_request(nack).nack == "no"
    assert sess.on_change([CLUSTER]) == []


def test_delta_named_subscriptions_and_initial_versions() -> None:
    s = store_with(routes={"r1": rc("r1", "a"), "r2": rc("r2", "b")})
    v1 = s.resources[ROUTE]["r1"][0]
    sess = DeltaSession(s, nonces())
    req = d.DeltaDiscoveryRequest(type_url=ROUTE, resource_names_subscribe=["r1", "r2"])
    req.initial_resource_versions["r1"] = v1  # the client already has r1 (a reconnect)
    (resp,) = sess.on_request(req).responses
    assert names(resp) == ["r2"]
    out = sess.on_request(
        d.DeltaDiscoveryRequest(type_url=ROUTE, resource_names_unsubscribe=["r2"], response_nonce=resp.nonce)
    )
    assert out.responses == []  # nothing is sent for an unsubscription
    s.replace({ROUTE: {"r1": rc("r1", "a")}})  # r2 went away, but the client no longer follows it
    assert sess.on_change([ROUTE]) == []
    s.replace({ROUTE: {}})
    (gone,) = sess.on_change([ROUTE])
    assert list(gone.removed_resources) == ["r1"]


def test_delta_empty_wildcard_is_answered_once() -> None:
    sess = DeltaSession(Store(), nonces())
    sess.store.replace({})
    (resp,) = sess.on_request(d.DeltaDiscoveryRequest(type_url=LISTENER)).responses
    assert not resp.resources and not resp.removed_resources
    assert sess.on_change([LISTENER]) == []


def test_rest_not_modified_and_new_names() -> None:
    s = store_with(routes={"r1": rc("r1", "a"), "r2": rc("r2", "b")})
    resp = rest_response(s, d.DiscoveryRequest(resource_names=["r1"]), ROUTE, "x")
    assert resp is not None and names(resp) == ["r1"]
    same = d.DiscoveryRequest(resource_names=["r1"], version_info=resp.version_info)
    assert rest_response(s, same, ROUTE, "y") is None
    more = d.DiscoveryRequest(resource_names=["r1", "r2"], version_info=resp.version_info)
    other = rest_response(s, more, ROUTE, "z")
    assert other is not None and names(other) == ["r1", "r2"]


def test_files_one_per_type_and_all_in_one(tmp_path: Path) -> None:
    (tmp_path / "clusters.yaml").write_text(yaml.safe_dump([{"name": "a", "connect_timeout": "1s"}]))
    (tmp_path / "resources.json").write_text(
        '{"endpoints": [{"cluster_name": "a", "endpoints": []}], "routes": {"resources": []}}'
    )
    res = load_dir(tmp_path)
    assert list(res[CLUSTER]) == ["a"] and list(res[ENDPOINT]) == ["a"] and res[ROUTE] == {}
    sig = dir_signature(tmp_path)
    (tmp_path / "clusters.yaml").write_text(yaml.safe_dump([{"name": "a", "connect_timeout": "2s"}]) + "\n")
    assert dir_signature(tmp_path) != sig


@pytest.mark.parametrize(
    ("per_file", "one", "error"),
    [
        ({"clusters": [{"name": "a", "bogus": 1}]}, None, "bogus"),
        ({"clusters": [{"connect_timeout": "1s"}]}, None, "no name"),
        ({"clusters": [{"name": "a"}, {"name": "a"}]}, None, "duplicate"),
        (
            {"clusters": [{"name": "a", "@type": "type.googleapis.com/envoy.config.listener.v3.Listener"}]},
            None,
            "@type",
        ),
        ({"clusters": []}, {"clusters": []}, "both"),
        ({}, {"clustrs": []}, "unknown keys"),
        ({"routes": {"name": "r"}}, None, "expected a list"),
    ],
)
def test_files_refuse_bad_documents(per_file: dict[str, Any], one: Any, error: str) -> None:
    with pytest.raises(FileError, match=error):
        merge(per_file, one, "resources.yaml")


def test_typed_config_anys_parse() -> None:
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    listener = {
        "name": "l1",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {"@type": hcm, "stat_prefix": "x"}}]}],
    }
    res = merge({"listeners": [listener]}, None, "x")
    assert res[LISTENER]["l1"].filter_chains[0].filters[0].typed_config.type_url == hcm  # type: ignore[attr-defined]

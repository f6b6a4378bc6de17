"""Builders for xDS messages in transcript tests: small resources, SotW and Delta responses, and a
recording `apply` whose answer a test scripts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2 as d
from google.protobuf import any_pb2
from google.protobuf.message import Message

from sidecar.xds.ads import CLUSTER, ENDPOINT, LISTENER, ROUTE, Rejected, Update

NODE = base_pb2.Node(id="sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local", cluster="app.ns")


def listener(name: str, route: str = "", port: int = 8080) -> listener_pb2.Listener:
    pb = listener_pb2.Listener(name=name)
    pb.address.socket_address.address = "127.0.0.1"
    pb.address.socket_address.port_value = port
    if route:  # a cheap way to make distinct bytes per route name
        pb.stat_prefix = route
    return pb


def cluster(name: str, eds: bool = True) -> cluster_pb2.Cluster:
    pb = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS if eds else cluster_pb2.Cluster.STATIC)
    pb.connect_timeout.seconds = 1
    return pb


def cla(name: str, port: int = 9000) -> endpoint_pb2.ClusterLoadAssignment:
    pb = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    sa = pb.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    sa.address, sa.port_value = "127.0.0.1", port
    return pb


def route(name: str, cluster_name: str = "c") -> route_pb2.RouteConfiguration:
    pb = route_pb2.RouteConfiguration(name=name)
    vh = pb.virtual_hosts.add(name="v", domains=["*"])
    r = vh.routes.add()
    r.match.prefix = "/"
    r.route.cluster = cluster_name
    return pb


TYPE_OF = {
    listener_pb2.Listener: LISTENER,
    cluster_pb2.Cluster: CLUSTER,
    endpoint_pb2.ClusterLoadAssignment: ENDPOINT,
    route_pb2.RouteConfiguration: ROUTE,
}


def packed(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def sotw(type_url: str, resources: Sequence[Message], version: str, nonce: str) -> d.DiscoveryResponse:
    resp = d.DiscoveryResponse(type_url=type_url, version_info=version, nonce=nonce)
    resp.resources.extend(packed(r) for r in resources)
    return resp


def delta(
    type_url: str,
    resources: Iterable[tuple[str, str, Message | None]] = (),
    removed: Iterable[str] = (),
    nonce: str = "",
    system_version: str = "",
) -> d.DeltaDiscoveryResponse:
    resp = d.DeltaDiscoveryResponse(type_url=type_url, nonce=nonce, system_version_info=system_version)
    for name, version, msg in resources:
        r = resp.resources.add(name=name, version=version)
        if msg is not None:
            r.resource.CopyFrom(packed(msg))
    resp.removed_resources.extend(removed)
    return resp


class Recorder:
    """An `apply` that records each Update and answers with the next scripted rejection list."""

    def __init__(self) -> None:
        self.updates: list[Update] = []
        self.answers: list[list[Rejected]] = []

    def __call__(self, update: Update) -> Sequence[Rejected]:
        self.updates.append(update)
        return self.answers.pop(0) if self.answers else []

    @property
    def last(self) -> Update:
        return self.updates[-1]


def brief(req: Any) -> tuple[Any, ...]:
    """A compact, comparable form of a request (SotW or Delta)."""
    err = req.error_detail.message if req.HasField("error_detail") else None
    if isinstance(req, d.DeltaDiscoveryRequest):
        return (
            req.type_url.rsplit(".", 1)[-1],
            sorted(req.resource_names_subscribe),
            sorted(req.resource_names_unsubscribe),
            dict(req.initial_resource_versions),
            req.response_nonce,
            err,
            req.HasField("node"),
        )
    return (
        req.type_url.rsplit(".", 1)[-1],
        sorted(req.resource_names),
        req.version_info,
        req.response_nonce,
        err,
        req.HasField("node"),
    )

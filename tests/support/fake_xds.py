"""An in-process, scripted xDS management server (grpc.aio) for tests.

It serves every stream kind an Envoy-compatible client may open: ADS State of the World
(`StreamAggregatedResources`), ADS Delta (`DeltaAggregatedResources`) and the per-type services
(`ListenerDiscoveryService/StreamListeners`, `.../DeltaListeners`, and the same for routes, clusters,
endpoints and secrets).  It has no policy of its own: a test reads what the client sent and decides
what to push.

    fake = FakeXds()
    target = await fake.start("127.0.0.1:0")          # or "unix:/tmp/x/XDS"
    stream = await fake.next_stream()
    req = await stream.next_request()                 # Received: type_url, names, version, nonce, error
    nonce = await stream.send(CLUSTER, [cluster_pb], version="1")
    ack = await stream.next_request()                 # ack.nonce == nonce, ack.version == "1"
    await stream.drop()                               # the client should reconnect with back-off
    await fake.stop()

Nothing here imports `sidecar` (tests/support treats the proxy as a black box): the same server
drives the real envoy binary in the differential tests.  Every wait has a timeout."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2 as d
from google.protobuf import any_pb2
from google.protobuf.message import Message

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
# service -> (SotW method, Delta method), as in data-plane-api's envoy/service/*/v3/*ds.proto.
SERVICES = {
    ADS_SERVICE: ("StreamAggregatedResources", "DeltaAggregatedResources"),
    "envoy.service.listener.v3.ListenerDiscoveryService": ("StreamListeners", "DeltaListeners"),
    "envoy.service.route.v3.RouteDiscoveryService": ("StreamRoutes", "DeltaRoutes"),
    "envoy.service.cluster.v3.ClusterDiscoveryService": ("StreamClusters", "DeltaClusters"),
    "envoy.service.endpoint.v3.EndpointDiscoveryService": ("StreamEndpoints", "DeltaEndpoints"),
    "envoy.service.secret.v3.SecretDiscoveryService": ("StreamSecrets", "DeltaSecrets"),
}
_DROP = object()


@dataclass
class Received:
    """One request the client sent, with the fields tests assert on pulled out."""

    stream: FakeStream
    message: Any  # DiscoveryRequest or DeltaDiscoveryRequest

    @property
    def delta(self) -> bool:
        return isinstance(self.message, d.DeltaDiscoveryRequest)

    @property
    def type_url(self) -> str:
        return str(self.message.type_url)

    @property
    def names(self) -> list[str]:
        """SotW resource_names, or Delta resource_names_subscribe, sorted."""
        if self.delta:
            return sorted(self.message.resource_names_subscribe)
        return sorted(self.message.resource_names)

    @property
    def unsubscribe(self) -> list[str]:
        return sorted(self.message.resource_names_unsubscribe) if self.delta else []

    @property
    def initial_versions(self) -> dict[str, str]:
        return dict(self.message.initial_resource_versions) if self.delta else {}

    @property
    def version(self) -> str:
        return "" if self.delta else str(self.message.version_info)

    @property
    def nonce(self) -> str:
        return str(self.message.response_nonce)

    @property
    def error(self) -> str | None:
        """error_detail.message of a NACK, None for an ACK or a plain request."""
        if self.message.HasField("error_detail"):
            return str(self.message.error_detail.message)
        return None

    @property
    def error_code(self) -> int | None:
        return int(self.message.error_detail.code) if self.message.HasField("error_detail") else None

    @property
    def has_node(self) -> bool:
        return bool(self.message.HasField("node"))

    def shape(self) -> tuple[Any, ...]:
        """What a test compares between two clients: everything but the node's contents and the
        error text (each client words its own errors)."""
        if self.delta:
            return (
                self.type_url,
                tuple(self.names),
                tuple(self.unsubscribe),
                tuple(sorted(self.initial_versions.items())),
                self.nonce,
                self.error is not None,
            )
        return (self.type_url, tuple(self.names), self.version, self.nonce, self.error is not None)


@dataclass
class FakeStream:
    """One client stream: what it received and a handle to push responses or drop it."""

    id: int
    service: str
    method: str
    delta: bool
    metadata: dict[str, str]
    fake: FakeXds
    requests: list[Received] = field(default_factory=list)
    sent: list[Any] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _in: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    _out: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    async def next_request(self, timeout: float = 10.0) -> Received:
        return await asyncio.wait_for(self._in.get(), timeout)

    async def requests_until(self, count: int, timeout: float = 10.0) -> list[Received]:
        """The next `count` requests on this stream."""
        return [await self.next_request(timeout) for _ in range(count)]

    async def no_request(self, within: float = 0.3) -> bool:
        """True if the client sends nothing more within `within` seconds."""
        try:
            await asyncio.wait_for(self._in.get(), within)
        except TimeoutError:
            return True
        return False

    def _nonce(self, nonce: str | None) -> str:
        return nonce if nonce is not None else f"n{next(self.fake._nonces)}"

    async def send(
        self,
        type_url: str,
        resources: Sequence[Message | any_pb2.Any],
        version: str,
        nonce: str | None = None,
    ) -> str:
        """Push a SotW DiscoveryResponse; returns its nonce."""
        resp = d.DiscoveryResponse(type_url=type_url, version_info=version, nonce=self._nonce(nonce))
        for r in resources:
            resp.resources.append(_as_any(r))
        await self.send_raw(resp)
        return str(resp.nonce)

    async def send_delta(
        self,
        type_url: str,
        resources: Iterable[tuple[str, str, Message | any_pb2.Any | None]] = (),
        removed: Iterable[str] = (),
        system_version: str = "",
        nonce: str | None = None,
    ) -> str:
        """Push a DeltaDiscoveryResponse of (name, version, resource) triples; returns its nonce.
        A None resource is a heartbeat (name and version only)."""
        resp = d.DeltaDiscoveryResponse(
            type_url=type_url, system_version_info=system_version, nonce=self._nonce(nonce)
        )
        for name, version, msg in resources:
            r = resp.resources.add(name=name, version=version)
            if msg is not None:
                r.resource.CopyFrom(_as_any(msg))
        resp.removed_resources.extend(removed)
        await self.send_raw(resp)
        return str(resp.nonce)

    async def send_raw(self, message: Any) -> None:
        self.sent.append(message)
        await self._out.put(message)

    async def drop(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, wait: float = 5.0) -> None:
        """End the stream from the server side with `code`, and wait until it is gone."""
        await self._out.put((_DROP, code))
        await asyncio.wait_for(self.closed.wait(), wait)


def _as_any(msg: Message | any_pb2.Any) -> any_pb2.Any:
    if isinstance(msg, any_pb2.Any):
        return msg
    a = any_pb2.Any()
    a.Pack(msg)
    return a


class FakeXds:
    """The server.  `start` binds and returns the target a client dials; `next_stream` waits for the
    next stream a client opens (of any kind)."""

    def __init__(self) -> None:
        self.streams: list[FakeStream] = []
        self.requests: list[Received] = []
        self._new: asyncio.Queue[FakeStream] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self.target = ""

    async def start(self, address: str = "127.0.0.1:0") -> str:
        server = grpc.aio.server()
        handlers = []
        for service, (sotw, delta) in SERVICES.items():
            handlers.append(
                grpc.method_handlers_generic_handler(
                    service,
                    {
                        sotw: grpc.stream_stream_rpc_method_handler(
                            self._handler(service, sotw, False),
                            request_deserializer=d.DiscoveryRequest.FromString,
                            response_serializer=d.DiscoveryResponse.SerializeToString,
                        ),
                        delta: grpc.stream_stream_rpc_method_handler(
                            self._handler(service, delta, True),
                            request_deserializer=d.DeltaDiscoveryRequest.FromString,
                            response_serializer=d.DeltaDiscoveryResponse.SerializeToString,
                        ),
                    },
                )
            )
        server.add_generic_rpc_handlers(tuple(handlers))
        self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        if address.startswith("unix:"):
            self.target = address
        else:
            host = address.rsplit(":", 1)[0]
            self.target = f"{host}:{self.port}"
        return self.target

    async def stop(self, grace: float | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def next_stream(self, timeout: float = 10.0) -> FakeStream:
        return await asyncio.wait_for(self._new.get(), timeout)

    def _handler(self, service: str, method: str, delta: bool) -> Any:
        async def handle(request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            stream = FakeStream(
                id=next(self._ids),
                service=service,
                method=method,
                delta=delta,
                metadata={k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)},
                fake=self,
            )
            self.streams.append(stream)
            self._new.put_nowait(stream)

            async def read() -> None:
                try:
                    async for msg in request_iterator:
                        rec = Received(stream, msg)
                        stream.requests.append(rec)
                        self.requests.append(rec)
                        stream._in.put_nowait(rec)
                except (grpc.RpcError, asyncio.CancelledError):
                    pass
                finally:
                    # The client half-closed or went away: end the response side too.
                    stream._out.put_nowait(None)

            reader = asyncio.create_task(read())
            try:
                while True:
                    item = await stream._out.get()
                    if item is None:
                        return
                    if isinstance(item, tuple) and item[0] is _DROP:
                        await context.abort(item[1], "dropped by the test")
                    yield item
            finally:
                reader.cancel()
                stream.closed.set()

        return handle

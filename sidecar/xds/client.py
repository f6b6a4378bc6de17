"""The xDS client: grpc.aio streams (and REST pollers) driven by the sans-IO core in ads.py.

One `XdsClient` per sidecar, in ONE process (DEPENDENCIES.md: gRPC objects must not exist before
worker processes fork).  Nothing here creates a gRPC object at import or construction time: grpc is
imported and channels are made in `start()` and later, on the running loop.

    client = XdsClient(dynamic, node, apply=runtime.apply_xds, resolve=runtime.grpc_target)
    client.watch(CLUSTER)                       # source: dynamic_resources.cds_config
    await client.start()
    ... apply() calls client.watch(ENDPOINT, names, source) / client.pause(CLUSTER) as config flows ...
    await client.stop()

Streams: the bootstrap's ads_config is one stream carrying every `ads` source (SotW
StreamAggregatedResources or DeltaAggregatedResources); any other ApiConfigSource gets a stream per
type (ListenerDiscoveryService/StreamListeners, ...), or a REST poller (rest.py); a path config
source is a watched file (files.py).  Envoy opens one non-ADS stream per subscription; we open one
per (source, type) carrying all its names (SDS secrets get a source each, xds/sds.py, so one stream
per secret as in Envoy).

Reconnect: when a stream cannot open or breaks, wait Envoy's jittered exponential back-off (base
500 ms, max 30 s, or envoy_grpc.retry_policy.retry_back_off), reset by any response, then open a
new channel and stream and re-subscribe (Delta: with initial_resource_versions).  The last applied
config keeps serving meanwhile: nothing is withdrawn when a stream breaks.

Stats (Envoy's names): `stats(type_url)` is the per-type SubscriptionStats (update_attempt,
update_success, update_rejected, update_failure, init_fetch_timeout, version, update_time);
`control_plane` has connected_state (gauge), rate_limit_enforced (counter) and identifier.  Publish
them with observe.stats.Stats.block(obj, ENVOY_STAT_PREFIX[type], ads.COUNTERS, ads.GAUGES); `version`
(ads.UINT64_GAUGES) is an unsigned 64-bit hash and needs a publisher that can hold it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from sidecar.xds.ads import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Rejected,
    SubscriptionStats,
    Update,
    XdsState,
)
from sidecar.xds.config import ApiSource, ApiType, ConfigSource, DynamicResources, GrpcTarget, RateLimit

log = logging.getLogger("sidecar.config")

ApplyResult = Sequence[Rejected]
ApplyFn = Callable[[Update], ApplyResult | Awaitable[ApplyResult]]
TimeoutFn = Callable[[str, str], None]

# Where Envoy puts each type's subscription stats (RDS, EDS and SDS are per resource in Envoy:
# http.<stat_prefix>.rds.<name>., cluster.<name>., sds.<name>.; the runtime knows those names).
ENVOY_STAT_PREFIX = {LISTENER: "listener_manager.lds.", CLUSTER: "cluster_manager.cds."}
CONTROL_PLANE_COUNTERS = ("rate_limit_enforced",)
CONTROL_PLANE_GAUGES = ("connected_state", "pending_requests")

_ADS = "envoy.service.discovery.v3.AggregatedDiscoveryService"
# type URL -> (service, SotW method, Delta method): data-plane-api envoy/service/*/v3/*ds.proto.
SERVICES = {
    LISTENER: ("envoy.service.listener.v3.ListenerDiscoveryService", "StreamListeners", "DeltaListeners"),
    ROUTE: ("envoy.service.route.v3.RouteDiscoveryService", "StreamRoutes", "DeltaRoutes"),
    CLUSTER: ("envoy.service.cluster.v3.ClusterDiscoveryService", "StreamClusters", "DeltaClusters"),
    ENDPOINT: ("envoy.service.endpoint.v3.EndpointDiscoveryService", "StreamEndpoints", "DeltaEndpoints"),
    SECRET: ("envoy.service.secret.v3.SecretDiscoveryService", "StreamSecrets", "DeltaSecrets"),
}


@dataclass(frozen=True)
class ChannelSpec:
    """Where a gRPC channel goes: a target ("10.0.0.1:15010", "unix:./etc/istio/proxy/XDS") and, for
    TLS, grpc.ChannelCredentials (None: plaintext)."""

    target: str
    credentials: Any = None


Resolve = Callable[[str], "str | ChannelSpec"]


class ControlPlaneStats:
    __slots__ = ("connected_state", "identifier", "pending_requests", "rate_limit_enforced")

    def __init__(self) -> None:
        self.connected_state = 0
        self.pending_requests = 0
        self.rate_limit_enforced = 0
        self.identifier = ""


class Mux:
    """One stream's worth of subscriptions: the core, the runtime's callbacks, and a run task.
    Subclasses move the messages (gRPC here, REST in rest.py)."""

    def __init__(self, state: XdsState, apply: ApplyFn, on_timeout: TimeoutFn | None) -> None:
        self.state = state
        self.apply = apply
        self.on_timeout = on_timeout
        self.control_plane = ControlPlaneStats()
        self._kick = asyncio.Event()
        self._timers = asyncio.Event()
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def watch(
        self, type_url: str, names: Sequence[str] | frozenset[str] | set[str] | None, timeout: float
    ) -> None:
        self.state.watch(type_url, names, now=time.monotonic(), initial_fetch_timeout=timeout)
        self.kick()

    def kick(self) -> None:
        self._kick.set()
        self._timers.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self.run()), asyncio.create_task(self._run_timers())]

    async def stop(self) -> None:
        self._stopped.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def run(self) -> None:
        raise NotImplementedError

    async def handle(self, response: Any) -> None:
        """Apply one response through the core (all-or-nothing, see ads.py) and queue the (N)ACK."""
        if response.HasField("control_plane"):
            self.control_plane.identifier = response.control_plane.identifier
        update = self.state.receive(response)
        if update is not None:
            errors: Sequence[Rejected]
            try:
                result = self.apply(update)
                errors = await result if inspect.isawaitable(result) else result
            except Exception as e:  # a bug in apply: NACK rather than lose the stream
                log.exception("applying %s version %s failed", update.type_url, update.version)
                errors = [Rejected("", "", f"internal error: {e!r}")]
            self.state.settle(update, errors)
            if errors:
                log.warning("config for %s rejected: %s", update.type_url, "; ".join(map(str, errors)))
            else:
                st = self.state.stats(update.type_url)
                if st is not None:
                    st.update_time = int(time.time() * 1000)
        self.kick()

    async def _run_timers(self) -> None:
        """initial_fetch_timeout: report each expired subscription once (Envoy ends warming then)."""
        while not self._stopped.is_set():
            self._timers.clear()
            deadline = self.state.next_deadline()
            if deadline is not None:
                for type_url, name in self.state.expire(time.monotonic()):
                    log.warning("initial fetch timed out for %s %s", type_url, name or "(all)")
                    if self.on_timeout is not None:
                        self.on_timeout(type_url, name)
                deadline = self.state.next_deadline()
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timers.wait(), wait)

    async def sleep(self, delay: float) -> None:
        """Sleep `delay` seconds, or less if stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), delay)


class _TokenBucket:
    """rate_limit_settings: at most max_tokens requests at once, refilled at fill_rate per second."""

    def __init__(self, rl: RateLimit) -> None:
        self.rl = rl
        self.tokens = float(rl.max_tokens)
        self.at = time.monotonic()

    def wait_time(self) -> float:
        now = time.monotonic()
        self.tokens = min(float(self.rl.max_tokens), self.tokens + (now - self.at) * self.rl.fill_rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rl.fill_rate


class GrpcMux(Mux):
    """A gRPC stream (ADS or one type), reconnecting with back-off."""

    def __init__(
        self,
        state: XdsState,
        apply: ApplyFn,
        on_timeout: TimeoutFn | None,
        target: GrpcTarget,
        resolve: Resolve,
        method: str,
        rand: Callable[[], float],
        rate_limit: RateLimit | None,
    ) -> None:
        super().__init__(state, apply, on_timeout)
        self.target = target
        self.resolve = resolve
        self.method = method
        self.rand = rand
        self.bucket = _TokenBucket(rate_limit) if rate_limit else None
        self.attempt = 0  # consecutive failures since the last response (the back-off exponent)
        self.streams = 0  # streams opened so far
        self.last_code: Any = None  # the status of the last failure, until a response arrives

    def _channel(self) -> Any:
        import grpc  # here, not at import: no gRPC state before the workers fork

        t = self.target
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", t.max_receive_message_length or -1),
            ("grpc.enable_retries", 0),
            *t.channel_args,
        ]
        creds = None
        if t.cluster_name:
            spec = self.resolve(t.cluster_name)
            spec = spec if isinstance(spec, ChannelSpec) else ChannelSpec(spec)
            target, creds = spec.target, spec.credentials
            options.append(("grpc.default_authority", t.authority))  # Envoy's :authority, the cluster name
        else:
            target = t.target_uri
            if t.ssl is not None:
                creds = grpc.ssl_channel_credentials(
                    *(_read(ds) for ds in (t.ssl.root_certs, t.ssl.private_key, t.ssl.cert_chain))
                )
        if creds is not None:
            return grpc.aio.secure_channel(target, creds, options=options)
        return grpc.aio.insecure_channel(target, options=options)

    async def run(self) -> None:
        import grpc

        delta = self.state.delta
        req_cls = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        resp_cls = discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
        while not self._stopped.is_set():
            channel = None
            try:
                channel = self._channel()
                call = channel.stream_stream(
                    self.method,
                    request_serializer=req_cls.SerializeToString,
                    response_deserializer=resp_cls.FromString,
                )(metadata=self.target.initial_metadata or None)
                await call.wait_for_connection()
                self.streams += 1
                self.state.connected()
                self.control_plane.connected_state = 1
                self.kick()
                await self._exchange(call, grpc.aio.EOF)
                log.info("xDS stream %s closed by the server", self.method)
            except grpc.aio.AioRpcError as e:
                # As Envoy's GrpcStream::logClose: warn when the failure changes, not on every retry.
                level = logging.DEBUG if e.code() == self.last_code else logging.WARNING
                self.last_code = e.code()
                log.log(level, "xDS stream %s closed: %s %s", self.method, e.code().name, e.details())
            except Exception:
                log.exception("xDS stream %s failed", self.method)
            finally:
                self.state.disconnected(failure=not self._stopped.is_set())
                self.control_plane.connected_state = 0
                if channel is not None:
                    await channel.close()
            if self._stopped.is_set():
                break
            delay = self.target.backoff.delay(self.attempt, self.rand())
            self.attempt += 1
            await self.sleep(delay)

    async def _exchange(self, call: Any, eof: Any) -> None:
        writer = asyncio.create_task(self._write(call))
        reading: asyncio.Future[Any] | None = None
        try:
            while True:
                reading = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait((reading, writer), return_when=asyncio.FIRST_COMPLETED)
                if reading not in done:  # the writer failed: surface its error
                    reading.cancel()
                    writer.result()
                response = reading.result()
                if response is eof:
                    return
                self.attempt = 0  # a response resets the back-off (grpc_stream.h onReceiveMessage)
                self.last_code = None
                await self.handle(response)
        finally:
            for task in (writer, reading):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            call.cancel()

    async def _write(self, call: Any) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            for request in self.state.take_requests():
                if self.bucket is not None:
                    wait = self.bucket.wait_time()
                    if wait > 0:
                        self.control_plane.rate_limit_enforced += 1
                        await asyncio.sleep(wait)
                await call.write(request)


def _read(ds: Any) -> bytes | None:
    if ds is None:
        return None
    if ds.filename:
        with open(ds.filename, "rb") as f:
            return f.read()
    return bytes(ds.inline)


class XdsClient:
    """Every xDS subscription of the sidecar.  See the module docstring for the life cycle.

    `apply(update) -> [Rejected, ...]` (sync or async) applies one response all-or-nothing;
    `resolve(cluster_name) -> target | ChannelSpec` turns an envoy_grpc cluster into an address;
    `on_initial_fetch_timeout(type_url, name)` reports a subscription that got nothing within its
    initial_fetch_timeout (name "" for LDS/CDS)."""

    def __init__(
        self,
        dynamic: DynamicResources,
        node: base_pb2.Node,
        *,
        apply: ApplyFn,
        resolve: Resolve,
        on_initial_fetch_timeout: TimeoutFn | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.dynamic = dynamic
        self.node = node
        self.apply = apply
        self.resolve = resolve
        self.on_initial_fetch_timeout = on_initial_fetch_timeout
        self.rand = rand
        # (api source, type) -> its stream; (None, "") is ADS; (("file", path), type) a watched file.
        self.muxes: dict[tuple[Any, str], Mux] = {}
        self.started = False

    def _default_source(self, type_url: str) -> ConfigSource:
        src = {LISTENER: self.dynamic.lds, CLUSTER: self.dynamic.cds}.get(type_url)
        return src if src is not None else ConfigSource(ads=True)

    def _mux(self, type_url: str, source: ConfigSource) -> Mux:
        if source.path:
            file_key = (("file", source.path), type_url)
            mux = self.muxes.get(file_key)
            if mux is None:
                from sidecar.xds.files import FileMux

                state = XdsState(self.node)
                mux = FileMux(state, self.apply, self.on_initial_fetch_timeout, source.path, type_url)
                self.muxes[file_key] = mux
                if self.started:
                    mux.start()
            return mux
        if source.ads:
            if self.dynamic.ads is None:
                raise ValueError(f"{type_url}: an ads config source needs dynamic_resources.ads_config")
            key: tuple[Any, str] = (None, "")
            api = self.dynamic.ads
        else:
            assert source.api is not None
            api = source.api
            key = (api, type_url)
        mux = self.muxes.get(key)
        if mux is None:
            mux = self.muxes[key] = self._make_mux(api, type_url, ads=source.ads)
            if self.started:
                mux.start()
        return mux

    def _make_mux(self, api: ApiSource, type_url: str, ads: bool) -> Mux:
        delta = api.api_type is ApiType.DELTA_GRPC
        if api.api_type is ApiType.REST:
            from sidecar.xds.rest import RestMux

            state = XdsState(self.node, rest=True)
            return RestMux(state, self.apply, self.on_initial_fetch_timeout, api, self.resolve, type_url)
        state = XdsState(self.node, delta=delta, node_on_first_message_only=api.node_on_first_message_only)
        if ads:
            method = f"/{_ADS}/{'DeltaAggregatedResources' if delta else 'StreamAggregatedResources'}"
        else:
            service, sotw, incremental = SERVICES[type_url]
            method = f"/{service}/{incremental if delta else sotw}"
        assert api.grpc is not None
        return GrpcMux(
            state,
            self.apply,
            self.on_initial_fetch_timeout,
            api.grpc,
            self.resolve,
            method,
            self.rand,
            api.rate_limit,
        )

    # ---------------------------------------------------------------- what the runtime calls
    def watch(
        self,
        type_url: str,
        names: Sequence[str] | frozenset[str] | set[str] | None = None,
        source: ConfigSource | None = None,
    ) -> None:
        """Set the whole interest in `type_url` from `source` (default: dynamic_resources' lds_config
        or cds_config for LDS/CDS, ADS otherwise).  None subscribes to every resource (LDS, CDS).
        Safe to call from inside `apply`: the request follows that response's ACK ordering."""
        src = source or self._default_source(type_url)
        self._mux(type_url, src).watch(type_url, names, src.initial_fetch_timeout)

    def pause(self, type_url: str, source: ConfigSource | None = None) -> None:
        """Hold `type_url` requests (ACKs included) until `resume` (Envoy pauses CDS while clusters warm)."""
        self._mux(type_url, source or self._default_source(type_url)).state.pause(type_url)

    def resume(self, type_url: str, source: ConfigSource | None = None) -> None:
        mux = self._mux(type_url, source or self._default_source(type_url))
        mux.state.resume(type_url)
        mux.kick()

    def stats(self, type_url: str, source: ConfigSource | None = None) -> SubscriptionStats | None:
        return self._mux(type_url, source or self._default_source(type_url)).state.stats(type_url)

    def version(self, type_url: str, source: ConfigSource | None = None) -> str:
        """The last accepted version_info (SotW) of `type_url`, for config_dump."""
        return self._mux(type_url, source or self._default_source(type_url)).state.version(type_url)

    @property
    def control_plane(self) -> ControlPlaneStats:
        """The ADS stream's control_plane.* stats (a fresh object until ADS is used)."""
        mux = self.muxes.get((None, ""))
        return mux.control_plane if mux is not None else ControlPlaneStats()

    async def start(self) -> None:
        """Open the streams (on the running loop; call after worker processes forked)."""
        self.started = True
        for mux in self.muxes.values():
            mux.start()

    async def stop(self) -> None:
        self.started = False
        for mux in list(self.muxes.values()):
            await mux.stop()

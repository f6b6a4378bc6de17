"""The xDS side of the running sidecar: the XdsClient, what it subscribes to, and the relay of every
accepted response to the worker processes.

Lives in the main process only (gRPC objects must not exist before the workers fork).  For each
response the client hands over, `XdsDriver.apply` translates it (DynamicConfig.prepare: a refused
resource NACKs the whole response and changes nothing, except for CDS and LDS where the valid
resources are applied and the response is NACKed with the others' errors, as Envoy does), sends
it to every worker (the resources' protobuf bytes, names removed and versions, one frame on that
worker's pipe), commits it here (worker 0), then updates the subscriptions as Envoy's managers do:

- CDS first; the EDS names of the accepted EDS clusters (eds_cluster_config.service_name or the
  cluster name) are watched on their config source; CDS is paused while clusters warm;
- LDS only once the first clusters are warm (or CDS timed out), as Envoy's init manager orders it;
- the RDS names of the accepted listeners' connection managers are watched on their config source;
- the SDS secrets that static and dynamic listeners and clusters name with an sds_config are watched
  on their stream (ADS, or an api_config_source on an envoy_grpc cluster such as Istio's sds-grpc).
Each watch passes the whole set, so a name nobody references any more is unsubscribed.

Workers (`WorkerFeed`) read frames from their pipe and run the same DynamicConfig: the same
responses in the same order give the same warming decisions in every process."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import struct
from collections.abc import Callable, Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from sidecar.model.listener import HttpConnectionManager
from sidecar.xds.ads import (
    CLUSTER,
    COUNTERS,
    ENDPOINT,
    GAUGES,
    LISTENER,
    ROUTE,
    SECRET,
    Partial,
    Rejected,
    Update,
)
from sidecar.xds.apply import DynamicConfig, Prepared
from sidecar.xds.client import CONTROL_PLANE_COUNTERS, CONTROL_PLANE_GAUGES, ENVOY_STAT_PREFIX, XdsClient
from sidecar.xds.config import ConfigSource, DynamicResources

log = logging.getLogger("sidecar.config")

_MESSAGES: Mapping[str, Any] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    SECRET: secret_pb2.Secret,
}
_HEADER = struct.Struct("!I")


def encode_update(p: Prepared) -> bytes:
    """One accepted response as a frame for the workers: resources as protobuf bytes."""
    body = pickle.dumps(
        (
            "update",
            p.type_url,
            p.version,
            {n: pb.SerializeToString() for n, pb in p.protos.items()},
            sorted(p.removed),
            dict(p.versions),
            dict(p.ports),
        ),
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    return _HEADER.pack(len(body)) + body


def encode_timeout(type_url: str, name: str) -> bytes:
    body = pickle.dumps(("timeout", type_url, name), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


class XdsDriver:
    """The client and its subscriptions (main process).  `ready` is set once the initial config is
    in (CDS warm, then LDS and its routes, or their initial fetch timeouts)."""

    def __init__(
        self,
        dynamic: DynamicResources,
        node: Any,
        config: DynamicConfig,
        resolve: Callable[[str], str],
        stats: Any,
        relay: Callable[[bytes], None] | None = None,
    ) -> None:
        self.dynamic = dynamic
        self.config = config
        self.stats = stats
        self.relay = relay
        self.client = XdsClient(
            dynamic, node, apply=self.apply, resolve=resolve, on_initial_fetch_timeout=self.on_timeout
        )
        self.ready = asyncio.Event()
        self.lds_timed_out = False
        self.lds_started = False
        self.cds_paused = False
        self.cds_done = dynamic.cds is None  # the first CDS response is in and warm (or timed out)
        self.eds_sources: set[Any] = set()
        self.rds_sources: set[Any] = set()
        self.sds_sources: set[Any] = set()
        self._sds_failed: set[Any] = set()
        self._blocks: set[str] = set()
        self._resource_scopes: set[str] = set()  # RDS/EDS stat scopes whose subscription started
        self.seen: set[str] = set()  # types with an accepted response
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        if self.dynamic.cds is not None:
            self.client.watch(CLUSTER)
            self._publish(CLUSTER)
        # Static EDS clusters and static listeners with rds subscribe from the start.
        self.eds_sources = self._watch(ENDPOINT, self.config.eds_interest(), self.eds_sources)
        self.rds_sources = self._watch(ROUTE, self.config.rds_interest(), self.rds_sources)
        self._watch_secrets()
        self._start_resource_stats()
        self._maybe_start_lds()
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    def _publish(self, type_url: str) -> None:
        """Envoy's subscription stats (cluster_manager.cds.*, listener_manager.lds.*) and
        control_plane.* in /stats."""
        if type_url in self._blocks:
            return
        st = self.client.stats(type_url)
        if st is None:
            return
        self._blocks.add(type_url)
        self.stats.block(st, ENVOY_STAT_PREFIX[type_url], COUNTERS, GAUGES)
        if self.dynamic.ads is not None and "cp" not in self._blocks:
            self._blocks.add("cp")
            self.stats.block(self.client.control_plane, "control_plane.", CONTROL_PLANE_COUNTERS, CONTROL_PLANE_GAUGES)

    # -- the client's callbacks -------------------------------------------------------------------------
    async def apply(self, update: Update) -> list[Rejected]:
        versions = {n: update.resource_version(n) for n in update.updated}
        prepared = self.config.prepare(update.type_url, update.version, update.updated, update.removed, versions)
        self._count(update, isinstance(prepared, Prepared))
        if not isinstance(prepared, Prepared):
            return prepared
        if self.relay is not None:
            self.relay(encode_update(prepared))
        await self.config.commit(prepared)
        self.seen.add(update.type_url)
        self._follow(interest=update.type_url in (CLUSTER, LISTENER))
        # CDS/LDS: the valid resources are in; the refused ones still NACK the response.
        return Partial(prepared.rejected) if prepared.rejected else []

    def _count(self, update: Update, accepted: bool) -> None:
        """Envoy's per-subscription stats of RDS and EDS, which it keeps per resource:
        http.<stat_prefix>.rds.<route config>.* and cluster.<EDS cluster>.* (update_attempt,
        update_success, update_rejected).  Off the request path: once per response."""
        if update.type_url == ROUTE:
            prefixes = rds_stat_prefixes(self.config)
            scopes = [f"http.{prefixes[n]}.rds.{n}." for n in sorted(update.received) if n in prefixes]
        elif update.type_url == ENDPOINT:
            by_service = self.config.by_service
            scopes = [f"cluster.{c}." for n in sorted(update.received) for c in sorted(by_service.get(n, ()))]
        else:
            return
        outcome = "update_success" if accepted else "update_rejected"
        for scope in scopes:
            self.stats.counter(scope + "update_attempt").inc()
            self.stats.counter(scope + outcome).inc()

    def _start_resource_stats(self) -> None:
        """A new RDS or EDS subscription counts one update_attempt when it starts (Envoy's
        subscription start()), before any response."""
        prefixes = rds_stat_prefixes(self.config)
        scopes = {f"http.{p}.rds.{n}." for n, p in prefixes.items()}
        scopes |= {f"cluster.{c}." for names in self.config.by_service.values() for c in names}
        for scope in sorted(scopes - self._resource_scopes):
            self.stats.counter(scope + "update_attempt").inc()
        self._resource_scopes |= scopes

    def on_timeout(self, type_url: str, name: str) -> None:
        if self.relay is not None and type_url in (ENDPOINT, ROUTE, SECRET):
            self.relay(encode_timeout(type_url, name))
        task = asyncio.ensure_future(self._timed_out(type_url, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _timed_out(self, type_url: str, name: str) -> None:
        if type_url == CLUSTER:
            self.cds_done = True
        elif type_url == LISTENER:
            self.lds_timed_out = True
        await self.config.timed_out(type_url, name)
        self._follow()

    # -- subscriptions --------------------------------------------------------------------------------
    def _watch(self, type_url: str, wanted: dict[Any, set[str]], previous: set[Any]) -> set[Any]:
        for source in previous - set(wanted):
            self.client.watch(type_url, (), source or ConfigSource(ads=True))
        for source, names in wanted.items():
            self.client.watch(type_url, names, source or ConfigSource(ads=True))
        return set(wanted)

    def _watch_secrets(self) -> None:
        wanted = self.config.sds_interest()
        if self.dynamic.ads is None:
            # An ads sds_config without dynamic_resources.ads_config: nothing can deliver it.
            for src in [s for s in wanted if s.ads]:
                if src not in self._sds_failed:
                    self._sds_failed.add(src)
                    log.error("SDS secrets %s: an ads sds_config needs dynamic_resources.ads_config",
                              sorted(wanted[src]))
                del wanted[src]
        self.sds_sources = self._watch(SECRET, wanted, self.sds_sources)
        for src, names in wanted.items():
            # Envoy's per-secret subscription stats, sds.<name>.*: a secret from an api_config_source
            # has its own stream here too (from a file: its own when alone in it), so its
            # SubscriptionStats are that secret's.  (Over ADS the
            # stream's stats are per type, not per secret: not published.)
            if (src.api is None and not src.path) or len(names) != 1:
                continue
            (name,) = names
            key = f"sds:{name}"
            st = self.client.stats(SECRET, src)
            if key not in self._blocks and st is not None:
                self._blocks.add(key)
                self.stats.block(st, f"sds.{name}.", COUNTERS, GAUGES)

    def _follow(self, interest: bool = True) -> None:
        """After a commit: re-derive the subscriptions (only when `interest`: what is watched
        follows the clusters and listeners, so RDS, EDS and SDS responses leave it unchanged and
        skip the walk over every cluster), then pause/resume CDS, start LDS, check readiness."""
        cfg = self.config
        if interest:
            self.eds_sources = self._watch(ENDPOINT, cfg.eds_interest(), self.eds_sources)
            self.rds_sources = self._watch(ROUTE, cfg.rds_interest(), self.rds_sources)
            self._watch_secrets()
            self._start_resource_stats()
        warming = bool(cfg.warming_clusters)
        if self.dynamic.cds is not None:
            if warming and not self.cds_paused:
                self.client.pause(CLUSTER)
                self.cds_paused = True
            elif not warming and self.cds_paused:
                self.client.resume(CLUSTER)
                self.cds_paused = False
        if not warming and CLUSTER in self.seen:
            self.cds_done = True
        self._maybe_start_lds()
        self._check_ready()
        self._gauges()

    def _check_ready(self) -> None:
        """Envoy's init manager: CDS warm, then LDS in and warm (or timed out), and the SDS secrets
        of static listeners and clusters (each bounded by its initial_fetch_timeout)."""
        cfg = self.config
        if not self.lds_started or cfg.static_secrets_pending():
            return
        lds_in = LISTENER in self.seen or self.dynamic.lds is None or self.lds_timed_out
        if lds_in and (not cfg.warming_listeners or self.lds_timed_out):
            self.ready.set()

    def _maybe_start_lds(self) -> None:
        if self.lds_started or not self.cds_done:
            return
        self.lds_started = True
        if self.dynamic.lds is not None:
            self.client.watch(LISTENER)
            self._publish(LISTENER)
        else:
            self._check_ready()

    def _gauges(self) -> None:
        cfg, s = self.config, self.stats
        s.gauge("cluster_manager.active_clusters").set(len(cfg.static_clusters) + len(cfg.active_clusters))
        s.gauge("cluster_manager.warming_clusters").set(len(cfg.warming_clusters))
        s.gauge("listener_manager.total_listeners_active").set(len(cfg.lm.active))
        s.gauge("listener_manager.total_listeners_warming").set(len(cfg.warming_listeners))
        s.gauge("listener_manager.total_listeners_draining").set(len(cfg.lm.retired))


class WorkerFeed:
    """A worker's end of the relay: frames from the main process, applied in order."""

    def __init__(self, fd: int, config: DynamicConfig) -> None:
        self.fd = fd
        self.config = config
        self.buf = bytearray()
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        os.set_blocking(self.fd, False)
        loop.add_reader(self.fd, self._readable)
        self.task = loop.create_task(self._run())

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:  # the main process went away
            asyncio.get_running_loop().remove_reader(self.fd)
            return
        self.buf += data
        while len(self.buf) >= _HEADER.size:
            (n,) = _HEADER.unpack_from(self.buf)
            if len(self.buf) < _HEADER.size + n:
                break
            frame = bytes(self.buf[_HEADER.size : _HEADER.size + n])
            del self.buf[: _HEADER.size + n]
            self.queue.put_nowait(pickle.loads(frame))

    async def _run(self) -> None:
        while True:
            msg = await self.queue.get()
            try:
                await self._apply(msg)
            except Exception:
                log.exception("worker: applying relayed xDS %s failed", msg[1] if len(msg) > 1 else "?")

    async def _apply(self, msg: tuple[Any, ...]) -> None:
        if msg[0] == "timeout":
            await self.config.timed_out(msg[1], msg[2])
            return
        _, type_url, version, raw, removed, versions, ports = msg
        cls = _MESSAGES[type_url]
        updated = {n: cls.FromString(b) for n, b in raw.items()}
        prepared = self.config.prepare(type_url, version, updated, frozenset(removed), versions, bind_sockets=False)
        if not isinstance(prepared, Prepared):
            log.error("worker: relayed %s refused: %s", type_url, "; ".join(map(str, prepared)))
            return
        prepared.ports = ports
        await self.config.commit(prepared)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


class Relay:
    """The main process's ends of the worker pipes: each frame goes to every worker, in order,
    without blocking the loop (a worker that stopped reading only grows its own buffer)."""

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds
        self.pending: dict[int, bytearray] = {fd: bytearray() for fd in fds}
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        for fd in self.fds:
            os.set_blocking(fd, False)

    def __call__(self, frame: bytes) -> None:
        for fd in self.fds:
            buf = self.pending[fd]
            had = bool(buf)
            buf += frame
            if not had:
                self._flush(fd)

    def _flush(self, fd: int) -> None:
        buf = self.pending[fd]
        assert self.loop is not None
        try:
            while buf:
                n = os.write(fd, buf)
                del buf[:n]
        except BlockingIOError:
            self.loop.add_writer(fd, self._flush, fd)
            return
        except OSError:  # the worker is gone
            buf.clear()
        self.loop.remove_writer(fd)


def rds_stat_prefixes(config: DynamicConfig) -> dict[str, str]:
    """RouteConfiguration name -> the stat_prefix of the first connection manager that takes it
    from RDS (Envoy scopes one RDS subscription's stats under the HCM that made it)."""
    out: dict[str, str] = {}
    for lst in (*config.static_listeners, *config.listeners.values()):
        for chain in (*lst.filter_chains, lst.default_filter_chain):
            if chain is None:
                continue
            for f in chain.filters:
                if isinstance(f, HttpConnectionManager) and f.rds_name:
                    out.setdefault(f.rds_name, f.stat_prefix)
    return out

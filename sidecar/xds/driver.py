"""The xDS side of the running sidecar: the XdsClient, what it subscribes to, and the relay of every
accepted response to the worker processes.

Lives in the main process only (gRPC objects must not exist before the workers fork).  For each
response the client hands over, `XdsDriver.apply` translates it (DynamicConfig.prepare: a refused
resource NACKs the whole response and changes nothing), sends it to every worker (the resources'
protobuf bytes, names removed and versions, one frame on that worker's pipe), commits it here
(worker 0), then updates the subscriptions as Envoy's managers do:

- CDS first; the EDS names of the accepted EDS clusters (eds_cluster_config.service_name or the
  cluster name) are watched on their config source; CDS is paused while clusters warm;
- LDS only once the first clusters are warm (or CDS timed out), as Envoy's init manager orders it;
- the RDS names of the accepted listeners' connection managers are watched on their config source.
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

from sidecar.xds.ads import CLUSTER, COUNTERS, ENDPOINT, GAUGES, LISTENER, ROUTE, Rejected, Update
from sidecar.xds.apply import DynamicConfig, Prepared
from sidecar.xds.client import CONTROL_PLANE_COUNTERS, CONTROL_PLANE_GAUGES, ENVOY_STAT_PREFIX, XdsClient
from sidecar.xds.config import ConfigSource, DynamicResources

log = logging.getLogger("sidecar.config")

_MESSAGES: Mapping[str, Any] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
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
        self.lds_started = False
        self.cds_paused = False
        self.cds_done = dynamic.cds is None  # the first CDS response is in and warm (or timed out)
        self.eds_sources: set[Any] = set()
        self.rds_sources: set[Any] = set()
        self._blocks: set[str] = set()
        self.seen: set[str] = set()  # types with an accepted response
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        if self.dynamic.cds is not None:
            self.client.watch(CLUSTER)
            self._publish(CLUSTER)
        # Static EDS clusters and static listeners with rds subscribe from the start.
        self.eds_sources = self._watch(ENDPOINT, self.config.eds_interest(), self.eds_sources)
        self.rds_sources = self._watch(ROUTE, self.config.rds_interest(), self.rds_sources)
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
        if not isinstance(prepared, Prepared):
            return prepared
        if self.relay is not None:
            self.relay(encode_update(prepared))
        await self.config.commit(prepared)
        self.seen.add(update.type_url)
        self._follow()
        return []

    def on_timeout(self, type_url: str, name: str) -> None:
        if self.relay is not None and type_url in (ENDPOINT, ROUTE):
            self.relay(encode_timeout(type_url, name))
        task = asyncio.ensure_future(self._timed_out(type_url, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _timed_out(self, type_url: str, name: str) -> None:
        if type_url == CLUSTER:
            self.cds_done = True
        elif type_url == LISTENER:
            self.ready.set()
        await self.config.timed_out(type_url, name)
        self._follow()

    # -- subscriptions --------------------------------------------------------------------------------
    def _watch(self, type_url: str, wanted: dict[Any, set[str]], previous: set[Any]) -> set[Any]:
        for source in previous - set(wanted):
            self.client.watch(type_url, (), source or ConfigSource(ads=True))
        for source, names in wanted.items():
            self.client.watch(type_url, names, source or ConfigSource(ads=True))
        return set(wanted)

    def _follow(self) -> None:
        cfg = self.config
        self.eds_sources = self._watch(ENDPOINT, cfg.eds_interest(), self.eds_sources)
        self.rds_sources = self._watch(ROUTE, cfg.rds_interest(), self.rds_sources)
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
        if self.lds_started and (LISTENER in self.seen or self.dynamic.lds is None) and not cfg.warming_listeners:
            self.ready.set()
        self._gauges()

    def _maybe_start_lds(self) -> None:
        if self.lds_started or not self.cds_done:
            return
        self.lds_started = True
        if self.dynamic.lds is not None:
            self.client.watch(LISTENER)
            self._publish(LISTENER)
        else:
            self.ready.set()

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
        _, type_url, version, raw, removed, versions = msg
        cls = _MESSAGES[type_url]
        updated = {n: cls.FromString(b) for n, b in raw.items()}
        prepared = self.config.prepare(type_url, version, updated, frozenset(removed), versions, bind_sockets=False)
        if not isinstance(prepared, Prepared):
            log.error("worker: relayed %s refused: %s", type_url, "; ".join(map(str, prepared)))
            return
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

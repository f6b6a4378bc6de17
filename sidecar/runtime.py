"""The process: uvloop, worker processes, signals, drain, and what the admin server may see.

Process model (`--concurrency N`): the main process parses the config, binds one SO_REUSEPORT socket
per worker per listener, forks N-1 worker processes, then serves as worker 0 and runs the admin
server.  Stats live in one shared mapping (observe/stats.py), so the admin sums every worker.
SIGTERM, SIGINT and /quitquitquit drain: stop accepting, let in-flight requests finish (at most
--drain-time-s), exit 0."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import uvloop

from sidecar import __version__
from sidecar.admin.context import HostInfo, XdsResource
from sidecar.cli import Options
from sidecar.http import date
from sidecar.listener.manager import ListenerManager, make_socket
from sidecar.model.listener import Listener
from sidecar.model.snapshot import Snapshot
from sidecar.observe import access_log_sink
from sidecar.observe.stats import Stats
from sidecar.tls.wiring import wiring_for
from sidecar.upstream.cluster_manager import ClusterManager

log = logging.getLogger("sidecar")

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}
_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error",
          logging.CRITICAL: "critical", logging.CRITICAL + 10: "off"}


def setup_logging(opts: Options) -> None:
    """Envoy-like log lines on stderr (or --log-path): `[time][pid][level][logger] message`."""
    handler: logging.Handler
    if opts.log_path:
        handler = logging.FileHandler(opts.log_path)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(process)d][%(levelname)s][%(name)s] %(message)s"))
    root = logging.getLogger("sidecar")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(_LEVELS.get(opts.log_level, logging.INFO))
    for comp, level in opts.component_log_level:
        logging.getLogger(f"sidecar.{comp}").setLevel(_LEVELS.get(level, logging.INFO))


def _sds_only_xds(snapshot: Snapshot, opts: Options) -> Any:
    """A bootstrap without dynamic_resources whose static listeners or clusters take secrets from an
    SDS api_config_source (Istio: envoy_grpc cluster sds-grpc) still needs the xDS client: the
    (DynamicResources with nothing but the node, node proto) for it, or None."""
    from sidecar.xds import sds

    refs = [r for c in snapshot.clusters.values() for r in sds.cluster_refs(c)]
    refs += [r for lst in snapshot.listeners for r in sds.listener_refs(lst)]
    if not refs:
        return None
    from envoy.config.core.v3 import base_pb2
    from google.protobuf import json_format

    from sidecar.xds.config import DynamicResources
    from sidecar.xds.node import build_node

    node_json = snapshot.bootstrap_json.get("node")
    node = None
    if isinstance(node_json, dict):
        node = json_format.ParseDict(node_json, base_pb2.Node(), ignore_unknown_fields=True)
    return DynamicResources(), build_node(node, opts)


class Server:
    """One sidecar process tree.  Implements admin.context.AdminContext for the admin server."""

    def __init__(self, opts: Options, snapshot: Snapshot, argv: list[str], xds: Any = None) -> None:
        self.opts = opts
        # (xds.config.DynamicResources, node proto) with dynamic_resources: the main process runs the
        # xDS client (xds/driver.py) and relays each accepted response to the workers over a pipe.
        self._xds = xds if xds is not None else _sds_only_xds(snapshot, opts)
        self._driver: Any = None
        self._dynamic: Any = None
        self._pipes: list[tuple[int, int]] = []
        self._snapshot = snapshot
        self.argv = argv
        self._concurrency = max(1, opts.concurrency)
        # With xDS, stats are made after the workers fork (shared slot table), and there may be many
        # clusters: room for 10,000 with their ~40 stats each.
        self._stats = (
            # Shared names with several workers: TLS stats (ssl.ciphers.*, ssl.versions.* ...) are made
            # at each worker's first handshakes, in no fixed order across workers.
            Stats(workers=self._concurrency, shared_names=self._concurrency > 1)
            if self._xds is None
            else Stats(workers=self._concurrency, max_slots=1 << 20, shared_names=self._concurrency > 1)
        )
        self._start = time.time()
        self._state = "INITIALIZING"
        self._healthy = True
        self._workers_started = False
        self.children: list[int] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.listeners: ListenerManager | None = None
        self.clusters: ClusterManager | None = None
        self._stop: asyncio.Event | None = None
        self._init_stats()

    def _init_stats(self) -> None:
        s = self._stats
        snap = self._snapshot
        s.gauge("cluster_manager.active_clusters").set(len(snap.clusters))
        s.counter("cluster_manager.cluster_added").inc(len(snap.clusters))
        s.gauge("listener_manager.total_listeners_active").set(len(snap.listeners))
        s.counter("listener_manager.listener_added").inc(len(snap.listeners))
        s.counter("listener_manager.listener_create_success").inc(len(snap.listeners) * self._concurrency)

    # -- process model ---------------------------------------------------------------------------
    def _bind_all(self) -> list[list[tuple[Listener, socket.socket]]]:
        """Per worker, its sockets.  Port 0 is resolved once so every worker shares the port."""
        per_worker: list[list[tuple[Listener, socket.socket]]] = [[] for _ in range(self._concurrency)]
        for lst in self._snapshot.listeners:
            if not lst.bind_to_port:
                continue
            first = make_socket(lst)
            per_worker[0].append((lst, first))
            port = first.getsockname()[1] if not lst.address.pipe else None
            for w in range(1, self._concurrency):
                per_worker[w].append((lst, make_socket(lst, port)))
        return per_worker

    def run(self) -> int:
        try:
            sockets = self._bind_all()
        except OSError as exc:
            print(f"error: cannot bind listener: {exc}", file=sys.stderr)
            return 1
        if self._xds is not None:
            # Made before fork: worker w reads pipe w-1, the main process writes every one.
            self._pipes = [os.pipe() for _ in range(1, self._concurrency)]
        for w in range(1, self._concurrency):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    for i, (r, wr) in enumerate(self._pipes):
                        os.close(wr)
                        if i != w - 1:
                            os.close(r)
                    for i, socks in enumerate(sockets):
                        if i != w:
                            for _, s in socks:
                                s.close()
                    self._stats.select_worker(w)
                    code = self._run_loop(w, sockets[w])
                finally:
                    os._exit(code)
            self.children.append(pid)
        for r, _ in self._pipes:
            os.close(r)
        for socks in sockets[1:]:
            for _, s in socks:
                s.close()
        code = self._run_loop(0, sockets[0])
        for pid in self.children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        return code

    def _run_loop(self, worker: int, sockets: list[tuple[Listener, socket.socket]]) -> int:
        # Everything built so far (protobuf modules, the config snapshot) lives as long as the process:
        # move it out of the collector's sight so full collections stay short.  The request path
        # frees its objects by reference counting (no cycles), so the collector has little to find.
        gc.collect()
        gc.freeze()
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        try:
            return loop.run_until_complete(self._serve(worker, sockets))
        finally:
            loop.close()

    async def _serve(self, worker: int, sockets: list[tuple[Listener, socket.socket]]) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._tick_date()
        # Access log sinks: flushed every --file-flush-interval-msec, or at --file-flush-min-size-kb.
        opts = self.opts
        access_log_sink.configure(opts.file_flush_interval_msec / 1000, opts.file_flush_min_size_kb * 1024)
        log_flusher = access_log_sink.start_flusher(loop)
        # TLS: static secrets into this worker's SecretStore (certificate files polled from here on).
        wiring_for(loop, self._stats).prepare(self._snapshot.secrets, self._snapshot.clusters.values())
        cm = self.clusters = ClusterManager(self._stats, loop)
        cm.update(self._snapshot.clusters)
        await cm.initialize()
        lm = self.listeners = ListenerManager(loop, cm, self._stats)
        lm.local_node = self._snapshot.node
        lm.default_zipkin = self._snapshot.zipkin
        # bind_to_port: false listeners have no socket; they are registered for hand-off.
        await lm.start(sockets, unbound=[lst for lst in self._snapshot.listeners if not lst.bind_to_port])
        feed = await self._start_dynamic(worker, cm, lm)
        if worker != 0:
            # The main process relays /drain_listeners to the workers as SIGUSR2.
            loop.add_signal_handler(signal.SIGUSR2, self._drain_worker)
        admin = None
        if worker == 0:
            admin_addr = self._snapshot.admin.address
            if admin_addr is not None:
                from sidecar.admin.server import AdminServer

                admin = AdminServer(self)
                if admin_addr.pipe:
                    await admin.start_unix(admin_addr.pipe)
                else:
                    await admin.start(admin_addr.host, admin_addr.port)
        if self._driver is not None:
            await self._driver.start()
            # Envoy stays INITIALIZING until its init manager is done: CDS warm, then LDS and RDS
            # (each bounded by its initial_fetch_timeout).
            ready = asyncio.ensure_future(self._driver.ready.wait())
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait((ready, stop), return_when=asyncio.FIRST_COMPLETED)
            for t in (ready, stop):
                t.cancel()
        self._workers_started = True
        self._stats.gauge("listener_manager.workers_started").set(1)
        self._state = "LIVE"
        log.info("sidecar %s worker %d serving %d listeners", __version__, worker, len(sockets))
        await self._stop.wait()
        # Drain: stop accepting, finish in-flight requests, then go.
        self._state = "DRAINING"
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self._driver is not None:
            await self._driver.stop()
        if feed is not None:
            feed.stop()
        lm.stop_accepting()
        lm.drain_connections()
        drained = await lm.wait_drained(loop.time() + self.opts.drain_time_s)
        if not drained:
            lm.close_all()
        if admin is not None:
            await admin.close()
        cm.close()
        log_flusher.cancel()  # and a last flush of the access logs
        return 0

    async def _start_dynamic(self, worker: int, cm: ClusterManager, lm: ListenerManager) -> Any:
        """With dynamic_resources: this worker's DynamicConfig, fed by the xDS client (worker 0, the
        main process) or by the relay pipe (other workers; returns their WorkerFeed)."""
        if self._xds is None:
            return None
        from sidecar.xds.apply import DynamicConfig
        from sidecar.xds.driver import Relay, WorkerFeed, XdsDriver

        snap = self._snapshot
        config = self._dynamic = DynamicConfig(
            snap.clusters, snap.listeners, cm, lm, make_socket, self.opts.drain_time_s
        )
        loop = asyncio.get_running_loop()
        if worker != 0:
            feed = WorkerFeed(self._pipes[worker - 1][0], config)
            feed.start(loop)
            return feed
        relay = None
        if self._pipes:
            relay = Relay([wr for _, wr in self._pipes])
            relay.start(loop)
        dynamic, node = self._xds
        self._driver = XdsDriver(dynamic, node, config, self._grpc_target, self._stats, relay)
        return None

    def _grpc_target(self, cluster: str) -> str:
        """An envoy_grpc cluster (a static one, as Envoy requires) as a gRPC target."""
        from sidecar.xds.config import grpc_target_for

        cfg = self._snapshot.clusters.get(cluster)
        if cfg is None or not cfg.endpoints:
            raise ValueError(f"envoy_grpc cluster '{cluster}' is not a static cluster with an endpoint")
        a = cfg.endpoints[0].address
        return grpc_target_for(a.host, a.port, a.pipe)

    def _drain_worker(self) -> None:
        if self.listeners is not None:
            self.listeners.stop_accepting()
            self.listeners.drain_connections()

    def _tick_date(self) -> None:
        date.refresh(time.time())
        # Per-request counters are plain ints until flushed; the flush walks only the blocks written
        # since they last went quiet (observe/stats.py), so it costs nothing per idle cluster.
        self._stats.flush()
        assert self.loop is not None
        self.loop.call_later(0.5, self._tick_date)

    # -- AdminContext ------------------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def stats(self) -> Stats:
        return self._stats

    @property
    def state(self) -> str:
        if not self._healthy and self._state == "LIVE":
            return "DRAINING"
        return self._state

    @property
    def start_time(self) -> float:
        return self._start

    def now(self) -> float:
        return time.time()

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def workers_started(self) -> bool:
        return self._workers_started

    @property
    def command_line(self) -> Sequence[str]:
        return self.argv

    @property
    def healthy(self) -> bool:
        return self._healthy

    def cluster_hosts(self, name: str) -> Sequence[HostInfo]:
        cm = self.clusters
        state = cm.get(name) if cm is not None else None
        if state is None:
            return []
        out = []
        od = state.detector
        for h in state.hosts:
            out.append(
                HostInfo(
                    address=str(h.address),
                    weight=h.weight,
                    hostname=h.hostname,
                    eds_health_status=h.endpoint.health_status if h.endpoint.health_status != "UNKNOWN" else "HEALTHY",
                    health_flags=("failed_outlier_check",) if od is not None and od.ejected(h.address) else (),
                    cx_connect_fail=h.cx_connect_fail,
                    rq_error=h.rq_error,
                    rq_success=h.rq_success,
                    rq_timeout=h.rq_timeout,
                    rq_total=h.rq_total,
                    cx_active=h.cx_active,
                    rq_active=h.rq_active,
                )
            )
        return out

    def listener_addresses(self) -> Sequence[tuple[str, str]]:
        return self.listeners.addresses() if self.listeners is not None else []

    def xds_resources(self, type_url: str) -> Sequence[XdsResource]:
        if self._dynamic is None:
            return []
        from sidecar.admin.protojson import proto_json

        return [
            XdsResource(
                name=name,
                version_info=acc.version_info,
                last_updated=acc.last_updated,
                resource=proto_json(acc.proto),
                warming=warming,
            )
            for name, acc, warming in self._dynamic.resources(type_url)
        ]

    def loggers(self) -> Mapping[str, str]:
        out = {}
        for name in sorted(["sidecar", *[n for n in logging.root.manager.loggerDict if n.startswith("sidecar.")]]):
            lg = logging.getLogger(name)
            out[name.removeprefix("sidecar.") if name != "sidecar" else "main"] = _NAMES.get(lg.getEffectiveLevel(), "info")
        return out

    def healthcheck_fail(self) -> None:
        self._healthy = False

    def healthcheck_ok(self) -> None:
        self._healthy = True

    def drain_listeners(self, inbound_only: bool, graceful: bool) -> None:
        lm = self.listeners
        if lm is None:
            return
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGUSR2)
            except ProcessLookupError:
                pass
        if graceful and self.loop is not None:
            # Envoy's graceful drain: keep accepting for --drain-time-s while asking clients to go
            # (connection: close), then stop the listeners.
            lm.drain_connections()
            self.loop.call_later(self.opts.drain_time_s, lm.stop_accepting)
        else:
            lm.stop_accepting()
            lm.drain_connections()

    def quit(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def set_log_level(self, level: str | None, paths: Mapping[str, str]) -> None:
        if level is not None:
            for name in ["sidecar", *[n for n in logging.root.manager.loggerDict if n.startswith("sidecar.")]]:
                logging.getLogger(name).setLevel(_LEVELS.get(level, logging.INFO))
        for name, lvl in paths.items():
            logging.getLogger("sidecar" if name == "main" else f"sidecar.{name}").setLevel(_LEVELS.get(lvl, logging.INFO))

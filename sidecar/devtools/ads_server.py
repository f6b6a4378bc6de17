"""A small file-driven xDS control plane for tests, the demo and local experiments.

    python -m sidecar.devtools.ads_server --dir DIR [--listen 127.0.0.1:18000 | unix:PATH]
                                          [--rest-listen 127.0.0.1:18001] [--poll 0.2]

It serves the resources in DIR (layout: sidecar/devtools/xds_files.py; one file per type such as
`clusters.yaml`, each a list of resources in Envoy's JSON/YAML form) over gRPC: ADS State of the
World and Delta (StreamAggregatedResources, DeltaAggregatedResources) and the per-type services
(ListenerDiscoveryService/StreamListeners and DeltaListeners, and the same for routes, clusters,
endpoints and secrets), with the stock service stubs of xds-protos; with --rest-listen, REST-JSON
too (rest_server.py).  DIR is polled every --poll seconds; when a file changes (written or
replaced) the resources are reloaded and every connected stream that has the changed types gets
the new content.  A file that does not parse is logged and the previous resources stay.  NACKs
are logged with their error_detail.

Once bound it prints one line to stdout, `ads_server ready: grpc=<target> rest=<host:port|->`, so
that a parent process can learn the ports it got with port 0.  What to send to whom is decided in
xds_core.py (sans-IO); this module is the asyncio/grpc adapter and the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf.message import Message

from sidecar.devtools.rest_server import RestHandler
from sidecar.devtools.xds_core import DeltaSession, Outcome, SotwSession, Store
from sidecar.devtools.xds_files import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    FileError,
    dir_signature,
    load_dir,
)

log = logging.getLogger("sidecar.devtools.ads_server")

# (servicer base, add-to-server function, SotW method, Delta method, type URL) per per-type service.
_PER_TYPE: tuple[tuple[type, Callable[[Any, Any], None], str, str, str], ...] = (
    (
        lds_pb2_grpc.ListenerDiscoveryServiceServicer,
        lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server,
        "StreamListeners",
        "DeltaListeners",
        LISTENER,
    ),
    (
        rds_pb2_grpc.RouteDiscoveryServiceServicer,
        rds_pb2_grpc.add_RouteDiscoveryServiceServicer_to_server,
        "StreamRoutes",
        "DeltaRoutes",
        ROUTE,
    ),
    (
        cds_pb2_grpc.ClusterDiscoveryServiceServicer,
        cds_pb2_grpc.add_ClusterDiscoveryServiceServicer_to_server,
        "StreamClusters",
        "DeltaClusters",
        CLUSTER,
    ),
    (
        eds_pb2_grpc.EndpointDiscoveryServiceServicer,
        eds_pb2_grpc.add_EndpointDiscoveryServiceServicer_to_server,
        "StreamEndpoints",
        "DeltaEndpoints",
        ENDPOINT,
    ),
    (
        sds_pb2_grpc.SecretDiscoveryServiceServicer,
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server,
        "StreamSecrets",
        "DeltaSecrets",
        SECRET,
    ),
)
MAX_QUEUED = 1000  # responses waiting for one slow stream; beyond that the stream is ended


class _Stream:
    def __init__(self, session: SotwSession | DeltaSession, label: str) -> None:
        self.session = session
        self.label = label
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue()

    def put(self, responses: Sequence[Message]) -> None:
        for r in responses:
            if self.queue.qsize() >= MAX_QUEUED:
                log.warning("%s: too many responses queued, ending the stream", self.label)
                self.queue.put_nowait(None)
                return
            self.queue.put_nowait(r)


class AdsServer:
    """Serve DIR's resources.  `start` binds (returns the gRPC target), `stop` ends everything."""

    def __init__(self, directory: Path, poll_interval: float = 0.2) -> None:
        self.directory = directory
        self.poll_interval = min(max(poll_interval, 0.01), 10.0)
        self.store = Store()
        self.streams: set[_Stream] = set()
        self._nonces = itertools.count(1)
        self._ids = itertools.count(1)
        self._signature: object = None
        self._server: grpc.aio.Server | None = None
        self._rest: asyncio.Server | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.rest = RestHandler(self.store, self.nonce)
        self.target = ""
        self.rest_address = ""
        self.reloads = 0

    def nonce(self) -> str:
        return str(next(self._nonces))

    def reload(self) -> list[str]:
        """Read DIR again; push what changed to every stream.  Returns the changed type URLs."""
        self._signature = dir_signature(self.directory)
        try:
            resources = load_dir(self.directory)
        except (FileError, OSError) as e:
            log.error("not reloaded, keeping the previous resources: %s", e)
            return []
        changed = self.store.replace(resources)
        self.reloads += 1
        if changed:
            log.info(
                "loaded %s",
                ", ".join(
                    f"{t.rsplit('.', 1)[-1]} v{self.store.version(t)} ({len(self.store.resources[t])})"
                    for t in changed
                ),
            )
        for stream in list(self.streams):
            stream.put(stream.session.on_change(changed))
        return changed

    async def start(self, listen: str = "127.0.0.1:0", rest_listen: str = "") -> str:
        self.reload()
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self._ads_servicer(), server)
        for base, add, sotw, delta, type_url in _PER_TYPE:
            add(self._per_type_servicer(base, sotw, delta, type_url), server)
        port = server.add_insecure_port(listen)
        await server.start()
        self._server = server
        self.target = listen if listen.startswith("unix:") else f"{listen.rsplit(':', 1)[0]}:{port}"
        if rest_listen:
            if rest_listen.startswith("unix:"):
                self._rest = await asyncio.start_unix_server(self.rest.serve, rest_listen[5:])
                self.rest_address = rest_listen
            else:
                host, _, rport = rest_listen.rpartition(":")
                self._rest = await asyncio.start_server(self.rest.serve, host.strip("[]"), int(rport))
                self.rest_address = f"{host}:{self._rest.sockets[0].getsockname()[1]}"
        self._watcher = asyncio.create_task(self._watch())
        return self.target

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for stream in list(self.streams):
            stream.queue.put_nowait(None)
        if self._rest is not None:
            self._rest.close()
        if self._server is not None:
            await self._server.stop(0.5)
            self._server = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                if dir_signature(self.directory) != self._signature:
                    self.reload()
            except Exception:
                log.exception("reload failed")

    # -- gRPC ------------------------------------------------------------------------------------
    async def _serve(
        self, requests: AsyncIterator[Any], context: Any, session: SotwSession | DeltaSession, kind: str
    ) -> AsyncIterator[Message]:
        stream = _Stream(session, f"stream {next(self._ids)} ({kind}, {context.peer()})")
        self.streams.add(stream)
        log.info("%s opened", stream.label)

        async def read() -> None:
            try:
                async for req in requests:
                    outcome = session.on_request(req)
                    self._log(stream, req, outcome)
                    stream.put(outcome.responses)
            except (grpc.RpcError, asyncio.CancelledError):
                pass
            finally:
                stream.queue.put_nowait(None)  # the client half-closed or went away

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await stream.queue.get()
                if item is None:
                    return
                yield item
        finally:
            reader.cancel()
            self.streams.discard(stream)
            log.info("%s closed", stream.label)

    @staticmethod
    def _log(stream: _Stream, req: Any, outcome: Outcome) -> None:
        type_name = (req.type_url or "").rsplit(".", 1)[-1] or "?"
        if outcome.nack is not None:
            log.warning(
                "%s: NACK of %s nonce %s: %s", stream.label, type_name, req.response_nonce, outcome.nack
            )
        elif outcome.unknown_type:
            log.info("%s: no resources of type %r served here", stream.label, req.type_url)
        elif outcome.ack:
            log.debug("%s: ACK of %s nonce %s", stream.label, type_name, req.response_nonce)

    def _ads_servicer(self) -> ads_pb2_grpc.AggregatedDiscoveryServiceServicer:
        # grpc.aio tells streaming handlers apart by inspect.isasyncgenfunction: each method must be
        # an async generator itself, not a function returning one.
        server = self

        class Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
            async def StreamAggregatedResources(self, requests: Any, context: Any) -> AsyncIterator[Message]:
                session = SotwSession(server.store, server.nonce)
                async for r in server._serve(requests, context, session, "ADS"):
                    yield r

            async def DeltaAggregatedResources(self, requests: Any, context: Any) -> AsyncIterator[Message]:
                session = DeltaSession(server.store, server.nonce)
                async for r in server._serve(requests, context, session, "ADS delta"):
                    yield r

        return Ads()

    def _per_type_servicer(self, base: type, sotw: str, delta: str, type_url: str) -> Any:
        server = self

        async def stream(_self: Any, requests: Any, context: Any) -> AsyncIterator[Message]:
            session = SotwSession(server.store, server.nonce, type_url)
            async for r in server._serve(requests, context, session, sotw):
                yield r

        async def delta_stream(_self: Any, requests: Any, context: Any) -> AsyncIterator[Message]:
            session = DeltaSession(server.store, server.nonce, type_url)
            async for r in server._serve(requests, context, session, delta):
                yield r

        return type(base.__name__.removesuffix("Servicer"), (base,), {sotw: stream, delta: delta_stream})()


async def serve(args: argparse.Namespace) -> int:
    server = AdsServer(Path(args.dir), args.poll)
    try:
        target = await server.start(args.listen, args.rest_listen or "")
    except (RuntimeError, OSError, ValueError) as e:
        print(f"ads_server: cannot listen: {e}", file=sys.stderr)
        return 2
    print(f"ads_server ready: grpc={target} rest={server.rest_address or '-'}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.devtools.ads_server",
        description=__doc__.split("\n")[0],
        epilog="DIR holds listeners.yaml, routes.yaml, clusters.yaml, endpoints.yaml, secrets.yaml (any may be "
        "missing; .yml/.json too), each a list of resources in Envoy's YAML/JSON form, or one resources.yaml "
        "mapping those names to lists.  Files are re-read when they change.",
    )
    parser.add_argument(
        "--dir", required=True, help="directory of resource files (listeners.yaml, clusters.yaml...)"
    )
    parser.add_argument("--listen", default="127.0.0.1:18000", help="gRPC address, host:port or unix:PATH")
    parser.add_argument(
        "--rest-listen", default="", help="REST-JSON address, host:port or unix:PATH (off if unset)"
    )
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between checks of DIR (default 0.2)")
    parser.add_argument("-l", "--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    if not Path(args.dir).is_dir():
        parser.error(f"--dir {args.dir}: not a directory")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())

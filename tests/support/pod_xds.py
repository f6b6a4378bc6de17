"""The control plane of one Istio pod, for e2e tests: ADS on pilot-agent's XDS socket and SDS on the
workload SDS socket, both Unix sockets under the pod's working directory (as pilot-agent lays them
out: ./etc/istio/proxy/XDS and ./var/run/secrets/workload-spiffe-uds/socket), built on
tests/support/fake_xds.py.

It serves a fixed State-of-the-World snapshot: every request whose subscription (type, names) is new
on its stream gets the matching resources (LDS/CDS wildcard: all of them; EDS, RDS and SDS by name),
and every response's answer (ACK or NACK) is recorded, so a test can assert that the proxy took
everything:

    cp = PodControlPlane(workdir, {LISTENER: [...], CLUSTER: [...], ENDPOINT: [...], ROUTE: [...]},
                         {"default": secret, "ROOTCA": secret})
    loop.call(cp.start())                  # on a tests/support/loop_thread.LoopThread
    ...
    cp.nacks(), cp.not_acked()             # [] and [] when every response was ACKed

The sockets are made world-writable so a proxy running as another uid (1337) can connect."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from tests.support.fake_xds import CLUSTER, LISTENER, SECRET, FakeStream, FakeXds, Received

XDS_REL = "etc/istio/proxy/XDS"
SDS_REL = "var/run/secrets/workload-spiffe-uds/socket"
_WILDCARD = (LISTENER, CLUSTER)


def resource_name(msg: Any) -> str:
    """The name a subscription uses: ClusterLoadAssignment.cluster_name, else .name."""
    return str(getattr(msg, "cluster_name", "") or msg.name)


@dataclass
class Sent:
    """One response pushed to the proxy and what it answered (None until it does)."""

    stream: str  # "ads" or "sds"
    type_url: str
    names: tuple[str, ...]
    version: str
    nonce: str  # unique per server only (ADS and SDS both count from n1): match with `on` too
    on: FakeStream = field(repr=False)
    answer: Received | None = field(default=None, repr=False)


class PodControlPlane:
    """ADS and SDS servers for one pod's working directory."""

    def __init__(
        self, workdir: Path, resources: Mapping[str, Sequence[Message]], secrets: Mapping[str, Message]
    ) -> None:
        self.workdir = workdir
        self.resources: dict[str, Sequence[Message]] = {**resources, SECRET: list(secrets.values())}
        self.ads = FakeXds()
        self.sds = FakeXds()
        self.sent: list[Sent] = []
        self.requests: list[tuple[str, Received]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._versions = itertools.count(1)

    async def start(self) -> None:
        for rel, server, label in ((XDS_REL, self.ads, "ads"), (SDS_REL, self.sds, "sds")):
            path = self.workdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            await server.start(f"unix:{path}")
            os.chmod(path, 0o777)  # connect(2) on a Unix socket needs write permission
            self._tasks.append(asyncio.ensure_future(self._accept(server, label)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.ads.stop(0)
        await self.sds.stop(0)

    async def _accept(self, server: FakeXds, label: str) -> None:
        streams: list[asyncio.Task[None]] = []
        try:
            while True:
                stream = await server.next_stream(3600)
                streams.append(asyncio.ensure_future(self._serve(stream, label)))
        finally:
            for t in streams:
                t.cancel()

    def _pick(self, type_url: str, names: list[str]) -> list[Message]:
        pool = self.resources.get(type_url, [])
        if type_url in _WILDCARD and not names:
            return list(pool)
        return [m for m in pool if resource_name(m) in names]

    async def _serve(self, stream: FakeStream, label: str) -> None:
        # What this stream was last sent per type: a request with the same names is an answer to it
        # (ACK, or NACK with error_detail); new names (EDS after CDS, RDS after LDS) get a response.
        subscribed: dict[str, tuple[str, ...]] = {}
        with contextlib.suppress(TimeoutError):
            while True:
                req = await stream.next_request(3600)
                self.requests.append((label, req))
                for s in self.sent:
                    if s.answer is None and req.nonce and s.on is stream and s.nonce == req.nonce:
                        s.answer = req
                names = tuple(req.names)
                if req.error is not None or subscribed.get(req.type_url) == names:
                    continue
                subscribed[req.type_url] = names
                version = f"v{next(self._versions)}"
                nonce = await stream.send(req.type_url, self._pick(req.type_url, req.names), version)
                self.sent.append(Sent(label, req.type_url, names, version, nonce, stream))

    def nacks(self) -> list[tuple[str, str, str]]:
        """(type, names, error) of every NACK the proxy sent."""
        return [
            (r.type_url.rsplit(".", 1)[-1], ",".join(r.names), r.error or "")
            for _, r in self.requests
            if r.error is not None
        ]

    @staticmethod
    def _acked(s: Sent) -> bool:
        """An ACK: the same stream answered the nonce, without error_detail, taking the version."""
        return s.answer is not None and s.answer.error is None and s.answer.version == s.version

    def not_acked(self) -> list[tuple[str, str, tuple[str, ...], str]]:
        """(server, type, names, what came back) of every response not ACKed (yet)."""
        out = []
        for s in self.sent:
            if not self._acked(s):
                got = (
                    "nothing"
                    if s.answer is None
                    else f"version {s.answer.version!r}, error {s.answer.error!r}"
                )
                out.append((s.stream, s.type_url.rsplit(".", 1)[-1], s.names, got))
        return out

    def acked_types(self) -> set[str]:
        """Short type names (Listener, Cluster, ...) with at least one ACKed response."""
        return {s.type_url.rsplit(".", 1)[-1] for s in self.sent if self._acked(s)}

"""request_mirror_policies: fire-and-forget copies of a request (Envoy's shadow writer).

The router hands a `ShadowRequest` the encoded request (head with the "-shadow" host, then the body as
it was forwarded) once the downstream request is complete; the shadow borrows a pooled connection to
its cluster, sends everything, counts the response in the cluster's stats and throws it away.
Nothing it does reaches the client."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sidecar.http.events import Headers

if TYPE_CHECKING:
    from sidecar.upstream.cluster_manager import ClusterState, Host
    from sidecar.upstream.pools.http1 import Http1UpstreamConnection


class _Nowhere:
    """A shadow has no client: writes around its upstream reads go nowhere (pools' Corkable)."""

    __slots__ = ("last_io",)

    def __init__(self) -> None:
        self.last_io = 0.0

    def cork(self) -> None:
        return None

    def uncork(self) -> None:
        return None


_NOWHERE = _Nowhere()


def shadow_authority(authority: bytes) -> bytes:
    """Envoy appends "-shadow" to the host part, before any port (`m.test:80` -> `m.test-shadow:80`)."""
    if authority.startswith(b"["):  # [v6]:port
        end = authority.find(b"]")
        return authority[: end + 1] + b"-shadow" + authority[end + 1 :]
    host, sep, port = authority.rpartition(b":")
    if sep and port.isdigit():
        return host + b"-shadow:" + port
    return authority + b"-shadow"


class ShadowRequest:
    """One mirrored request; implements pools/http1.UpstreamHandler."""

    __slots__ = ("chunks", "cluster", "conn", "done", "host", "request_complete", "timer")

    downstream = _NOWHERE

    def __init__(self, cluster: ClusterState, host: Host, chunks: list[bytes]) -> None:
        self.cluster = cluster
        self.host = host
        self.chunks = chunks
        self.conn: Http1UpstreamConnection | None = None
        self.done = False
        self.request_complete = False
        self.timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        cs = self.cluster.stats
        cs.upstream_rq_total += 1
        self.host.rq_total += 1
        if timeout > 0:
            # The shadow lives no longer than the route timeout (Envoy sends it with the same).
            self.timer = loop.call_later(timeout, self._give_up)
        self.host.pool.acquire(self)

    def _finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _give_up(self) -> None:
        self.timer = None
        if not self.done:
            self.cluster.stats.upstream_rq_timeout += 1
            conn = self.conn
            self.conn = None
            if conn is not None:
                conn.detach()
            self._finish()

    # -- UpstreamHandler ---------------------------------------------------------------------------
    def on_upstream_ready(self, conn: Http1UpstreamConnection) -> None:
        if self.done:
            conn.handler = None
            conn.pool.release(conn)
            return
        self.conn = conn
        conn.send(b"".join(self.chunks))
        self.chunks = []
        self.request_complete = True

    def on_upstream_failure(self, reason: bytes) -> None:
        self.conn = None
        self._finish()

    def on_upstream_overflow(self) -> None:
        self._finish()

    def on_upstream_headers(self, status: int, headers: Headers) -> None:
        self.cluster.stats.response(status)

    def on_upstream_body(self, data: bytes) -> None:
        return None

    def on_upstream_end(self) -> None:
        self.conn = None
        self.host.rq_success += 1
        self._finish()

    def on_upstream_pause(self) -> None:
        return None

    def on_upstream_resume(self) -> None:
        return None

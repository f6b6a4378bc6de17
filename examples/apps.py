"""Toy bookinfo upstream services for the demo: one small HTTP/1.1 server per service version.

Each app answers every request with JSON naming itself and echoing what it saw, so the demo can
show which cluster the proxy picked and what the route did to the request (path and Host rewrites,
added headers), e.g. `{"service": "reviews", "version": "v2", "stars": "black", "seen": {...}}`.

The apps run in threads of the demo process (stdlib `ThreadingHTTPServer`), each bound to a free
loopback port chosen by the kernel.  One path is slow on purpose (`/ratings/slow`) so that the route
timeout on ratings fires; its wait is cut short when the app stops.  Not a performance target."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Longer than the 0.5 s route timeout in bookinfo.yaml, short enough to never hold the demo up.
SLOW_SECONDS = 2.0
# Request headers echoed back under "seen": the ones the demo's routes add or match on.
_ECHOED_PREFIXES = ("x-demo-", "x-envoy-original-path", "end-user")

# What each version adds to its answer, in the spirit of bookinfo (reviews v2 black stars, v3 red).
_EXTRA: dict[tuple[str, str], dict[str, object]] = {
    ("reviews", "v1"): {"stars": None},
    ("reviews", "v2"): {"stars": "black"},
    ("reviews", "v3"): {"stars": "red"},
    ("ratings", "v1"): {"ratings": {"Reviewer1": 5, "Reviewer2": 4}},
    ("details", "v1"): {"author": "William Shakespeare", "year": 1595},
    ("productpage", "v1"): {"title": "The Comedy of Errors"},
}


@dataclass(frozen=True, slots=True)
class AppSpec:
    service: str
    version: str


# The bookinfo cast; demo.py renders one cluster endpoint per entry.
BOOKINFO: tuple[AppSpec, ...] = (
    AppSpec("productpage", "v1"),
    AppSpec("details", "v1"),
    AppSpec("reviews", "v1"),
    AppSpec("reviews", "v2"),
    AppSpec("reviews", "v3"),
    AppSpec("ratings", "v1"),
)


class _Server(ThreadingHTTPServer):
    # Handler threads may sit on idle keep-alive connections from the proxy; never join them.
    daemon_threads = True
    block_on_close = False

    def __init__(self, spec: AppSpec, stopping: threading.Event) -> None:
        self.spec = spec
        self.stopping = stopping
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A proxy that gave up (route timeout) resets the connection under the slow handler;
        # that is the point of the scenario, not an error worth a traceback.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the proxy's connection pool gets reused
    server_version = "bookinfo-toy"
    sys_version = ""
    timeout = 30  # an idle keep-alive connection is dropped after this many seconds
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: _Server

    def do_GET(self) -> None:
        spec = self.server.spec
        if self.path.startswith("/ratings/slow") and self.server.stopping.wait(SLOW_SECONDS):
            return
        seen: dict[str, str] = {"path": self.path, "host": self.headers.get("host", "")}
        for name, value in self.headers.items():
            if name.lower().startswith(_ECHOED_PREFIXES):
                seen[name.lower()] = value
        answer: dict[str, object] = {"service": spec.service, "version": spec.version}
        answer.update(_EXTRA.get((spec.service, spec.version), {}))
        answer["seen"] = seen
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass  # the demo prints its own summary


@dataclass
class Apps:
    """Running apps, keyed `service-version` (e.g. `reviews-v2`), with the port each listens on."""

    servers: dict[str, _Server] = field(default_factory=dict)
    threads: dict[str, threading.Thread] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def ports(self) -> dict[str, int]:
        return {key: int(srv.server_address[1]) for key, srv in self.servers.items()}

    def stop(self) -> None:
        self.stopping.set()
        for key, srv in self.servers.items():
            if key in self.threads:  # shutdown() waits for serve_forever, so only if it runs
                srv.shutdown()  # returns once serve_forever has noticed (it polls every 0.1 s)
            srv.server_close()
        for t in self.threads.values():
            t.join(timeout=2.0)


def start_apps(specs: Iterable[AppSpec] = BOOKINFO) -> Apps:
    """Start one server thread per spec; the caller must call `stop()` (in a finally)."""
    apps = Apps()
    try:
        for spec in specs:
            srv = _Server(spec, apps.stopping)
            key = f"{spec.service}-{spec.version}"
            apps.servers[key] = srv
            t = threading.Thread(
                target=srv.serve_forever, kwargs={"poll_interval": 0.1}, name=f"app-{key}", daemon=True
            )
            t.start()
            apps.threads[key] = t
    except BaseException:
        apps.stop()
        raise
    return apps

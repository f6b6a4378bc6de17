"""The differential harness: one bootstrap, run on envoy (the oracle) and on the sidecar, the same
requests sent to both, and what the client and the upstream saw compared.

A test module names its bootstrap (`BOOTSTRAP = "routing.yaml"`, a file under bootstraps/) and the
upstreams it needs (`UPSTREAMS`, `TCP_UPSTREAMS`).  `Stack` owns those upstreams and starts each proxy
kind lazily on first use; `Differential` is what a test gets (fixture `diff`, parametrised over the
proxy kinds): `diff.exchange(raw)` sends one request and returns an `Observation`, `diff.run(fn)` runs a
multi-step scenario.  On a non-envoy kind, both helpers also run the same thing on envoy and fail on
any difference after masking volatile values (`date`, `x-envoy-upstream-service-time`, `x-request-id`:
their presence still counts).  The test then asserts its own expected values, which document Envoy."""

from __future__ import annotations

import dataclasses
import difflib
import pprint
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.support.http1 import Client, Header, Response, request
from tests.support.proxy import ProxyProcess, ProxyStartError, start_proxy
from tests.support.tcp_upstream import TcpUpstream
from tests.support.upstream import RecordedRequest, Upstreams

BOOTSTRAPS = Path(__file__).parent / "bootstraps"
VOLATILE = frozenset({"date", "x-envoy-upstream-service-time", "x-request-id"})
MASK = "<volatile>"
T = TypeVar("T")


@dataclass
class Observation:
    """What one request produced: the response the client read, what the upstreams recorded, and
    (when asked) whether the proxy closed the client connection afterwards."""

    response: Response
    upstream: list[RecordedRequest] = field(default_factory=list)
    closed: bool | None = None

    # Shortcuts for the assertions tests make most.
    @property
    def status(self) -> int:
        return self.response.status

    @property
    def body(self) -> bytes:
        return self.response.body

    def header(self, name: str) -> str | None:
        return self.response.header(name)

    @property
    def only_upstream(self) -> RecordedRequest:
        """The single upstream request (fails if there were none or several)."""
        assert len(self.upstream) == 1, f"expected one upstream request, got {self.upstream}"
        return self.upstream[0]


def mask_headers(headers: Iterable[Header], volatile: frozenset[str] = VOLATILE) -> list[Header]:
    """Headers sorted by lowercase name (stable: repeated names keep their order), volatile values
    replaced by a mask.  Names keep their case: Envoy lowercases what it sends on HTTP/1.1."""
    out = [(k, MASK if k.lower() in volatile else v) for k, v in headers]
    return sorted(out, key=lambda h: h[0].lower())


def normalize(value: Any) -> Any:
    """A plain, comparable form of an observation (or of anything a scenario returns)."""
    if isinstance(value, Observation):
        return {
            "response": normalize(value.response),
            "upstream": normalize(value.upstream),
            "closed": value.closed,
        }
    if isinstance(value, Response):
        return {
            "status": f"{value.version} {value.status} {value.reason}",
            "headers": mask_headers(value.headers),
            "body": value.body,
            "framing": value.framing,
            "trailers": mask_headers(value.trailers),
            "interim": [normalize(r) for r in value.interim],
        }
    if isinstance(value, RecordedRequest):
        return {
            "upstream": value.upstream,
            "request_line": value.request_line,
            "headers": mask_headers(value.headers),
            "body": value.body,
            "framing": value.framing,
            "trailers": mask_headers(value.trailers),
        }
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return normalize(dataclasses.asdict(value))
    return value


def assert_same(oracle: Any, candidate: Any, kind: str) -> None:
    a, b = normalize(oracle), normalize(candidate)
    if a != b:
        diff = "\n".join(
            difflib.unified_diff(
                pprint.pformat(a, width=110).splitlines(),
                pprint.pformat(b, width=110).splitlines(),
                "envoy",
                kind,
                lineterm="",
            )
        )
        raise AssertionError(f"{kind} differs from envoy:\n{diff}")


class Stack:
    """The upstreams of one test module and its proxies (started lazily, one per kind)."""

    def __init__(
        self,
        template: str,
        upstreams: Iterable[str] = ("service1", "service2"),
        tcp_upstreams: Iterable[str] = (),
    ) -> None:
        self.template = template
        self.ups = Upstreams(upstreams)
        self.tcp: dict[str, TcpUpstream] = {}
        try:
            for name in tcp_upstreams:
                self.tcp[name] = TcpUpstream(name)
                self.tcp[name].start()
        except BaseException:
            self.close()
            raise
        self._proxies: dict[str, tuple[ProxyProcess, dict[str, object]]] = {}
        self._failed: dict[str, str] = {}

    @classmethod
    def for_module(cls, module: Any) -> Stack:
        spec: str = module.BOOTSTRAP
        template = spec if "\n" in spec else (BOOTSTRAPS / spec).read_text()
        return cls(
            template,
            getattr(module, "UPSTREAMS", ("service1", "service2")),
            getattr(module, "TCP_UPSTREAMS", ()),
        )

    def values(self) -> dict[str, object]:
        vals: dict[str, object] = dict(self.ups.ports)
        vals.update({f"{name}_port": t.port for name, t in self.tcp.items()})
        return vals

    def proxy(self, kind: str) -> tuple[ProxyProcess, dict[str, object]]:
        """The running proxy of `kind` and its placeholder values; started on first call.  A start
        that failed fails again at once for the rest of the module."""
        if kind in self._failed:
            # A fresh exception each time: re-raising one instance would grow its traceback per test.
            raise ProxyStartError(f"(start failed earlier in this module) {self._failed[kind]}")
        if kind in self._proxies:
            proc = self._proxies[kind][0]
            if not proc.running:  # it died after an earlier test: say so rather than restart quietly
                self._failed[kind] = f"{kind} exited during the module\n{proc.stderr()}"
                raise ProxyStartError(self._failed[kind])
            return self._proxies[kind]
        try:
            self._proxies[kind] = start_proxy(kind, self.template, self.values())
        except ProxyStartError as e:
            self._failed[kind] = str(e)
            raise
        return self._proxies[kind]

    def reset(self) -> None:
        self.ups.reset()
        for t in self.tcp.values():
            t.reset()

    def close(self) -> None:
        for p, _ in self._proxies.values():
            p.close()
        for t in self.tcp.values():
            t.close()
        self.ups.close()


class Target:
    """One proxy as a scenario sees it: its ports, the shared upstreams, a client factory."""

    def __init__(self, stack: Stack, kind: str) -> None:
        self.kind = kind
        self.stack = stack
        self.process, self.values = stack.proxy(kind)
        self.ups = stack.ups
        self.tcp = stack.tcp

    def port(self, name: str = "listener_port") -> int:
        return int(str(self.values[name]))

    def client(self, listener: str = "listener_port", timeout: float = 10.0) -> Client:
        return Client(self.port(listener), timeout=timeout)

    def stat(self, name: str) -> int:
        """One counter or gauge from the proxy's admin /stats (0 when it is not there)."""
        with Client(self.port("admin_port")) as c:
            c.send(request("GET", f"/stats?filter=^{name}$", host="admin"))
            text = c.read_response().text
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            if k == name:
                return int(v)
        return 0

    def exchange(
        self,
        raw: bytes,
        listener: str = "listener_port",
        check_close: bool = False,
        method: str | None = None,
        close_wait: float = 3.0,
    ) -> Observation:
        """Send `raw` on a new connection, read one response, collect what the upstreams recorded."""
        self.ups.clear()
        with self.client(listener) as c:
            resp = c.exchange(raw, method=method)
            closed = c.wait_closed(close_wait) if check_close else None
        return Observation(resp, self.ups.requests(), closed)


class Differential:
    """The `diff` fixture: runs scenarios on `kind`, and on envoy as the oracle when `kind` is not envoy."""

    def __init__(self, stack: Stack, kind: str, used: list[ProxyProcess]) -> None:
        self.stack = stack
        self.kind = kind
        self._used = used

    def target(self, kind: str | None = None) -> Target:
        t = Target(self.stack, kind or self.kind)
        if t.process not in self._used:
            self._used.append(t.process)
        return t

    def run(self, scenario: Callable[[Target], T]) -> T:
        """Run `scenario` on this kind (after envoy, and compared with it, when this kind is not envoy)."""
        if self.kind != "envoy":
            oracle = scenario(self.target("envoy"))
            mine = scenario(self.target())
            assert_same(oracle, mine, self.kind)
            return mine
        return scenario(self.target())

    def exchange(
        self,
        raw: bytes,
        listener: str = "listener_port",
        check_close: bool = False,
        method: str | None = None,
    ) -> Observation:
        return self.run(lambda t: t.exchange(raw, listener, check_close, method))

    @property
    def ups(self) -> Upstreams:
        return self.stack.ups

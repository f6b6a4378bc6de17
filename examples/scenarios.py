"""The requests the demo sends through the proxy, and what each one is expected to get back.

A `Scenario` is one request (Host, path, extra header) plus its expectation: the status, who
answers (an app `service version`, or the proxy itself for local replies) and a body fragment.
Expectations follow what Envoy does with examples/bookinfo.yaml; `run_scenario` reports a mismatch
as a problem string rather than raising, so the summary can show every scenario.

The client is stdlib `http.client` over loopback with a per-request timeout; `Client` keeps one
connection open across requests (as a real app would) and reconnects once if the proxy closed it."""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

PROXY = "proxy"  # `answered_by` of a local reply: no app saw the request
REQUEST_TIMEOUT = 5.0  # seconds; every request through the proxy is bounded by this


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lowercase names; repeated headers joined with ", "
    body: bytes

    @property
    def answer(self) -> dict[str, object] | None:
        """The app's JSON answer, or None for a local reply (plain text from the proxy)."""
        try:
            doc = json.loads(self.body)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) and "service" in doc else None

    @property
    def answered_by(self) -> str:
        doc = self.answer
        return PROXY if doc is None else f"{doc['service']} {doc.get('version', '?')}"

    @property
    def seen(self) -> dict[str, str]:
        """What the app saw of the request (path, host, echoed headers)."""
        doc = self.answer
        seen = doc.get("seen") if doc else None
        return seen if isinstance(seen, dict) else {}

    def snippet(self, limit: int = 100) -> str:
        if not self.body:
            return "(empty body)"
        text = " ".join(self.body.decode("utf-8", "replace").split())
        return text if len(text) <= limit else text[: limit - 3] + "..."


class Client:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._conn: http.client.HTTPConnection | None = None

    def get(self, host: str, path: str, headers: dict[str, str], timeout: float) -> Response:
        for attempt in (1, 2):
            fresh = self._conn is None
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            conn = self._conn
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request("GET", path, headers={"Host": host, **headers})
                resp = conn.getresponse()
                body = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                # A reused connection may have been closed by the proxy while idle: retry once
                # on a new one (GET is idempotent).  A fresh connection failing is an answer.
                if fresh or attempt == 2:
                    raise
                continue
            except BaseException:
                self.close()
                raise
            merged: dict[str, str] = {}
            for name, value in resp.getheaders():
                key = name.lower()
                merged[key] = f"{merged[key]}, {value}" if key in merged else value
            if resp.will_close:
                self.close()
            return Response(resp.status, merged, body)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    host: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    listener: str = "http"  # "http" or "tcp" (the tcp_proxy listener)
    status: int = 200
    answered_by: str = PROXY
    body_has: str = ""
    # Extra check on the response: None when fine, else what is wrong.
    verify: Callable[[Response], str | None] | None = None
    # What to show in the summary's last column (default: a body snippet).
    detail: Callable[[Response], str] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    scenario: Scenario
    response: Response | None
    problem: str | None  # None when the response met every expectation
    detail: str


def run_scenario(client: Client, sc: Scenario, timeout: float) -> Outcome:
    try:
        resp = client.get(sc.host, sc.path, sc.headers, timeout)
    except (OSError, http.client.HTTPException) as exc:
        return Outcome(sc, None, f"request failed: {exc!r}", f"error: {type(exc).__name__}")
    problems = []
    if resp.status != sc.status:
        problems.append(f"status {resp.status}, expected {sc.status}")
    if resp.answered_by != sc.answered_by:
        problems.append(f"answered by {resp.answered_by}, expected {sc.answered_by}")
    if sc.body_has and sc.body_has.encode() not in resp.body:
        problems.append(f"body lacks {sc.body_has!r}: {resp.snippet()!r}")
    extra = sc.verify(resp) if sc.verify else None
    if extra:
        problems.append(extra)
    detail = sc.detail(resp) if sc.detail else resp.snippet()
    return Outcome(sc, resp, "; ".join(problems) or None, detail)


def run_split(client: Client, host: str, path: str, count: int, deadline: float) -> Counter[str]:
    """Send `count` identical requests; count who answered (`reviews v1`...) and any failures.
    Requests not sent by `deadline` (time.monotonic) are counted as `not sent (out of time)`."""
    tally: Counter[str] = Counter()
    for i in range(count):
        left = deadline - time.monotonic()
        if left <= 0:
            tally["not sent (out of time)"] += count - i
            break
        try:
            resp = client.get(host, path, {}, min(REQUEST_TIMEOUT, left))
        except (OSError, http.client.HTTPException) as exc:
            tally[f"error {type(exc).__name__}"] += 1
            continue
        tally[resp.answered_by if resp.status == 200 else f"status {resp.status}"] += 1
    return tally


# -- the bookinfo scenarios -------------------------------------------------------------------------
_REWRITTEN_HOST = "productpage.bookinfo.svc.cluster.local"  # host_rewrite_literal in bookinfo.yaml


def _header(name: str) -> Callable[[Response], str]:
    return lambda r: f"response {name}: {r.headers.get(name, '(missing)')}"


def _has_header(name: str) -> Callable[[Response], str | None]:
    return lambda r: None if name in r.headers else f"response lacks {name}"


def _rewrite_problem(r: Response) -> str | None:
    seen = r.seen
    if seen.get("path") != "/products/0" or seen.get("host") != _REWRITTEN_HOST:
        return f"app saw {seen.get('path')!r} Host {seen.get('host')!r}"
    return None


def _seen(*keys: str) -> Callable[[Response], str]:
    return lambda r: "app saw " + " ".join(f"{k}={r.seen.get(k, '(none)')}" for k in keys)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "virtual host by Host",
        "productpage",
        "/productpage",
        answered_by="productpage v1",
        verify=_has_header("x-demo-mesh"),
        detail=_header("x-demo-mesh"),
    ),
    Scenario(
        "Host with port",
        "details:9080",
        "/details/0",
        answered_by="details v1",
        verify=lambda r: None if r.seen.get("x-demo-caller") else "app did not get x-demo-caller",
        detail=_seen("x-demo-caller"),
    ),
    Scenario(
        "header match",
        "reviews",
        "/reviews/0",
        {"end-user": "jason"},
        answered_by="reviews v2",
        detail=lambda r: f"stars={(r.answer or {}).get('stars')}",
    ),
    Scenario(
        "prefix+host rewrite",
        "productpage",
        "/api/v1/products/0",
        answered_by="productpage v1",
        verify=_rewrite_problem,
        detail=_seen("path", "host"),
    ),
    Scenario("direct_response", "productpage", "/healthz", body_has="ok"),
    Scenario(
        "redirect",
        "productpage",
        "/old",
        status=301,
        verify=lambda r: (
            None
            if r.headers.get("location", "").endswith("/productpage")
            else f"location {r.headers.get('location')!r}"
        ),
        detail=_header("location"),
    ),
    Scenario("no virtual host", "unknown", "/productpage", status=404),
    Scenario("no endpoints", "details", "/details/v2/0", status=503, body_has="no healthy upstream"),
    Scenario("dead endpoint", "ratings", "/ratings/v2/0", status=503, body_has="upstream connect error"),
    Scenario(
        "route timeout 0.5s", "ratings", "/ratings/slow", status=504, body_has="upstream request timeout"
    ),
    Scenario(
        "plain route",
        "ratings:9080",
        "/ratings/0",
        answered_by="ratings v1",
        detail=lambda r: f"ratings={json.dumps((r.answer or {}).get('ratings'))}",
    ),
    Scenario(
        "tcp_proxy",
        "details",
        "/details/0",
        listener="tcp",
        answered_by="details v1",
        verify=lambda r: "tcp_proxy added a header" if r.seen.get("x-demo-caller") else None,
        detail=_seen("x-demo-caller"),
    ),
)

# reviews-50-v3: no end-user header, so the weighted route splits reviews-v1 50 / reviews-v3 50.
SPLIT_HOST, SPLIT_PATH = "reviews", "/reviews/0"
SPLIT_EXPECTED = ("reviews v1", "reviews v3")

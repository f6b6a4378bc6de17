"""/stats and /stats/prometheus: the stat rows, the server.* gauges computed at scrape time, and
Envoy's query parameters (usedonly, filter, invert_filter, type, format).

pilot-agent's readiness probe reads
`/stats?usedonly&filter=^(server.state|listener_manager.workers_started)` and the xDS
update_success counters; the server.* gauges here are always "used", as Envoy sets them at
start-up (source/server/server.cc)."""

from __future__ import annotations

import html
import os
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import re2

from sidecar.admin.context import SERVER_STATES, AdminContext
from sidecar.admin.prometheus import TagProducer, Tags
from sidecar.admin.prometheus import render as render_prometheus
from sidecar.admin.protojson import bootstrap_of
from sidecar.admin.request import HTML, TEXT, Request, Response, json_response, text
from sidecar.observe.stats import Stats

# Envoy prints this when no certificate is loaded (uint32 max).
NO_CERT_DAYS = 4294967295

_TYPES = {"All": None, "Counters": "counter", "Gauges": "gauge", "Histograms": "", "TextReadouts": ""}
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


class Row(NamedTuple):
    name: str
    kind: str  # "counter" | "gauge"
    value: int
    used: bool


def effective_state(ctx: AdminContext) -> str:
    """Envoy's server state: a LIVE server that fails health checks reports DRAINING."""
    state = ctx.state if ctx.state in SERVER_STATES else "INITIALIZING"
    if state == "LIVE" and not ctx.healthy:
        return "DRAINING"
    return state


def memory_bytes() -> tuple[int, int]:
    """(resident set size, data segment size) of this process, from /proc/self/statm."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[1]) * page, int(fields[5]) * page
    except (OSError, ValueError, IndexError):
        return 0, 0


def server_rows(ctx: AdminContext) -> list[Row]:
    state = effective_state(ctx)
    rss, data = memory_bytes()
    values = {
        "listener_manager.workers_started": 1 if ctx.workers_started else 0,
        "server.concurrency": ctx.concurrency,
        "server.days_until_first_cert_expiring": NO_CERT_DAYS,
        "server.hot_restart_epoch": 0,
        "server.live": 1 if state == "LIVE" else 0,
        "server.memory_allocated": rss,
        "server.memory_heap_size": data,
        "server.memory_physical_size": rss,
        "server.state": SERVER_STATES[state],
        "server.uptime": max(0, int(ctx.now() - ctx.start_time)),
    }
    return [Row(name, "gauge", value, True) for name, value in values.items()]


def collect(ctx: AdminContext, baseline: dict[str, int]) -> list[Row]:
    """Every counter and gauge, sorted by name; counters less their /reset_counters baseline."""
    computed = server_rows(ctx)
    names = {r.name for r in computed}
    stats = ctx.stats
    # Stats.used is "the summed value is not 0": skip the second read when that is what it does.
    plain_used = type(stats).used is Stats.used
    rows = computed
    for name, kind, raw in stats.items():
        if name in names:
            continue
        value = raw - baseline.get(name, 0) if kind == "counter" and baseline else raw
        used = raw != 0 if plain_used else (raw != 0 or stats.used(name))
        rows.append(Row(name, kind, value, used))
    rows.sort()
    return rows


def compile_filter(pattern: str) -> re2._Regexp | str:
    """The compiled RE2 regex, or Envoy's error text."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as e:
        detail = e.args[0] if e.args else b""
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        return f"Invalid re2 regex: {detail}"


def _select(rows: list[Row], req: Request, kind: str | None) -> Iterator[Row] | str:
    q = req.query
    regex = None
    if q.get("filter"):
        compiled = compile_filter(q["filter"])
        if isinstance(compiled, str):
            return compiled
        regex = compiled
    used_only = "usedonly" in q
    invert = "invert_filter" in q

    def gen() -> Iterator[Row]:
        for row in rows:
            if kind is not None and row.kind != kind:
                continue
            if used_only and not row.used:
                continue
            if regex is not None and (regex.search(row.name) is None) != invert:
                continue
            yield row

    return gen()


class StatsPages:
    """Handlers for /stats and /stats/prometheus (and POST /reset_counters' baseline)."""

    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx
        self.baseline: dict[str, int] = {}
        self._producer: TagProducer | None = None
        self._producer_key: object = None

    def reset_counters(self) -> None:
        """Envoy's /reset_counters zeroes counters; ours zeroes what the admin shows by
        remembering each counter's value now (the shared counters keep counting)."""
        for name, kind, value in self.ctx.stats.items():
            if kind == "counter":
                self.baseline[name] = value

    def producer(self) -> TagProducer:
        cfg = bootstrap_of(self.ctx.snapshot).get("stats_config")
        if self._producer is None or self._producer_key is not cfg:
            self._producer = TagProducer(cfg if isinstance(cfg, Mapping) else None)
            self._producer_key = cfg
        return self._producer

    def stats(self, req: Request) -> Response:
        q = req.query
        fmt = q.get("format", "text")
        if fmt not in ("text", "json", "prometheus", "html", "active-html"):
            return text("usage: /stats?format=(html|active-html|json|prometheus|text)\n\n", 400)
        if fmt == "prometheus":
            return self.prometheus(req)
        type_name = q.get("type", "All")
        if type_name not in _TYPES:
            return text("invalid &type= param", 400)
        kind = _TYPES[type_name]
        rows = collect(self.ctx, self.baseline) if kind != "" else []
        selected = _select(rows, req, kind)
        if isinstance(selected, str):
            return text(selected, 400)
        if fmt == "json":
            return json_response({"stats": [{"name": r.name, "value": r.value} for r in selected]}, False)
        body = "".join(f"{r.name}: {r.value}\n" for r in selected)
        if fmt in ("html", "active-html"):
            page = f"<!DOCTYPE html>\n<html><body><pre>{html.escape(body)}</pre></body></html>\n"
            return text(page, content_type=HTML)
        return text(body)

    def prometheus(self, req: Request) -> Response:
        rows = collect(self.ctx, self.baseline)
        selected = _select(rows, req, None)
        if isinstance(selected, str):
            return text(selected, 400)
        producer = self.producer()
        tags_of = getattr(self.ctx.stats, "tags_of", None)
        entries: list[tuple[str, str, int, str, Tags]] = []
        for r in selected:
            explicit = tags_of(r.name) if tags_of is not None else None
            extracted, tags = explicit if explicit is not None else producer.produce(r.name)
            entries.append((r.name, r.kind, r.value, extracted, tags))
        return Response(200, render_prometheus(entries).encode(), TEXT)

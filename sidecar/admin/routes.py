"""The admin endpoint table: paths, help text, POST-only rules, and the small handlers.

Envoy's rules copied here (source/server/admin/admin.cc): a mutating endpoint answers any method
but POST with 405 "Method X not allowed, POST required."; an unknown path gets 404 with "invalid
path. " and the help text; query parameters may also come as a form-encoded POST body."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sidecar.admin import config_dump, info
from sidecar.admin.context import AdminContext
from sidecar.admin.request import HTML, TEXT, Request, Response, json_response, parse_query, text
from sidecar.admin.stats_pages import StatsPages, effective_state

Handler = Callable[[Request], "Response | Awaitable[Response]"]

LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")
_LOGGING_USAGE = (
    "usage: /logging?<name>=<level> (change single level)\n"
    "usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n"
    "usage: /logging?level=<level> (change all levels)\n"
    "usage: /logging?group=<group_name>:<level> (change group of loggers)\n"
    "levels: " + "".join(level + " " for level in LEVELS) + "\n"
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    help: str
    handler: Handler
    post_only: bool = False
    params: tuple[tuple[str, str], ...] = ()


async def _call(result: object) -> None:
    """Await a context callback's result when it is awaitable (callbacks may be sync or async)."""
    if inspect.isawaitable(result):
        await result


class Router:
    """Maps a Request to a Response for one AdminContext."""

    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx
        self.stats = StatsPages(ctx)
        c = ctx
        self.endpoints: tuple[Endpoint, ...] = (
            Endpoint("/", "Admin home page", self._home),
            Endpoint("/certs", "print certs on machine", lambda r: json_response({"certificates": []})),
            Endpoint(
                "/clusters",
                "upstream cluster status",
                lambda r: info.clusters(c, r),
                params=(("filter", "Regular expression (Google re2) for filtering clusters by name"),),
            ),
            Endpoint(
                "/config_dump",
                "dump current Envoy configs",
                lambda r: config_dump.handle(c, r),
                params=(
                    ("resource", "The resource to dump"),
                    (
                        "mask",
                        "The mask to apply. When both resource and mask are specified, the mask is applied "
                        "to every element in the desired repeated field so that only a subset of fields are "
                        "returned. The mask is parsed as a Protobuf::FieldMask",
                    ),
                    (
                        "name_regex",
                        "Dump only the currently loaded configurations whose names match the "
                        "specified regex. Can be used with both resource and mask query parameters.",
                    ),
                    (
                        "include_eds",
                        "Dump currently loaded configuration including EDS. See the response "
                        "definition for more information",
                    ),
                ),
            ),
            Endpoint(
                "/drain_listeners",
                "drain listeners",
                self._drain,
                post_only=True,
                params=(
                    (
                        "graceful",
                        "When draining listeners, enter a graceful drain period prior to closing "
                        "listeners. This behaviour and duration is configurable via server options or CLI",
                    ),
                    (
                        "skip_exit",
                        "When draining listeners, drain the connections but never stop the "
                        "listeners. The graceful parameter has no effect when this is set, since the drain "
                        "period only delays stopping the listeners",
                    ),
                    (
                        "inboundonly",
                        "Drains all inbound listeners. traffic_direction field in "
                        "envoy_v3_api_msg_config.listener.v3.Listener is used to determine whether a listener "
                        "is inbound or outbound.",
                    ),
                ),
            ),
            Endpoint("/healthcheck/fail", "cause the server to fail health checks", self._hc_fail, True),
            Endpoint("/healthcheck/ok", "cause the server to pass health checks", self._hc_ok, True),
            Endpoint("/help", "print out list of admin commands", lambda r: text(self.help_text())),
            Endpoint(
                "/hot_restart_version",
                "print the hot restart compatibility version",
                lambda r: text("disabled"),
            ),
            Endpoint(
                "/listeners",
                "print listener info",
                lambda r: info.listeners(c, r),
                params=(("format", "File format to use; One of (text, json)"),),
            ),
            Endpoint(
                "/logging",
                "query/change logging levels",
                self._logging,
                post_only=True,
                params=(
                    (
                        "paths",
                        "Change multiple logging levels by setting to "
                        "<logger_name1>:<desired_level1>,<logger_name2>:<desired_level2>.",
                    ),
                    (
                        "group",
                        "Change given logger group to desired level, set to "
                        "<logger_group_name>:<desired_level>. logger_group_name must be a logger name.",
                    ),
                    (
                        "level",
                        "desired logging level, this will change all loggers's level; One of (, "
                        + ", ".join(LEVELS)
                        + ")",
                    ),
                ),
            ),
            Endpoint("/memory", "print current allocation/heap usage", lambda r: info.memory(c, r)),
            Endpoint("/quitquitquit", "exit the server", self._quit, True),
            Endpoint("/ready", "print server state, return 200 if LIVE, otherwise return 503", self._ready),
            Endpoint("/reopen_logs", "reopen access logs", lambda r: text("OK\n"), True),
            Endpoint("/reset_counters", "reset all counters to zero", self._reset_counters, True),
            Endpoint(
                "/runtime", "print runtime values", lambda r: json_response({"layers": [], "entries": {}})
            ),
            Endpoint(
                "/server_info", "print server version/status information", lambda r: info.server_info(c, r)
            ),
            Endpoint(
                "/stats",
                "print server stats",
                self.stats.stats,
                params=(
                    ("usedonly", "Only include stats that have been written by system since restart"),
                    ("filter", "Regular expression (Google re2) for filtering stats"),
                    ("invert_filter", "Invert the filter regex"),
                    ("format", "Format to use; One of (html, active-html, text, json)"),
                    (
                        "type",
                        "Stat types to include.; One of (All, Counters, Histograms, Gauges, TextReadouts)",
                    ),
                ),
            ),
            Endpoint(
                "/stats/prometheus",
                "print server stats in prometheus format",
                self.stats.prometheus,
                params=(
                    ("usedonly", "Only include stats that have been written by system since restart"),
                    ("filter", "Regular expression (Google re2) for filtering stats"),
                    ("invert_filter", "Invert the filter regex"),
                ),
            ),
        )
        self._by_path = {e.path: e for e in self.endpoints}

    # -- dispatch ---------------------------------------------------------------------------------
    def help_text(self) -> str:
        lines = ["admin commands are:\n"]
        for e in self.endpoints:
            lines.append(f"  {e.path}{' (POST)' if e.post_only else ''}: {e.help}\n")
            lines.extend(f"      {name}: {desc}\n" for name, desc in e.params)
        return "".join(lines)

    async def dispatch(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        path, _, raw_query = target.partition("?")
        query = parse_query(raw_query)
        if method == "POST" and headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            for k, v in parse_query(body.decode("latin-1").replace("+", " ")).items():
                query.setdefault(k, v)
        endpoint = self._by_path.get(path)
        if endpoint is None:
            return text("invalid path. " + self.help_text(), 404)
        if endpoint.post_only and method != "POST":
            return text(f"Method {method} not allowed, POST required.", 405)
        result = endpoint.handler(Request(method, path, query, headers, body))
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, Response)
        return result

    # -- small handlers -----------------------------------------------------------------------------
    def _home(self, req: Request) -> Response:
        rows = "".join(
            f"<tr><td><a href='{e.path.lstrip('/') or '.'}'>{e.path}</a></td><td>{e.help}</td></tr>\n"
            for e in self.endpoints
        )
        page = (
            "<!DOCTYPE html>\n<html lang='en'>\n<head><title>Envoy Admin</title></head>\n<body>\n"
            f"<table>\n{rows}</table>\n</body>\n</html>\n"
        )
        return text(page, content_type=HTML)

    def _ready(self, req: Request) -> Response:
        state = effective_state(self.ctx)
        return text(state + "\n", 200 if state == "LIVE" else 503)

    async def _hc_fail(self, req: Request) -> Response:
        await _call(self.ctx.healthcheck_fail())
        return text("OK\n")

    async def _hc_ok(self, req: Request) -> Response:
        await _call(self.ctx.healthcheck_ok())
        return text("OK\n")

    def _drain(self, req: Request) -> Response:
        inbound_only, graceful = "inboundonly" in req.query, "graceful" in req.query
        # Envoy answers at once; the drain runs on after the reply.
        return Response(200, b"OK\n", TEXT, after=lambda: self.ctx.drain_listeners(inbound_only, graceful))

    def _quit(self, req: Request) -> Response:
        return Response(200, b"OK\n", TEXT, after=self.ctx.quit)

    def _reset_counters(self, req: Request) -> Response:
        self.stats.reset_counters()
        return text("OK\n")

    def _loggers_text(self) -> str:
        return (
            "active loggers:\n" + "".join(f"  {n}: {lvl}\n" for n, lvl in self.ctx.loggers().items()) + "\n"
        )

    async def _logging(self, req: Request) -> Response:
        q = req.query
        if len(q) > 1:
            return self._logging_error("invalid number of parameters")
        level: str | None = None
        paths: dict[str, str] = {}
        known = self.ctx.loggers()
        for key, value in q.items():
            if key == "level":
                if not value:
                    return self._logging_error("empty logger name or empty logger level")
                level = value
            elif key in ("paths", "group"):
                for item in filter(None, value.split(",")):
                    name, _, lvl = item.partition(":")
                    if not name or not lvl:
                        return self._logging_error("empty logger name or empty logger level")
                    paths[name] = lvl
            else:
                paths[key] = value
        if (level is not None and level not in LEVELS) or any(v not in LEVELS for v in paths.values()):
            return self._logging_error("unknown logger level")
        if any(name not in known for name in paths):
            return self._logging_error("unknown logger name")
        if level is not None or paths:
            await _call(self.ctx.set_log_level(level, paths))
        return text(self._loggers_text())

    def _logging_error(self, message: str) -> Response:
        return text(f"error: {message}\n\n{_LOGGING_USAGE}{self._loggers_text()}", 400)

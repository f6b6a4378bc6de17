"""The demo's printed summary: aligned tables of scenarios, the weighted split and admin /stats.

Only formatting lives here; what was sent and what was expected is in scenarios.py.  Stats come
from the proxy's admin `/stats` text (`name: value` lines, Envoy's format); any stat the proxy does
not report shows as `-`, so the summary works with a partial implementation too."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from examples.scenarios import Outcome

MISSING = "-"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    body = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in body) for i in range(len(header))]
    lines = []
    for r in body:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)] + [r[-1]]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def scenario_lines(outcomes: Sequence[Outcome]) -> list[str]:
    rows = []
    for o in outcomes:
        sc, resp = o.scenario, o.response
        sent = "; ".join(f"{k}: {v}" for k, v in sc.headers.items()) or MISSING
        where = "tcp " if sc.listener == "tcp" else ""
        rows.append(
            [
                "ok" if o.problem is None else "FAIL",
                sc.name,
                where + sc.host,
                sc.path,
                sent,
                str(resp.status) if resp else MISSING,
                resp.answered_by if resp else MISSING,
                o.detail,
            ]
        )
    lines = table(["", "scenario", "Host", "path", "header", "status", "answered by", "detail"], rows)
    # Reasons go under the table so that the columns stay aligned.
    for o in outcomes:
        if o.problem:
            lines.append(f"  FAIL {o.scenario.name}: {o.problem}")
    return lines


def split_lines(tally: Counter[str], expected: Sequence[str]) -> list[str]:
    total = sum(tally.values()) or 1
    names = [*expected, *sorted(k for k in tally if k not in expected)]
    rows = [[n, str(tally.get(n, 0)), f"{100.0 * tally.get(n, 0) / total:5.1f}%"] for n in names]
    return table(["answered by", "count", "share"], rows)


def parse_stats(text: str) -> dict[str, int]:
    """Envoy's plain /stats: `name: 123` per line; histogram lines (`P0(...)`) are skipped."""
    stats: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.rpartition(": ")
        if sep and value.strip().lstrip("-").isdigit():
            stats[name.strip()] = int(value)
    return stats


_CLUSTER_COLUMNS = (
    ("cx", "upstream_cx_total"),
    ("rq", "upstream_rq_total"),
    ("2xx", "upstream_rq_2xx"),
    ("5xx", "upstream_rq_5xx"),
    ("timeout", "upstream_rq_timeout"),
    ("connect_fail", "upstream_cx_connect_fail"),
    ("none_healthy", "upstream_cx_none_healthy"),
)
_HTTP_STATS = (
    "downstream_rq_total",
    "downstream_rq_2xx",
    "downstream_rq_3xx",
    "downstream_rq_4xx",
    "downstream_rq_5xx",
    "no_route",
    "rq_direct_response",
    "rq_redirect",
)
_TCP_STATS = ("downstream_cx_total", "upstream_flush_total")


def _get(stats: Mapping[str, int], name: str) -> str:
    return str(stats[name]) if name in stats else MISSING


def stats_lines(
    stats: Mapping[str, int],
    http_prefixes: Sequence[str],
    tcp_prefixes: Sequence[str],
    clusters: Sequence[str],
) -> list[str]:
    if not stats:
        return ["  (admin /stats returned nothing usable)"]
    rows = [
        [f"http.{p}", "  ".join(f"{s}={_get(stats, f'http.{p}.{s}')}" for s in _HTTP_STATS)]
        for p in http_prefixes
    ]
    rows += [
        [f"tcp.{p}", "  ".join(f"{s}={_get(stats, f'tcp.{p}.{s}')}" for s in _TCP_STATS)]
        for p in tcp_prefixes
    ]
    lines = table(["stat prefix", "counters"], rows)
    lines.append("")
    crow = [[c, *[_get(stats, f"cluster.{c}.{s}") for _, s in _CLUSTER_COLUMNS]] for c in clusters]
    lines += table(["cluster", *[h for h, _ in _CLUSTER_COLUMNS]], crow)
    lines.append(
        "  (cluster columns: upstream_cx_total, upstream_rq_total/_2xx/_5xx/_timeout, "
        "upstream_cx_connect_fail, upstream_cx_none_healthy)"
    )
    return lines


def live_lines(phases: Sequence[tuple[str, Counter[str]]], answers: Sequence[str]) -> list[str]:
    """One row per phase of the live-change act: requests, then a count per app, then errors."""
    rows = []
    for label, tally in phases:
        errors = sum(n for who, n in tally.items() if who not in answers)
        rows.append([label, str(sum(tally.values())), *[str(tally.get(a, 0)) for a in answers], str(errors)])
    return table(["phase", "requests", *answers, "errors"], rows)


_XDS_STATS = (
    ("lds", "listener_manager.lds.update_success"),
    ("cds", "cluster_manager.cds.update_success"),
    ("rds live", "http.live_http.rds.live.update_success"),
    ("eds reviews-v2", "cluster.reviews-v2.update_success"),
)


def xds_stats_line(stats: Mapping[str, int]) -> str:
    """The update_success counters of the live act's xDS subscriptions ('-' when not reported)."""
    return "  ".join(f"{label} updates={_get(stats, name)}" for label, name in _XDS_STATS)

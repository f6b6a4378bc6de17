"""Prometheus exposition of Envoy-named stats: tag extraction and the text format.

Envoy keeps flat stat names ("cluster.backend.upstream_cx_total") and derives Prometheus labels
from them with tag extractors (source/common/config/well_known_names.cc, default set; plus the
bootstrap's stats_config.stats_tags).  An extractor either matches a regex whose first group is
the text to cut from the name and whose second group (or the first) is the tag value, or a dot
token pattern ("cluster.$.**": `$` is the value, `*` one token, `**` one or more).  Every
extractor looks at the original name; the cut spans are removed together at the end
(tag_producer_impl.cc).  Extractors whose regex starts with "^word\\." only see names whose first
token is "word"; they run after the ones without such a prefix, which fixes the label order.

Pure: no I/O.  Regexes use Python's `re` (Envoy compiles custom stats_tags with std::regex, and
Istio's use lookahead, which RE2 lacks)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Tags = tuple[tuple[str, str], ...]

_TAG_VALUE = r"[^\.]+"
_EXPANSIONS = {
    "<ADDRESS>": r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)",
    "<CIPHER>": r"[\w-]+",
    "<TLS_VERSION>": r"TLSv\d\.\d",
    "<TAG_VALUE>": _TAG_VALUE,
    "<ROUTE_CONFIG_NAME>": r"[\w\-\.]+",
    "<LISTENER_OR_CLUSTER_WITH_NAME>": r"(?:listener|cluster)\..*?",
}

# (tag name, regex, substring pre-check, value that disqualifies), in Envoy's order.
_DEFAULT_REGEXES: tuple[tuple[str, str, str, str], ...] = (
    ("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_", ""),
    ("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_", ""),
    (
        "envoy.dynamo_partition_id",
        r"^http\.<TAG_VALUE>\.dynamodb\.table\.<TAG_VALUE>\.capacity\.<TAG_VALUE>(\.__partition_id=(\w{7}))$",
        ".dynamodb.table.",
        "",
    ),
    (
        "envoy.dynamo_operation",
        r"^http\.<TAG_VALUE>\.dynamodb.(?:operation|table\.<TAG_VALUE>\.capacity)(\.(<TAG_VALUE>))(?:\.|$)",
        ".dynamodb.",
        "",
    ),
    (
        "envoy.dynamo_table",
        r"^http\.<TAG_VALUE>\.dynamodb.(?:table|error)\.((<TAG_VALUE>)\.)",
        ".dynamodb.",
        "",
    ),
    ("envoy.ssl_cipher", r"^listener\..*?\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers.", ""),
    ("envoy.ssl_curve", r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.curves(\.(<CIPHER>))$", ".ssl.curves.", ""),
    (
        "envoy.ssl_sigalg",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.sigalgs(\.(<CIPHER>))$",
        ".ssl.sigalgs.",
        "",
    ),
    (
        "envoy.ssl_version",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.versions(\.(<TLS_VERSION>))$",
        ".ssl.versions.",
        "",
    ),
    ("cipher_suite", r"^cluster\.<TAG_VALUE>\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers.", ""),
    ("envoy.http_conn_manager_prefix", r"^listener\..*?\.http\.((<TAG_VALUE>)\.)", ".http.", ""),
    (
        "envoy.worker_id",
        # thread_local_cluster_manager too: Envoy 1.40 tags it (observed on the binary)
        r"^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)\.|server\.|listener_manager\.|thread_local_cluster_manager\.)"
        r"worker_((\d+)\.)",
        "",
        "",
    ),
    ("envoy.listener_address", r"^listener\.((<ADDRESS>|<TAG_VALUE>)\.)", "", "admin"),
    ("envoy.rds_route_config", r"^http\.<TAG_VALUE>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$", ".rds.", ""),
)

_DEFAULT_TOKENS: tuple[tuple[str, str], ...] = (
    ("envoy.mongo_callsite", "mongo.*.collection.*.callsite.$.query.**"),
    ("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    ("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    ("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    ("envoy.http_user_agent", "http.*.user_agent.$.**"),
    ("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    ("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    ("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    ("envoy.tcp_prefix", "tcp.$.**"),
    ("envoy.udp_prefix", "udp.$.**"),
    ("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    ("envoy.ratelimit_prefix", "ratelimit.$.**"),
    ("envoy.cluster_name", "cluster.$.**"),
    ("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
    ("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
    ("envoy.http_conn_manager_prefix", "http.$.**"),
    ("envoy.virtual_host", "vhost.$.**"),
    ("envoy.mongo_prefix", "mongo.$.**"),
    ("envoy.route", "vhost.*.route.$.**"),
    ("envoy.thrift_prefix", "thrift.$.**"),
    ("envoy.redis_prefix", "redis.$.**"),
    ("envoy.local_http_ratelimit_prefix", "$.http_local_rate_limit.**"),
    ("envoy.local_network_ratelimit_prefix", "local_rate_limit.$.**"),
    ("envoy.local_listener_ratelimit_prefix", "listener_local_ratelimit.$.**"),
    ("envoy.dns_filter_prefix", "dns_filter.$.**"),
)

# Stat namespaces printed without the "envoy_" prefix (Envoy's CustomStatNamespaces: Wasm
# registers "wasmcustom", Istio's stats filter "istiocustom").
CUSTOM_NAMESPACES = ("istiocustom", "wasmcustom")

_CACHE_MAX = 200_000
_PREFIX_RE = re.compile(r"^\^([A-Za-z0-9_]+)(?:\\\.|\(\?=\\\.\))")
_POSIX_CLASSES = {"[:digit:]": "0-9", "[:alpha:]": "a-zA-Z", "[:alnum:]": "a-zA-Z0-9", "[:space:]": r"\s"}


def _expand(regex: str) -> str:
    for key, value in _EXPANSIONS.items():
        regex = regex.replace(key, value)
    return regex


def _python_regex(regex: str) -> str:
    """std::regex (ECMAScript) accepts POSIX classes inside brackets; Python's `re` does not."""
    for key, value in _POSIX_CLASSES.items():
        regex = regex.replace(key, value)
    return regex


@dataclass(frozen=True, slots=True)
class _Extractor:
    name: str
    prefix: str  # first token a name must have, "" for any
    regex: re.Pattern[str] | None = None
    substr: str = ""
    negative: str = ""
    tokens: tuple[str, ...] = ()
    fixed: str | None = None

    def extract(self, name: str, tokens: Sequence[str]) -> tuple[str, int, int] | None:
        """(value, start, end of the span to cut) or None."""
        if self.fixed is not None:
            return self.fixed, 0, 0
        if self.regex is not None:
            if self.substr and self.substr not in name:
                return None
            m = self.regex.search(name)
            if m is None or m.re.groups < 1 or not m.group(1):
                return None
            # The value is the second group when there is one and it matched something.
            value = (m.group(2) if m.re.groups >= 2 else None) or m.group(1)
            if self.negative and value == self.negative:
                return None
            return value, m.start(1), m.end(1)
        return self._extract_tokens(tokens)

    def _extract_tokens(self, tokens: Sequence[str]) -> tuple[str, int, int] | None:
        found = _search_tokens(self.tokens, tokens, 0, 0, 0)
        if found is None or found[0] < 0:
            return None
        index, start = found
        value = tokens[index]
        end = start + len(value)
        if index < len(tokens) - 1:
            end += 1  # cut the dot after the value ("ab." at the start or middle)
        elif start > 0:
            start -= 1  # the value is last: cut the dot before it (".ef")
        return value, start, end


def _search_tokens(
    pattern: Sequence[str], tokens: Sequence[str], ti: int, pi: int, offset: int
) -> tuple[int, int] | None:
    """Match `pattern` against tokens[ti:].  None: no match; else (index of the token that `$`
    matched, its char offset), or (-1, 0) when `$` lies before pattern[pi]."""
    hit = (-1, 0)
    while ti < len(tokens) and pi < len(pattern):
        expected = pattern[pi]
        if expected == "$":
            hit = (ti, offset)
        elif expected == "**":
            if pi == len(pattern) - 1:
                return hit  # a trailing "**" swallows the rest (at least one token)
            # "**" in the middle: try every suffix for the rest of the pattern
            for start in range(ti, len(tokens)):
                sub = _search_tokens(pattern, tokens, start, pi + 1, offset)
                if sub is not None:
                    return sub if sub[0] >= 0 else hit
                offset += len(tokens[start]) + 1
            return None
        elif expected != "*" and expected != tokens[ti]:
            return None
        offset += len(tokens[ti]) + 1
        ti += 1
        pi += 1
    if ti == len(tokens) and pi == len(pattern):
        return hit
    return None


class TagProducer:
    """Turns a stat name into (tag-extracted name, tags), as Envoy's TagProducerImpl."""

    def __init__(self, stats_config: Mapping[str, object] | None = None) -> None:
        cfg = stats_config or {}
        self._without_prefix: list[_Extractor] = []
        self._by_prefix: dict[str, list[_Extractor]] = {}
        self._names: dict[str, int] = {}
        self.fixed: list[tuple[str, str]] = []
        # Stat names are few and stable: remember each one's result (bounded).
        self._cache: dict[str, tuple[str, Tags]] = {}
        if cfg.get("use_all_default_tags", cfg.get("useAllDefaultTags", True)) is not False:
            for name, regex, substr, negative in _DEFAULT_REGEXES:
                self._add_regex(name, _expand(regex), substr, negative)
            for name, pattern in _DEFAULT_TOKENS:
                self._add_tokens(name, pattern)
        specs = cfg.get("stats_tags", cfg.get("statsTags", ())) or ()
        for spec in specs if isinstance(specs, list | tuple) else ():
            self._add_spec(spec)

    def _add(self, ex: _Extractor) -> None:
        self._names[ex.name] = self._names.get(ex.name, 0) + 1
        if ex.prefix:
            self._by_prefix.setdefault(ex.prefix, []).append(ex)
        else:
            self._without_prefix.append(ex)

    def _add_regex(self, name: str, regex: str, substr: str = "", negative: str = "") -> None:
        m = _PREFIX_RE.match(regex)
        self._add(_Extractor(name, m.group(1) if m else "", re.compile(regex), substr, negative))

    def _add_tokens(self, name: str, pattern: str) -> None:
        tokens = tuple(pattern.split("."))
        prefix = tokens[0] if tokens[0] not in ("$", "*", "**") else ""
        self._add(_Extractor(name, prefix, tokens=tokens))

    def _add_spec(self, spec: object) -> None:
        if not isinstance(spec, Mapping):
            return
        name = str(spec.get("tag_name", spec.get("tagName", "")))
        if not name:
            return
        fixed = spec.get("fixed_value", spec.get("fixedValue"))
        if fixed is not None:
            self._add(_Extractor(name, "", fixed=str(fixed)))
            self.fixed.append((name, str(fixed)))
            return
        regex = str(spec.get("regex", ""))
        if regex:
            try:
                self._add_regex(name, _python_regex(regex))
            except re.error:
                return  # translate/ validates stats_tags; a bad one here only loses its label
            return
        # No regex: the default extractor(s) of that name.
        for dname, dregex, substr, negative in _DEFAULT_REGEXES:
            if dname == name:
                self._add_regex(dname, _expand(dregex), substr, negative)
        for dname, pattern in _DEFAULT_TOKENS:
            if dname == name:
                self._add_tokens(dname, pattern)

    def produce(self, name: str) -> tuple[str, Tags]:
        hit = self._cache.get(name)
        if hit is None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            hit = self._cache[name] = self._produce(name)
        return hit

    def _produce(self, name: str) -> tuple[str, Tags]:
        tokens = name.split(".")
        tags: list[tuple[str, str]] = []
        cuts: list[tuple[int, int]] = []
        seen: set[str] = set()
        candidates: Iterable[_Extractor] = self._without_prefix
        dot = name.find(".")
        if dot > 0:
            candidates = [*self._without_prefix, *self._by_prefix.get(name[:dot], ())]
        for ex in candidates:
            # Of several extractors with one tag name, the first that matches wins.
            if ex.name in seen:
                continue
            found = ex.extract(name, tokens)
            if found is None:
                continue
            value, start, end = found
            tags.append((ex.name, value))
            if self._names[ex.name] > 1:
                seen.add(ex.name)
            if end > start:
                cuts.append((start, end))
        return _cut(name, cuts), tuple(tags)


def _cut(name: str, cuts: list[tuple[int, int]]) -> str:
    if not cuts:
        return name
    keep = [True] * len(name)
    for start, end in cuts:
        for i in range(start, min(end, len(name))):
            keep[i] = False
    return "".join(c for c, k in zip(name, keep, strict=True) if k)


_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def sanitize_name(name: str) -> str:
    name = _BAD_NAME_CHARS.sub("_", name)
    return "_" + name if name[:1].isdigit() else name


def metric_name(extracted: str) -> str:
    """Envoy's PrometheusStatsFormatter::metricName: "envoy_" + sanitized name, unless the
    name is in a custom namespace, which is stripped instead."""
    for ns in CUSTOM_NAMESPACES:
        if extracted.startswith(ns + "."):
            return sanitize_name(extracted[len(ns) + 1 :])
    return "envoy_" + sanitize_name(extracted)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(
    entries: Iterable[tuple[str, str, int, str, Tags]],
) -> str:
    """The exposition text for (name, kind, value, tag-extracted name, tags) entries: counters
    first, then gauges; each metric once with its # TYPE line, metrics ordered by tag-extracted
    name and series by full stat name (as Envoy prints them)."""
    names: dict[str, str] = {}  # tag-extracted name -> metric name
    groups: dict[tuple[str, str], list[tuple[str, int, Tags]]] = {}  # (kind, metric) -> series
    first: dict[tuple[str, str], str] = {}  # (kind, metric) -> tag-extracted name that made it
    for name, kind, value, extracted, tags in entries:
        metric = names.get(extracted)
        if metric is None:
            metric = names[extracted] = metric_name(extracted)
        key = (kind, metric)
        series = groups.get(key)
        if series is None:
            series = groups[key] = []
            first[key] = extracted
        series.append((name, value, tags))
    out: list[str] = []
    for kind in ("counter", "gauge"):
        for _, key in sorted((first[k], k) for k in groups if k[0] == kind):
            metric = key[1]
            out.append(f"# TYPE {metric} {kind}\n")
            for _, value, tags in sorted(groups[key], key=_by_name):
                if tags:
                    labels = ",".join(f'{sanitize_name(k)}="{_label_value(v)}"' for k, v in tags)
                    out.append(f"{metric}{{{labels}}} {value}\n")
                else:
                    out.append(f"{metric}{{}} {value}\n")
    return "".join(out)


def _by_name(series: tuple[str, int, Tags]) -> str:
    return series[0]

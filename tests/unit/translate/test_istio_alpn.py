"""istio.alpn as istiod sends it (an Any of Istio's FilterConfig as raw bytes, no descriptor here) and
in a TypedStruct: kept as the connection manager's upstream ALPN override, dropped from the filter
chain; a cluster's istio.alpn_override metadata "false" opts out."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from sidecar.model.istio import AlpnOverride
from sidecar.model.listener import HttpConnectionManager
from sidecar.translate.cds import translate_cluster
from sidecar.translate.lds import translate_listener
from tests.support import istio_config


def _hcms(lst: object) -> list[HttpConnectionManager]:
    out = []
    for chain in (*lst.filter_chains, lst.default_filter_chain):  # type: ignore[attr-defined]
        if chain is not None:
            out += [f for f in chain.filters if isinstance(f, HttpConnectionManager)]
    return out


def test_raw_filter_config_from_istiod() -> None:
    (hcm,) = _hcms(translate_listener(istio_config.outbound_http(), "", clusters=None))
    assert hcm.upstream_alpn == AlpnOverride(
        http10=("istio-http/1.0", "istio", "http/1.0"),
        http11=("istio-http/1.1", "istio", "http/1.1"),
        http2=("istio-h2", "istio", "h2"),
    )
    assert all("alpn" not in f.name for f in hcm.http_filters)
    # Inbound connection managers have no istio.alpn: the clusters' own ALPN applies.
    inbound = translate_listener(istio_config.virtual_inbound(), "", clusters=None)
    assert {h.upstream_alpn for h in _hcms(inbound)} == {None}


def test_cluster_metadata_opts_out() -> None:
    def cluster(md: dict[str, object]) -> cluster_pb2.Cluster:
        return json_format.ParseDict({"name": "c", "type": "STATIC", "metadata": md}, cluster_pb2.Cluster())

    assert translate_cluster(cluster({}), "c").istio_alpn_override is True
    off = {"filter_metadata": {"istio": {"alpn_override": "false"}}}
    assert translate_cluster(cluster(off), "c").istio_alpn_override is False
    on = {"filter_metadata": {"istio": {"alpn_override": "true", "default_original_port": 9080}}}
    assert translate_cluster(cluster(on), "c").istio_alpn_override is True

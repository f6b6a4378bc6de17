"""Istio-private filter configs that sidecar keeps in the model (the rest are skipped at translate
time: translate/istio.py says which and why).

Two are kept because they change what is on the wire: the TCP metadata exchange (a preamble both
peers write and read before the payload, l4/metadata_exchange.py), and istio.alpn's upstream ALPN
override (which ALPN an HTTP request's mTLS connection offers: an Envoy peer's inbound listener
picks its HTTP or TCP chain by it)."""

from __future__ import annotations

from dataclasses import dataclass

# The ALPN Istio negotiates on mTLS connections that carry the preamble.
PEER_EXCHANGE_ALPN = "istio-peer-exchange"


@dataclass(frozen=True, slots=True)
class MetadataExchange:
    """istio.metadata_exchange, type envoy.tcp.metadataexchange.config.MetadataExchange: a network
    filter on inbound chains (downstream side) or a cluster filter (upstream side, Istio 1.2x).
    The preamble runs only when the connection's negotiated ALPN equals `protocol`."""

    protocol: str = PEER_EXCHANGE_ALPN
    # Look the peer up by address when it sends no preamble (Istio's workload discovery, WDS):
    # sidecar has no WDS source, so this only records what istiod asked for.
    enable_discovery: bool = False
    # Extra node labels copied into the exchanged metadata.
    additional_labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AlpnOverride:
    """istio.alpn (istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig): the ALPN an HTTP
    request's upstream TLS connection offers instead of the cluster's, by the downstream protocol
    (Istio: istio-http/1.0|1.1 or istio-h2, then "istio", then the plain name).  Not applied to a
    cluster whose metadata says istio.alpn_override "false" (model.cluster.Cluster)."""

    http10: tuple[str, ...] = ()
    http11: tuple[str, ...] = ()
    http2: tuple[str, ...] = ()

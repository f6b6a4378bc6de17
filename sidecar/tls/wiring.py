"""TLS wiring of one worker: the SecretStore, the TlsProviders of listener filter chains and
clusters, their `ssl.*` stats, and the file polling that rotates certificates.

One `TlsWiring` per event loop (`wiring_for(loop, registry)`): the listener's accept path asks it
for a chain's provider (`server_provider`), the upstream pools for a host's TLS (`client_tls`).
Providers are made once per config object and kept while that config is current, so every
connection reads `provider.current` at accept/connect time and keeps it: a rotation builds new
contexts for new handshakes and never cuts an open connection.

Named secrets: bootstrap static_resources.secrets (`set_static`); SDS-delivered secrets go
through `store.set_secret(secret, version)` / `store.remove_secret(name)` (the hook the xDS
wiring needs); providers waiting on a name build their contexts when it arrives.

transport_socket_matches (Envoy's TransportSocketMatcherImpl::resolve): the matches are tried in
order against the endpoint's `envoy.transport_socket_match` metadata, then all again against its
locality's; a match needs every label present with an equal value (an empty label set matches
anything, even no metadata); none matching falls back to the cluster's transport_socket."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sidecar.model.cluster import Cluster
from sidecar.model.endpoint import Endpoint
from sidecar.model.listener import FilterChain, HttpConnectionManager, Listener
from sidecar.model.secret import Secret
from sidecar.model.tls import CommonTlsContext, TlsContext, UpstreamTlsContext
from sidecar.tls.handshake import ClientTls
from sidecar.tls.provider import TlsProvider
from sidecar.tls.secrets import SecretError, SecretStore, start_polling
from sidecar.tls.stats import TlsStats

log = logging.getLogger("sidecar.connection")

POLL_INTERVAL = 1.0  # seconds between re-reads of certificate files (Envoy watches with inotify)


class TlsNotReady(OSError):
    """The host wants TLS but its secrets have not arrived (or failed to build): connect fails."""


Labels = tuple[tuple[str, str], ...]


def labels_match(want: Labels, have: Labels | None) -> bool:
    """Config::Metadata::metadataLabelMatch(list_as_any=false) over canonical JSON values."""
    if not want:
        return True
    if have is None:
        return False
    got = dict(have)
    return all(got.get(k) == v for k, v in want)


class _ClusterTls:
    """One cluster config's providers: the default transport_socket and each match's."""

    __slots__ = ("config", "default", "make", "matches", "variants")

    def __init__(self, config: Cluster, make: Callable[[UpstreamTlsContext], TlsProvider]) -> None:
        self.config = config
        self.make = make
        # (id of the provider, ALPN) -> the same context offering another ALPN (istio.alpn).
        self.variants: dict[tuple[int, tuple[str, ...]], TlsProvider] = {}
        self.default = make(config.transport_socket) if config.transport_socket is not None else None
        self.matches: list[tuple[Labels, TlsProvider | None]] = []
        for m in config.transport_socket_matches:
            self.matches.append(
                (m.match, make(m.transport_socket) if m.transport_socket is not None else None)
            )

    def resolve(self, ep: Endpoint) -> TlsProvider | None:
        for labels, provider in self.matches:
            if labels_match(labels, ep.socket_match):
                return provider
        for labels, provider in self.matches:
            if labels_match(labels, ep.locality_socket_match):
                return provider
        return self.default

    def variant(self, provider: TlsProvider, alpn: tuple[str, ...]) -> TlsProvider:
        """`provider`'s context with alpn_protocols replaced (Envoy's ALPN override from filter
        state replaces the context's list for that connection)."""
        key = (id(provider), alpn)
        hit = self.variants.get(key)
        if hit is None:
            cfg = provider.config
            assert isinstance(cfg, UpstreamTlsContext)
            common = dataclasses.replace(cfg.common, alpn_protocols=alpn)
            hit = self.variants[key] = self.make(dataclasses.replace(cfg, common=common))
        return hit

    def providers(self) -> list[TlsProvider]:
        out = [p for _, p in self.matches if p is not None]
        out += self.variants.values()
        return out + ([self.default] if self.default is not None else [])


class TlsWiring:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        registry: Any = None,
        poll_interval: float = POLL_INTERVAL,
        store: SecretStore | None = None,
    ) -> None:
        self.loop = loop
        self.registry = registry  # sidecar.observe.stats.Stats (None: stats not published)
        self.store = store if store is not None else SecretStore(on_error=_secret_error)
        self._stats: dict[str, TlsStats] = {}
        # id(FilterChain) -> (the chain, its provider): the chain is kept so the id stays unique.
        self._chains: dict[int, tuple[FilterChain, TlsProvider]] = {}
        self._clusters: dict[str, _ClusterTls] = {}
        self._stop = start_polling(self.store, loop.call_later, poll_interval) if poll_interval > 0 else None

    # -- secrets --------------------------------------------------------------------------------
    def set_static(self, secrets: Mapping[str, Secret]) -> None:
        """bootstrap static_resources.secrets; one whose files cannot be read is logged and left
        out (its users stay warming), as a bad secret should not stop the others."""
        for secret in secrets.values():
            try:
                self.store.set_secret(secret)
            except SecretError as exc:
                log.warning("static secret '%s': %s", secret.name, exc)

    def prepare(self, secrets: Mapping[str, Secret], clusters: Iterable[Cluster] = ()) -> None:
        """At worker start: the static secrets, and the `ssl.*` stats of every TLS cluster made in
        config order.  Stats slots made after the fork must come in the same order in every worker
        (sidecar.observe.stats), so they are not left to each worker's first connection."""
        self.set_static(secrets)
        for cluster in clusters:
            if cluster.transport_socket is not None or cluster.transport_socket_matches:
                self.stats(f"cluster.{cluster.name}.")

    def stats(self, prefix: str) -> TlsStats:
        """The `ssl.*` counters of one owner scope ("listener.<addr>." or "cluster.<name>.")."""
        st = self._stats.get(prefix)
        if st is None:
            st = self._stats[prefix] = TlsStats(prefix)
            if self.registry is not None:
                st.register(self.registry)
        return st

    def _provider(self, cfg: TlsContext, prefix: str) -> TlsProvider:
        def failed(reason: str) -> None:
            log.warning("%sTLS context not updated: %s", prefix, reason)

        try:
            return TlsProvider(cfg, self.store, self.stats(prefix), on_error=failed)
        except SecretError as exc:
            # An inline file that cannot be read: the provider never gets ready; say so once.
            log.warning("%sTLS context: %s", prefix, exc)
            return TlsProvider(_unreadable(cfg), self.store, self.stats(prefix), on_error=failed)

    # -- listeners ------------------------------------------------------------------------------
    def server_provider(self, chain: FilterChain, listener: Listener) -> TlsProvider | None:
        """The provider of a filter chain's DownstreamTlsContext (None for a plaintext chain);
        its stats are the listener's (`listener.<address>.ssl.*`)."""
        cfg = chain.transport_socket
        if cfg is None:
            return None
        hit = self._chains.get(id(chain))
        if hit is not None and hit[0] is chain:
            return hit[1]
        from sidecar.listener.manager import stat_address  # the listener package imports us

        stat_prefix = f"listener.{stat_address(listener)}."
        terminal = chain.filters[-1] if chain.filters else None
        if isinstance(terminal, HttpConnectionManager) and "h2" in cfg.common.alpn_protocols:
            # No HTTP/2 server codec yet: never agree to h2 (clients fall back to http/1.1).
            alpn = tuple(p for p in cfg.common.alpn_protocols if p != "h2")
            cfg = dataclasses.replace(cfg, common=dataclasses.replace(cfg.common, alpn_protocols=alpn))
        provider = self._provider(cfg, stat_prefix)
        self._chains[id(chain)] = (chain, provider)
        return provider

    def forget_chains(self, chains: tuple[FilterChain, ...]) -> None:
        """A listener config went away: release its chains' providers (open connections keep
        their contexts)."""
        for chain in chains:
            hit = self._chains.pop(id(chain), None)
            if hit is not None:
                hit[1].close()

    # -- clusters --------------------------------------------------------------------------------
    def client_tls(self, cluster: Cluster, endpoint: Endpoint, alpn: tuple[str, ...] = ()) -> ClientTls | None:
        """The TLS to connect to `endpoint` of `cluster` with: None for plaintext.  Raises
        TlsNotReady when TLS is wanted but not ready (secrets still warming or broken)."""
        if cluster.transport_socket is None and not cluster.transport_socket_matches:
            return None
        ct = self._clusters.get(cluster.name)
        if ct is None or ct.config is not cluster:
            if ct is not None:
                for p in ct.providers():
                    p.close()
            prefix = f"cluster.{cluster.name}."
            ct = self._clusters[cluster.name] = _ClusterTls(cluster, lambda c: self._provider(c, prefix))
        provider = ct.resolve(endpoint)
        if provider is None:
            return None
        if alpn:
            provider = ct.variant(provider, alpn)
        tls = provider.client
        if tls is None:
            raise TlsNotReady(f"TLS for cluster '{cluster.name}' is not ready: {provider.error or 'warming'}")
        return tls

    def close(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def _unreadable(cfg: TlsContext) -> TlsContext:
    """A context that waits forever: its certificate comes from a secret that never arrives."""
    from sidecar.model.secret import SdsSecretConfig

    common = CommonTlsContext(tls_certificate_sds=(SdsSecretConfig("<unreadable inline secret>"),))
    return dataclasses.replace(cfg, common=common)


def _secret_error(name: str, reason: str) -> None:
    log.warning("secret '%s' not rotated: %s", name, reason)


def upstream_tls(host: Any, loop: asyncio.AbstractEventLoop, alpn: tuple[str, ...] = ()) -> ClientTls | None:
    """The TLS to connect to an upstream host (cluster_manager.Host) with; None for plaintext.
    Raises TlsNotReady (an OSError: a connect failure) when it is wanted but not ready."""
    cluster = host.cluster
    cfg = cluster.config
    if cfg.transport_socket is None and not cfg.transport_socket_matches:
        return None
    return wiring_for(loop, getattr(cluster, "_registry", None)).client_tls(cfg, host.endpoint, alpn)


_wirings: dict[int, TlsWiring] = {}


def wiring_for(loop: asyncio.AbstractEventLoop, registry: Any = None) -> TlsWiring:
    """The TlsWiring of `loop` (made on first use; one per worker process in production)."""
    w = _wirings.get(id(loop))
    if w is not None and w.loop is loop:
        if w.registry is None and registry is not None:
            w.registry = registry
            for st in w._stats.values():
                st.register(registry)
        return w
    for key, old in list(_wirings.items()):  # loops of finished tests
        if old.loop.is_closed():
            old.close()
            del _wirings[key]
    w = _wirings[id(loop)] = TlsWiring(loop, registry)
    return w

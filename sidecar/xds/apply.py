"""Dynamic configuration of one worker: xDS resources translated, checked, swapped in.

`DynamicConfig` holds what LDS, RDS, CDS, EDS and SDS gave this worker and applies each response in
two steps, as the apply contract of ads.py asks:

- `prepare(type_url, updated, removed)` translates every resource of the response (translate/) and
  returns the new models, or the `Rejected` list that becomes the NACK (nothing changed).  CDS and
  LDS are accepted per resource, as Envoy's CdsApiHelper/LdsApiImpl::onConfigUpdate do: the valid
  clusters/listeners (and SotW removals) are kept in `Prepared.models`, the refused ones go to
  `Prepared.rejected` (the response is still NACKed with their reasons; their previous version, if
  any, keeps serving).  RDS, EDS and SDS responses stay all-or-nothing.  An SDS secret is also
  built once (sds.check_secret), so a garbage PEM or a mismatched key is a NACK;
- `commit(prepared, ...)` swaps them in: clusters into the ClusterManager (an update that only
  brings endpoints calls ClusterState.set_endpoints, so pools, outlier state and stats stay), route
  configurations into the HcmRuntimes that name them (one reference swap per runtime), listeners
  into the ListenerManager (a replaced or removed listener drains for --drain-time-s), secrets into
  this process's SecretStore (`wiring_for(loop).store`; the TlsProviders rebuild on change).

Warming, as Envoy's cluster and listener managers do it: a new EDS cluster stays warming until its
ClusterLoadAssignment arrives, a new listener until every RouteConfiguration its connection
managers name has arrived; a cluster or listener whose TLS contexts name SDS secrets also waits for
them (Envoy's SDS init targets); an initial_fetch_timeout (`timed_out`) ends the wait with what there is
(no hosts, an empty route table).  A warming update of an active resource leaves the old one
serving meanwhile.

Every worker process runs its own DynamicConfig fed the same responses in the same order (the main
process relays them, xds/driver.py), so warming decisions are the same everywhere; only the main
process subscribes (`interest()` says what to watch)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.model.cluster import Cluster, DiscoveryType
from sidecar.model.endpoint import Endpoint
from sidecar.model.listener import HttpConnectionManager, Listener
from sidecar.model.route import RouteConfiguration
from sidecar.model.secret import SdsSecretConfig
from sidecar.translate.errors import ConfigError
from sidecar.xds import sds
from sidecar.xds.ads import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Rejected

log = logging.getLogger("sidecar.config")


@dataclass(slots=True)
class Accepted:
    """One accepted resource as /config_dump shows it (the proto is turned into JSON on demand)."""

    version_info: str
    last_updated: float
    proto: Any


@dataclass(slots=True)
class Prepared:
    """A translated response, ready to commit."""

    type_url: str
    version: str
    models: dict[str, Any]
    removed: frozenset[str]
    protos: Mapping[str, Any]
    versions: Mapping[str, str]
    # LDS: bound sockets for listeners that need a new one (the main process binds them while
    # preparing, so that an address in use becomes a NACK).
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    # CDS/LDS per-resource acceptance: the refused resources (the response is NACKed with them).
    rejected: list[Rejected] = field(default_factory=list)
    # LDS: the port the kernel gave a listener asking for port 0 (main process), relayed so that
    # every worker binds its SO_REUSEPORT socket to that same port.
    ports: dict[str, int] = field(default_factory=dict)

    def close_sockets(self) -> None:
        for s in self.sockets.values():
            s.close()
        self.sockets.clear()


def rds_names(listener: Listener) -> frozenset[str]:
    """The RouteConfiguration names the listener's connection managers take from RDS."""
    out = set()
    for chain in (*listener.filter_chains, listener.default_filter_chain):
        if chain is None:
            continue
        for f in chain.filters:
            if isinstance(f, HttpConnectionManager) and f.rds_name:
                out.add(f.rds_name)
    return frozenset(out)


def _rds_sources(listener: Listener) -> Iterable[tuple[str, Any]]:
    for chain in (*listener.filter_chains, listener.default_filter_chain):
        if chain is None:
            continue
        for f in chain.filters:
            if isinstance(f, HttpConnectionManager) and f.rds_name:
                yield f.rds_name, f.rds_source


def _rejected(name: str, e: ConfigError) -> Rejected:
    return Rejected(name, e.path.lstrip("."), e.reason)


class DynamicConfig:
    """xDS resources of one worker (see the module docstring).  `lm`/`cm` are the worker's
    ListenerManager and ClusterManager; `bind(listener, reuse)` makes a listening socket."""

    def __init__(
        self,
        static_clusters: Mapping[str, Cluster],
        static_listeners: Iterable[Listener],
        cm: Any,
        lm: Any,
        bind: Any,
        drain_time: float,
        secrets: Any = None,
    ) -> None:
        self._store = secrets  # a tls.secrets.SecretStore; None: this loop's TlsWiring store
        self.static_clusters = dict(static_clusters)
        self.static_listeners = tuple(static_listeners)
        self.static_listener_names = frozenset(lst.name for lst in self.static_listeners)
        self.cm = cm
        self.lm = lm
        self.bind = bind
        self.drain_time = drain_time
        self.clusters: dict[str, Cluster] = {}  # every accepted dynamic cluster (active or warming)
        self.active_clusters: dict[str, Cluster] = {}  # what the ClusterManager serves
        self.warming_clusters: set[str] = set()
        self.endpoints: dict[str, tuple[Endpoint, ...]] = {}  # by ClusterLoadAssignment name
        self.by_service: dict[str, set[str]] = {}  # ClusterLoadAssignment name -> EDS cluster names
        for cfg in self.static_clusters.values():  # static EDS clusters take their endpoints from EDS too
            if cfg.type is DiscoveryType.EDS:
                self.by_service.setdefault(cfg.eds_service_name, set()).add(cfg.name)
        self.eds_timed_out: set[str] = set()
        self.routes: dict[str, RouteConfiguration] = {}
        self.rds_timed_out: set[str] = set()
        self.listeners: dict[str, Listener] = {}  # every accepted dynamic listener
        self.warming_listeners: dict[str, Listener] = {}
        self.warming_sockets: dict[str, socket.socket] = {}
        self.sds_timed_out: set[str] = set()
        self.accepted: dict[str, dict[str, Accepted]] = {
            CLUSTER: {}, ENDPOINT: {}, LISTENER: {}, ROUTE: {}, SECRET: {}
        }

    @property
    def store(self) -> Any:
        if self._store is None:
            import asyncio

            from sidecar.tls.wiring import wiring_for

            self._store = wiring_for(asyncio.get_running_loop()).store
        return self._store

    # -- translation (no side effect but binding sockets) -----------------------------------------
    def prepare(
        self,
        type_url: str,
        version: str,
        updated: Mapping[str, Any],
        removed: frozenset[str],
        versions: Mapping[str, str] | None = None,
        bind_sockets: bool = True,
    ) -> Prepared | list[Rejected]:
        """Translate every resource; the Rejected list (NACK) if any is refused (CDS/LDS: only when
        none is left to apply, see the module docstring)."""
        from sidecar.translate import cds, lds
        from sidecar.translate.rds import translate_route_configuration
        from sidecar.translate.tls import translate_secret

        errors: list[Rejected] = []
        models: dict[str, Any] = {}
        for name, pb in updated.items():
            try:
                if type_url == CLUSTER:
                    if name in self.static_clusters:
                        raise ConfigError("name", f"cluster '{name}' is a static cluster and cannot be updated")
                    models[name] = cds.translate_cluster(pb, "")
                elif type_url == ENDPOINT:
                    models[name] = cds.translate_cluster_load_assignment(pb, "")
                elif type_url == ROUTE:
                    models[name] = translate_route_configuration(pb, "")
                elif type_url == LISTENER:
                    if name in self.static_listener_names:
                        raise ConfigError("name", f"listener '{name}' is a static listener and cannot be updated")
                    known = {*self.static_clusters, *self.clusters}
                    models[name] = lds.translate_listener(pb, "", clusters=known)
                elif type_url == SECRET:
                    secret = translate_secret(pb, "")
                    sds.check_secret(secret, self.store)
                    models[name] = secret
                else:
                    raise ConfigError("", f"{type_url} resources are not supported by sidecar yet")
            except ConfigError as e:
                errors.append(_rejected(name, e))
            except Exception as e:  # a translation bug: refuse the resource, keep serving
                log.exception("translating %s %s failed", type_url, name)
                errors.append(Rejected(name, "", f"internal error: {e!r}"))
        per_resource = type_url in (CLUSTER, LISTENER)
        if type_url == LISTENER:
            bad = {e.resource for e in errors}
            errors += self._check_addresses({n: m for n, m in models.items() if n not in bad}, removed)
        if errors and not per_resource:
            return errors
        for rej in errors:
            models.pop(rej.resource, None)
        if errors and not models and not removed:
            return errors
        protos = {n: updated[n] for n in models}
        prepared = Prepared(type_url, version, models, removed, protos, versions or {}, rejected=errors)
        if type_url == LISTENER and bind_sockets:
            for name, lst in list(models.items()):
                if not lst.bind_to_port or self._same_address(name, lst):
                    continue
                try:
                    sock = prepared.sockets[name] = self.bind(lst)
                    if not lst.address.pipe and not lst.address.port:
                        prepared.ports[name] = int(sock.getsockname()[1])
                except OSError as e:  # this listener only: the others still apply
                    del models[name]
                    del protos[name]
                    why = f"cannot bind '{lst.address}': {e.strerror or e}"
                    errors.append(Rejected(name, "address", why))
            if errors and not models and not removed:
                prepared.close_sockets()
                return errors
        return prepared

    def _same_address(self, name: str, lst: Listener) -> bool:
        old = self.listeners.get(name)
        return old is not None and old.address == lst.address and old.bind_to_port

    def _check_addresses(self, models: Mapping[str, Listener], removed: frozenset[str]) -> list[Rejected]:
        """Envoy refuses a listener whose address another listener (by another name) has."""
        static = [al.config for al in self.lm.active if al.config.name in self.static_listener_names]
        others = {n: lst for n, lst in self.listeners.items() if n not in removed and n not in models}
        taken = {lst.address: n for n, lst in [*((s.name, s) for s in static), *others.items(), *models.items()]
                 if lst.bind_to_port and (lst.address.pipe or lst.address.port)}
        errors = []
        for name, lst in models.items():
            owner = taken.get(lst.address)
            if owner is not None and owner != name:
                errors.append(Rejected(
                    name, "address",
                    f"error adding listener: '{name}' has duplicate address '{lst.address}' as existing listener",
                ))
        return errors

    # -- swapping in ---------------------------------------------------------------------------------
    async def commit(self, p: Prepared, now: float | None = None) -> None:
        at = time.time() if now is None else now
        book = self.accepted[p.type_url]
        for name in p.removed:
            book.pop(name, None)
        for name, pb in p.protos.items():
            book[name] = Accepted(p.versions.get(name) or p.version, at, pb)
        if p.type_url == CLUSTER:
            await self._commit_clusters(p)
        elif p.type_url == ENDPOINT:
            await self._commit_endpoints(p)
        elif p.type_url == ROUTE:
            await self._commit_routes(p)
        elif p.type_url == LISTENER:
            await self._commit_listeners(p)
        elif p.type_url == SECRET:
            await self._commit_secrets(p)

    async def _commit_secrets(self, p: Prepared) -> None:
        from sidecar.tls.secrets import SecretError

        for name in p.removed:
            self.store.remove_secret(name)
        for name, secret in p.models.items():
            try:
                self.store.set_secret(secret, p.versions.get(name) or p.version)
            except SecretError as e:  # a file that went away since prepare: keep the old one
                log.warning("secret '%s' not updated: %s", name, e)
        self._activate_clusters([n for n in sorted(self.warming_clusters) if self._warm(n)])
        await self._activate_warm_listeners()

    async def _commit_clusters(self, p: Prepared) -> None:
        for name in p.removed:
            self._unindex(self.clusters.pop(name, None))
            self.active_clusters.pop(name, None)
            self.warming_clusters.discard(name)
        ready = []
        for name, cfg in p.models.items():
            self._unindex(self.clusters.get(name))
            self.clusters[name] = cfg
            if cfg.type is DiscoveryType.EDS:
                self.by_service.setdefault(cfg.eds_service_name, set()).add(name)
            if self._cluster_ready(cfg):
                self.warming_clusters.discard(name)
                ready.append(name)
            else:
                self.warming_clusters.add(name)  # the old version (if any) keeps serving
        self._activate_clusters(ready, removed=bool(p.removed))

    def _unindex(self, cfg: Cluster | None) -> None:
        if cfg is not None and cfg.type is DiscoveryType.EDS:
            names = self.by_service.get(cfg.eds_service_name)
            if names is not None:
                names.discard(cfg.name)
                if not names:
                    del self.by_service[cfg.eds_service_name]

    def _secrets_ready(self, refs: Iterable[SdsSecretConfig]) -> bool:
        """Every SDS secret arrived (or its initial fetch timed out), as Envoy's SDS init targets."""
        return all(r.name in self.sds_timed_out or self.store.get(r.name) is not None for r in refs)

    def _cluster_ready(self, cfg: Cluster) -> bool:
        if not self._secrets_ready(sds.cluster_refs(cfg)):
            return False
        if cfg.type is not DiscoveryType.EDS:
            return True
        return cfg.eds_service_name in self.endpoints or cfg.eds_service_name in self.eds_timed_out

    def _activate_clusters(self, names: Iterable[str], removed: bool = False) -> None:
        names = list(names)
        if not names and not removed:
            return
        for name in names:
            self.active_clusters[name] = self.clusters[name]
        self.cm.update({**self.static_clusters, **self.active_clusters})
        for name in names:
            cfg = self.active_clusters[name]
            if cfg.type is DiscoveryType.EDS:
                state = self.cm.get(name)
                if state is not None:
                    state.set_endpoints(self.endpoints.get(cfg.eds_service_name, ()))
        if any(self.active_clusters[n].type in (DiscoveryType.STRICT_DNS, DiscoveryType.LOGICAL_DNS) for n in names):
            self.cm.start_dns()

    async def _commit_endpoints(self, p: Prepared) -> None:
        changed = set(p.removed) | set(p.models)
        for name in p.removed:
            self.endpoints.pop(name, None)
        self.endpoints.update(p.models)
        # Active clusters: new hosts, same ClusterState (pools, outlier state and stats stay).
        warm = []
        for service in changed:
            for name in sorted(self.by_service.get(service, ())):
                if name in self.warming_clusters:
                    if self._warm(name):
                        warm.append(name)
                    continue
                live = name in self.active_clusters or name in self.static_clusters
                state = self.cm.get(name) if live else None
                if state is not None:
                    state.set_endpoints(self.endpoints.get(service, ()))
        self._activate_clusters(warm)

    def _warm(self, name: str) -> bool:
        if self._cluster_ready(self.clusters[name]):
            self.warming_clusters.discard(name)
            return True
        return False

    async def _commit_routes(self, p: Prepared) -> None:
        routes = dict(self.routes)
        for name in p.removed:
            routes.pop(name, None)
        routes.update(p.models)
        self.routes = routes
        self.lm.set_route_configs(routes, set(p.models) | set(p.removed))
        await self._activate_warm_listeners()

    def _listener_ready(self, lst: Listener) -> bool:
        if not self._secrets_ready(sds.listener_refs(lst)):
            return False
        return all(n in self.routes or n in self.rds_timed_out for n in rds_names(lst))

    async def _commit_listeners(self, p: Prepared) -> None:
        for name in p.removed:
            self.listeners.pop(name, None)
            old_sock = self.warming_sockets.pop(name, None)
            if old_sock is not None:
                old_sock.close()
            self.warming_listeners.pop(name, None)
            al = self.lm.find(name)
            if al is not None:
                self.lm.retire(al, self.drain_time)
        for name, lst in p.models.items():
            self.listeners[name] = lst
            stale = self.warming_sockets.pop(name, None)
            if stale is not None:
                stale.close()
            self.warming_listeners.pop(name, None)
            sock = p.sockets.pop(name, None)
            if sock is None and lst.bind_to_port and not self._reusable(name, lst):
                sock = self.bind(lst, p.ports.get(name))  # a worker binds its own SO_REUSEPORT socket
            if self._listener_ready(lst):
                await self._start_listener(name, lst, sock)
            else:
                self.warming_listeners[name] = lst
                if sock is not None:
                    self.warming_sockets[name] = sock
        p.close_sockets()

    def _reusable(self, name: str, lst: Listener) -> bool:
        al = self.lm.find(name)
        return al is not None and al.sock is not None and al.config.address == lst.address

    async def _start_listener(self, name: str, lst: Listener, sock: socket.socket | None) -> None:
        old = self.lm.find(name)
        if sock is None and lst.bind_to_port and old is not None and old.sock is not None:
            # Same address: share the old listening socket (its queue too), so no connection
            # waiting in the backlog is lost when the old listener stops accepting.
            sock = old.sock.dup()
        await self.lm.serve(lst, sock if lst.bind_to_port else None)
        if old is not None:
            self.lm.retire(old, self.drain_time)

    async def _activate_warm_listeners(self) -> None:
        for name in sorted(self.warming_listeners):
            lst = self.warming_listeners[name]
            if self._listener_ready(lst):
                del self.warming_listeners[name]
                await self._start_listener(name, lst, self.warming_sockets.pop(name, None))

    async def timed_out(self, type_url: str, name: str) -> None:
        """initial_fetch_timeout of `name`: stop waiting for it (Envoy's onConfigUpdateFailed)."""
        if type_url == ENDPOINT:
            self.eds_timed_out.add(name)
            self._activate_clusters([n for n in sorted(self.warming_clusters) if self._warm(n)])
        elif type_url == ROUTE:
            self.rds_timed_out.add(name)
            await self._activate_warm_listeners()
        elif type_url == SECRET:
            self.sds_timed_out.add(name)
            self._activate_clusters([n for n in sorted(self.warming_clusters) if self._warm(n)])
            await self._activate_warm_listeners()

    # -- what the main process subscribes to --------------------------------------------------------
    def eds_interest(self) -> dict[Any, set[str]]:
        """ClusterLoadAssignment names by config source, for every accepted EDS cluster."""
        out: dict[Any, set[str]] = {}
        for cfg in (*self.static_clusters.values(), *self.clusters.values()):
            if cfg.type is DiscoveryType.EDS:
                out.setdefault(cfg.eds_source, set()).add(cfg.eds_service_name)
        return out

    def rds_interest(self) -> dict[Any, set[str]]:
        """RouteConfiguration names by config source, for every accepted listener."""
        out: dict[Any, set[str]] = {}
        for lst in (*self.static_listeners, *self.listeners.values()):
            for name, source in _rds_sources(lst):
                out.setdefault(source, set()).add(name)
        return out

    def secret_refs(self, dynamic_only: bool = False) -> list[SdsSecretConfig]:
        """The SDS references of the static and every accepted dynamic listener and cluster."""
        out: list[SdsSecretConfig] = []
        clusters = list(self.clusters.values())
        listeners = list(self.listeners.values())
        if not dynamic_only:
            clusters = [*self.static_clusters.values(), *clusters]
            listeners = [*self.static_listeners, *listeners]
        for cfg in clusters:
            out.extend(sds.cluster_refs(cfg))
        for lst in listeners:
            out.extend(sds.listener_refs(lst))
        return out

    def sds_interest(self) -> dict[Any, set[str]]:
        """Secret names by config source (xds.config.ConfigSource), for every referenced secret."""
        return sds.interest(self.secret_refs())

    def static_secrets_pending(self) -> bool:
        """A static listener or cluster still waits for an SDS secret (Envoy's server init waits)."""
        refs = [r for c in self.static_clusters.values() for r in sds.cluster_refs(c)]
        refs += [r for lst in self.static_listeners for r in sds.listener_refs(lst)]
        return not self._secrets_ready(refs)

    def resources(self, type_url: str) -> list[tuple[str, Accepted, bool]]:
        """(name, accepted, warming) of one type, for /config_dump.  SDS: every referenced secret;
        one not received yet is warming (Envoy's dynamic_warming_secrets)."""
        if type_url == SECRET:
            return self._secret_resources()
        warming: set[str] | dict[str, Listener] = set()
        if type_url == CLUSTER:
            warming = self.warming_clusters
        elif type_url == LISTENER:
            warming = self.warming_listeners
        book = self.accepted.get(type_url, {})
        return [(n, book[n], n in warming) for n in sorted(book)]


    def _secret_resources(self) -> list[tuple[str, Accepted, bool]]:
        from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

        book = self.accepted[SECRET]
        out = []
        for name in sorted({r.name for r in self.secret_refs()}):
            acc = book.get(name)
            if acc is not None and self.store.get(name) is not None:
                out.append((name, acc, False))
            else:
                out.append((name, Accepted("", 0.0, secret_pb2.Secret(name=name)), True))
        return out

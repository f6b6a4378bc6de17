"""HTTP filter registry: typed_config type URL -> the builder of a per-stream filter factory.

Envoy finds HTTP filters by their typed_config type URL (the `name` is a label, and the key of
typed_per_filter_config).  translate/lds.py has already refused what is not here; the listener
manager calls `filter_factories` once per connection manager config per worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidecar.http.filters.fault import FAULT_TYPE_URL, FaultRuntime, FaultSettings, FaultStats, fault_factory
from sidecar.http.filters.rbac import RBAC_TYPE_URL, RbacRuntime, rbac_factory
from sidecar.http.filters.router import Router
from sidecar.model.listener import HttpConnectionManager, HttpFilterConfig
from sidecar.model.rbac import HttpRbac
from sidecar.observe.stats import Stats, shared_block
from sidecar.rbac.stats import RbacStats

ROUTER_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

FilterFactory = Callable[[], Any]
Builder = Callable[[HttpFilterConfig, HttpConnectionManager, Stats], FilterFactory]


def _router(f: HttpFilterConfig, hcm: HttpConnectionManager, stats: Stats) -> FilterFactory:
    return Router


def _fault(f: HttpFilterConfig, hcm: HttpConnectionManager, stats: Stats) -> FilterFactory:
    settings = f.config if isinstance(f.config, FaultSettings) else FaultSettings()
    # Envoy's fault stats live under the connection manager's prefix: http.<stat_prefix>.fault.*
    scope = f"http.{hcm.stat_prefix}.fault."
    fs = shared_block(stats, scope, lambda: FaultStats(stats, scope))
    return fault_factory(FaultRuntime(f.name, settings, fs))


def _rbac(f: HttpFilterConfig, hcm: HttpConnectionManager, stats: Stats) -> FilterFactory:
    cfg = f.config if isinstance(f.config, HttpRbac) else HttpRbac()
    # http.<stat_prefix>.rbac.* (RBAC::generateStats with the connection manager's prefix).
    rs = RbacStats(stats, f"http.{hcm.stat_prefix}.", cfg.rules_stat_prefix, cfg.shadow_rules_stat_prefix)
    return rbac_factory(RbacRuntime(f.name, cfg, rs, hcm))


BUILDERS: dict[str, Builder] = {
    ROUTER_TYPE_URL: _router,
    FAULT_TYPE_URL: _fault,
    RBAC_TYPE_URL: _rbac,
}


def filter_factories(hcm: HttpConnectionManager, stats: Stats) -> tuple[FilterFactory, ...]:
    """The per-stream factories of `hcm`'s http_filters, in order (the router last, as lds.py
    guarantees).  A connection manager built without http_filters gets the router alone."""
    out = [BUILDERS[f.type_url](f, hcm, stats) for f in hcm.http_filters if not f.disabled]
    if not out or out[-1] is not Router:
        out = [*(f for f in out if f is not Router), Router]
    return tuple(out)


def active_filters(factories: tuple[FilterFactory, ...], route_config: Any) -> tuple[FilterFactory, ...]:
    """The factories a stream of this route configuration runs: those whose filter can do something
    for some route of it (a factory with `needed_by` decides; others always run).  Istio puts the fault
    filter in every connection manager and sets faults per route: at 0% with no per-route settings
    it injects and counts nothing, so streams skip it.  Remade whenever the route configuration is
    (RDS), with the same factories, so stats and filter state are not rebuilt."""
    out = []
    for f in factories:
        needed_by = getattr(f, "needed_by", None)
        if needed_by is None or needed_by(route_config):
            out.append(f)
    return tuple(out)

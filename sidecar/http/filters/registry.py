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
from sidecar.observe.stats import Stats
from sidecar.rbac.stats import RbacStats

ROUTER_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

FilterFactory = Callable[[], Any]
# A builder may return None: the filter can do nothing for any route of this connection manager's
# route configuration, so streams do not run it at all (the decision is remade with the config).
Builder = Callable[[HttpFilterConfig, HttpConnectionManager, Stats], FilterFactory | None]


def _router(f: HttpFilterConfig, hcm: HttpConnectionManager, stats: Stats) -> FilterFactory:
    return Router


def _fault(f: HttpFilterConfig, hcm: HttpConnectionManager, stats: Stats) -> FilterFactory | None:
    settings = f.config if isinstance(f.config, FaultSettings) else FaultSettings()
    # Envoy's fault stats live under the connection manager's prefix: http.<stat_prefix>.fault.*
    fs = FaultStats(stats, f"http.{hcm.stat_prefix}.fault.")
    if settings.inert and not _has_route_config(hcm, f.name):
        # Istio adds the fault filter to every listener and sets faults per route; at 0% with no
        # per-route settings it injects nothing and counts nothing, so no stream needs to run it.
        return None
    return fault_factory(FaultRuntime(f.name, settings, fs))


def _has_route_config(hcm: HttpConnectionManager, name: str) -> bool:
    """Whether any route of `hcm` carries typed_per_filter_config for the filter called `name`."""
    for vh in hcm.route_config.virtual_hosts:
        for route in vh.routes:
            for key, _ in route.typed_per_filter_config:
                if key == name:
                    return True
    return False


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
    built = [BUILDERS[f.type_url](f, hcm, stats) for f in hcm.http_filters if not f.disabled]
    out = [b for b in built if b is not None]
    if not out or out[-1] is not Router:
        out = [*(f for f in out if f is not Router), Router]
    return tuple(out)

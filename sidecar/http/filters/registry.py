"""HTTP filter registry: typed_config type URL -> the builder of a per-stream filter factory.

Envoy finds HTTP filters by their typed_config type URL (the `name` is a label, and the key of
typed_per_filter_config).  translate/lds.py has already refused what is not here; the listener
manager calls `filter_factories` once per connection manager config per worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidecar.http.filters.fault import FAULT_TYPE_URL, FaultRuntime, FaultSettings, FaultStats, fault_factory
from sidecar.http.filters.router import Router
from sidecar.model.listener import HttpConnectionManager, HttpFilterConfig
from sidecar.observe.stats import Stats

ROUTER_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

FilterFactory = Callable[[], Any]
Builder = Callable[[HttpFilterConfig, HttpConnectionManager, Stats], FilterFactory]


def _router(f: HttpFilterConfig, hcm: HttpConnectionManager, stats: Stats) -> FilterFactory:
    return Router


def _fault(f: HttpFilterConfig, hcm: HttpConnectionManager, stats: Stats) -> FilterFactory:
    settings = f.config if isinstance(f.config, FaultSettings) else FaultSettings()
    # Envoy's fault stats live under the connection manager's prefix: http.<stat_prefix>.fault.*
    fs = FaultStats(stats, f"http.{hcm.stat_prefix}.fault.")
    return fault_factory(FaultRuntime(f.name, settings, fs))


BUILDERS: dict[str, Builder] = {
    ROUTER_TYPE_URL: _router,
    FAULT_TYPE_URL: _fault,
}


def filter_factories(hcm: HttpConnectionManager, stats: Stats) -> tuple[FilterFactory, ...]:
    """The per-stream factories of `hcm`'s http_filters, in order (the router last, as lds.py
    guarantees).  A connection manager built without http_filters gets the router alone."""
    out = [BUILDERS[f.type_url](f, hcm, stats) for f in hcm.http_filters if not f.disabled]
    if not out or out[-1] is not Router:
        out = [*(f for f in out if f is not Router), Router]
    return tuple(out)

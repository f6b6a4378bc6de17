"""Wiring only: from a command line to a running sidecar, in one readable function.

    options -> bootstrap proto -> Snapshot (translate/, all validation) -> Server (runtime.py)

Nothing here decides behaviour; it connects the pieces (linkerd's `mk_sidecar`)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from sidecar.cli import Options
from sidecar.model.snapshot import Snapshot
from sidecar.translate.bootstrap import load_bootstrap, translate_bootstrap, translate_dynamic
from sidecar.translate.errors import ConfigError

log = logging.getLogger("sidecar")


def load_snapshot(opts: Options) -> Snapshot:
    """The bootstrap named by the command line, translated; raises ConfigError."""
    pb = load_bootstrap(opts.config_path or None, opts.config_yaml or None, opts.allow_unknown_static_fields)
    return translate_bootstrap(pb, opts)


def load_config(opts: Options) -> tuple[Snapshot, Any]:
    """The static Snapshot and, with dynamic_resources, (xds.config.DynamicResources, node proto)."""
    pb = load_bootstrap(opts.config_path or None, opts.config_yaml or None, opts.allow_unknown_static_fields)
    return translate_bootstrap(pb, opts), translate_dynamic(pb, opts)


def mk_sidecar(opts: Options, argv: list[str]) -> int:
    """Validate or serve; returns the process exit code."""
    try:
        snapshot, xds = load_config(opts)
    except ConfigError as exc:
        # Envoy: "error initializing configuration '<path>': <reason>" and exit 1.
        print(f"error initializing configuration '{opts.config_path}': {exc}", file=sys.stderr)
        return 1
    if opts.mode in ("validate", "init_only"):
        print(f"configuration '{opts.config_path}' OK")
        return 0
    from sidecar.runtime import Server

    return Server(opts, snapshot, argv, xds=xds).run()

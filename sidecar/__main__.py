"""`sidecar` / `python -m sidecar`: Envoy's command line in, a running data plane out."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from sidecar.bootstrap import mk_sidecar
    from sidecar.cli import parse_args
    from sidecar.runtime import setup_logging

    args = sys.argv[1:] if argv is None else argv
    opts = parse_args(args)
    setup_logging(opts)
    return mk_sidecar(opts, [sys.argv[0], *args])


if __name__ == "__main__":
    sys.exit(main())

"""Runnable examples.  `make demo` runs `python -m examples.demo`: bookinfo-style services on
loopback, with the sidecar (or `--proxy envoy`) routing between them from examples/bookinfo.yaml."""

"""Benchmarks: the sidecar against a real Envoy on the same bootstrap, in the same run.

`python -m benchmarks.run --help` (or `make bench`) is the entry point; RESULTS.md holds the committed
table. Nothing here is imported by the sidecar or by the tests: timings never go in tests.
"""

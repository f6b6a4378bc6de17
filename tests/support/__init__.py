"""Shared helpers for the integration, differential and e2e rings: free loopback ports (`ports`),
a recording HTTP/1.1 and TCP upstream (`upstream`), a raw HTTP/1.1 client (`http1`) and a runner for
envoy/sidecar processes (`proxy`).  Nothing here imports `sidecar`: the helpers treat the proxy as a
black box, so they serve Envoy and the sidecar alike."""

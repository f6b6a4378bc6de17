"""RouteAction.max_grpc_timeout and grpc_timeout_offset (deprecated in Envoy, still set by istiod:
`max_grpc_timeout: 0s` on every outbound route): how a gRPC request's grpc-timeout header becomes
the router's global timeout, and what the upstream is told.  Pure: the router
(http/filters/router.py) calls `grpc_timeouts` once per gRPC request on such a route, or, for an
internal request, `global_timeout_ms` as the base its x-envoy-* timeout headers may override.

Envoy (FilterUtility::finalTimeout, not under max_stream_duration's "new timeouts"): the header's
value (absent or unparseable: 0, infinite) minus the offset when the offset is below it, then capped
by max_grpc_timeout unless that is 0 (a 0 from the header becomes the cap); that replaces the route
`timeout`, header or not.  The retry policy's per-try timeout is dropped when not below a non-zero
global one.  setTimeoutHeaders then announces the per-try timeout, else the global one, in
x-envoy-expected-rq-timeout-ms and in grpc-timeout (Grpc::Common::toGrpcTimeout) when it is not 0."""

from __future__ import annotations

from sidecar.http.timeouts import format_grpc_timeout, grpc_timeout_ms, ms


def grpc_content_type(ct: bytes) -> bool:
    """Grpc::Common::hasGrpcContentType: application/grpc, or application/grpc+... / ;..."""
    return ct.startswith(b"application/grpc") and (len(ct) == 16 or ct[16] in b"+;")


def global_timeout_ms(max_grpc_timeout: float, offset: float | None, header: bytes | None) -> int:
    """The router's global timeout for a gRPC request (0: none)."""
    timeout = grpc_timeout_ms(header) if header else None
    value = timeout or 0
    if offset is not None:
        off = ms(offset)
        if off < value:  # only when it leaves something: 0 would mean infinite
            value -= off
    cap = ms(max_grpc_timeout)
    if cap and (value == 0 or value > cap):
        value = cap
    return value


def grpc_timeouts(
    max_grpc_timeout: float, offset: float | None, per_try: float, header: bytes | None
) -> tuple[int, int, bytes | None]:
    """(global ms, per-try ms, the grpc-timeout to send or None to leave the header as it is)."""
    global_ms = global_timeout_ms(max_grpc_timeout, offset, header)
    per_try_ms = ms(per_try)
    if global_ms and per_try_ms >= global_ms:
        per_try_ms = 0
    expected = per_try_ms or global_ms
    return global_ms, per_try_ms, format_grpc_timeout(expected) if expected else None

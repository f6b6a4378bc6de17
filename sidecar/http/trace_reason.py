"""What Envoy's connection manager puts on the wire for a request when the HttpConnectionManager has
`tracing`, without a tracer provider: the tracing decision (ConnectionManagerUtility::
mutateTracingRequestHeader) packed into the x-request-id UUID (the uuid request id extension's
setTraceReason, char 14, the UUID version nibble), and Route.decorator's
x-envoy-decorator-operation (ActiveStream::traceRequest / encodeHeaders).

Pure: functions of the request id, headers and config (the connection manager calls them only when
tracing is configured).  No span is made or reported (translate/tracing.py logs that once); with a
Zipkin provider the B3 headers follow `traced` (http/b3.py).

Observed with Envoy 1.40 (tests/differential/test_tracing.py): with HCM tracing and no provider,
`x-client-trace-id` makes char 14 `b` (client_sampling 100%), an id whose first 8 hex digits mod
10000 fall under random_sampling (in 1/10000ths) gets `9`; an id already marked is kept; otherwise
the id is unchanged (`4` for a generated one)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.model.tracing import RequestIdExtension, Tracing

if TYPE_CHECKING:
    from sidecar.http.events import Headers, RequestHead

# Envoy's UUIDRequestIDExtension markers in the version nibble.
NO_TRACE = ord("4")
SAMPLED = ord("9")
FORCED = ord("a")
CLIENT = ord("b")
_POSITION = 14
_UUID_LENGTH = 36
_MARKED = (SAMPLED, FORCED, CLIENT)
_HEX = b"0123456789abcdefABCDEF"


def _ten_thousandths(percent: float) -> int:
    """A Percent as the FractionalPercent Envoy compares against (per 10000, rounded)."""
    return round(percent * 100)


def decide(
    request_id: bytes,
    client_trace_id: bool,
    force_trace: bool,
    tracing: Tracing,
    rid: RequestIdExtension,
    rand: float,
) -> bytes:
    """The x-request-id after the tracing decision (the same bytes when nothing changes).

    `client_trace_id`: the request carries x-client-trace-id; `force_trace`: it carries
    x-envoy-force-trace after the edge's sanitising (an internal request); `rand` in [0, 1): the
    random draw client_sampling below 100% and sampling without the request id use."""
    return decide_traced(request_id, client_trace_id, force_trace, tracing, rid, rand)[0]


def decide_traced(
    request_id: bytes,
    client_trace_id: bool,
    force_trace: bool,
    tracing: Tracing,
    rid: RequestIdExtension,
    rand: float,
) -> tuple[bytes, bool]:
    """decide(), with the decision a tracer gets (traced: a sampled / forced / client reason).
    Observed: the decision holds with pack_trace_reason false (the id then unchanged), and a
    missing or corrupted id is not traced."""
    head = request_id[:8]
    if len(head) < 8 or head.strip(_HEX):
        return request_id, False  # a missing or corrupted id: Envoy skips the decision
    value = int(head, 16)
    result = value % 10000 if rid.use_request_id_for_trace_sampling else int(rand * 10000)
    uuid = len(request_id) == _UUID_LENGTH
    current = request_id[_POSITION] if uuid else 0
    write = 0  # the marker setTraceReason writes (0: not called)
    if current not in _MARKED:  # an id already marked keeps its reason
        if client_trace_id and rand * 100 < tracing.client_sampling:
            write = CLIENT
        elif force_trace:
            write = FORCED
        elif result < _ten_thousandths(tracing.random_sampling):
            write = SAMPLED
    if result >= _ten_thousandths(tracing.overall_sampling):
        write = NO_TRACE
    traced = (write or current) in _MARKED
    if not write or not uuid or not rid.pack_trace_reason or write == current:
        return request_id, traced
    return request_id[:_POSITION] + bytes((write,)) + request_id[_POSITION + 1 :], traced


DECORATOR = b"x-envoy-decorator-operation"


def decorate(head: RequestHead, tracing: Tracing, operation: str, propagate: bool) -> bytes | None:
    """Route.decorator under HCM tracing (ActiveStream::traceRequest), on the request; returns what
    the response gets (decorate_response): None for nothing, b"" to remove the header.

    Egress (an OUTBOUND listener): the route's operation goes upstream in x-envoy-decorator-operation
    (when it propagates) and the response's header is removed.  Ingress: a non-empty request header
    overrides the decorator (no response header then) and is removed from the request; otherwise the
    operation goes back in the response (when it propagates)."""
    if tracing.egress:
        if operation and propagate:
            head.set(DECORATOR, operation.encode())
        return b""
    override = head.get(DECORATOR)
    if override is not None:
        if override:
            operation = ""
        head.remove(DECORATOR)
    return operation.encode() if operation and propagate else None


def decorate_response(headers: Headers, op: bytes) -> None:
    """Set (op) or remove (b"") x-envoy-decorator-operation in response headers, in place."""
    if any(k == DECORATOR for k, _ in headers):
        headers[:] = [h for h in headers if h[0] != DECORATOR]
    if op:
        headers.append((DECORATOR, op))

"""Zipkin B3 trace context on the upstream request, as Envoy 1.40's Zipkin tracer (ZipkinConfig as
provider of a traced HttpConnectionManager) writes it: extraction from the incoming x-b3-* headers
or the single `b3` header (Envoy's zipkin SpanContextExtractor), the span Driver::startSpan makes
(a new root, a child, or the shared server span) and Span::injectContext's headers.

Pure: functions of the request's headers, the tracing decision and `rand` (a source of 64-bit
ints).  No span is recorded or reported (translate/tracing.py says so once per process).

Observed with Envoy 1.40 (tests/differential/test_tracing.py, tests/unit/http/test_b3.py):

- no usable incoming context: a new root; span id = the trace id's low 64 bits, a random high half
  with trace_id_128bit; no x-b3-parentspanid (a stray incoming one is left as it is);
- x-b3-traceid + x-b3-spanid: the trace id kept (printed as 32 hex digits only when its high half
  is not 0, lowercase, zero-padded); Egress or shared_span_context false: a new span id whose
  parent is the incoming span; Ingress with shared_span_context (the default): the incoming span
  id and parent id reused;
- a malformed context (bad hex, over 64 bits, a trace id of 33+ digits): Envoy's NullSpan, nothing
  added, incoming headers untouched;
- x-b3-sampled: "1"/"true" sampled, any other value not; absent: the decision (x-request-id's
  trace reason); x-b3-flags is not read and passes through;
- a `b3` header wins over x-b3-*: then only `b3` is rewritten (trace-span-sampled[-parent]) and
  x-b3-* pass untouched."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

TRACE_ID = b"x-b3-traceid"
SPAN_ID = b"x-b3-spanid"
PARENT_ID = b"x-b3-parentspanid"
SAMPLED = b"x-b3-sampled"
B3 = b"b3"

_U64 = 1 << 64
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")
_SPACE = b" \t\n\v\f\r"


class Invalid(Exception):
    """Envoy's ExtractorException: the driver makes a NullSpan (no header written)."""


def strtoull16(text: bytes) -> int:
    """A 64-bit hex number as Envoy's extractor reads one: surrounding whitespace and a 0x prefix
    accepted, no sign (observed: "0x12" is 0x12, "-1" and "+1" are refused), at most 2**64-1;
    raise Invalid otherwise."""
    s = text.strip(_SPACE)
    if s[:2] in (b"0x", b"0X") and len(s) > 2:
        s = s[2:]
    if not s or any(c not in _HEXDIGITS for c in s):
        raise Invalid(text)
    value = int(s, 16)
    if value >= _U64:
        raise Invalid(text)  # out of range
    return value


@dataclass(frozen=True, slots=True)
class Context:
    """An extracted (or made) span context; parent None when there is none."""

    trace_high: int
    trace_low: int
    span: int
    parent: int | None
    sampled: bool

    def trace_hex(self) -> bytes:
        # Envoy's traceIdAsHexString: 32 digits only when the high half is set.
        if self.trace_high:
            return b"%016x%016x" % (self.trace_high, self.trace_low)
        return b"%016x" % self.trace_low


def _flag(c: int, traced: bool) -> bool:
    """A b3 single-header sampling character ('0', '1', 'd'; else the decision)."""
    if c == ord("0"):
        return False
    if c in (ord("1"), ord("d")):
        return True
    return traced


# b3 lengths whose sampling character Envoy reads (extractSampled): its index.
_B3_SAMPLED_AT = {35: 34, 51: 50, 52: 34, 68: 50}


def sampled(get: Callable[[bytes], bytes | None], traced: bool) -> bool:
    """Envoy's SpanContextExtractor::extractSampled."""
    b3 = get(B3)
    if b3 is not None:
        if len(b3) == 1:
            return _flag(b3[0], traced)
        at = _B3_SAMPLED_AT.get(len(b3))
        return traced if at is None else _flag(b3[at], traced)
    value = get(SAMPLED)
    if value is None:
        return traced
    return value in (b"1", b"true")


def _single(b3: bytes, is_sampled: bool) -> Context | None:
    """extractSpanContextFromB3SingleFormat: trace[-span[-sampled[-parent]]]."""
    if not b3:
        raise Invalid("empty")
    if len(b3) == 1:
        if b3 in (b"0", b"1", b"d"):
            return None
        raise Invalid("sampling flag")
    if len(b3) < 33 or len(b3) > 68:
        raise Invalid("length")
    high = 0
    if len(b3) > 32 and b3[32:33] == b"-":
        high = strtoull16(b3[:16])
        low = strtoull16(b3[16:32])
        pos = 32
    else:
        low = strtoull16(b3[:16])
        pos = 16
    if b3[pos : pos + 1] != b"-":
        raise Invalid("span id")
    pos += 1
    span = strtoull16(b3[pos : pos + 16])
    pos += 16
    parent = 0
    if len(b3) > pos:
        if b3[pos : pos + 1] != b"-":
            raise Invalid("sampling")
        pos += 1
        if len(b3) == pos + 1:
            if b3[pos : pos + 1] not in (b"0", b"1", b"d"):
                raise Invalid("sampling flag")
        else:
            if len(b3) != pos + 18 or b3[pos : pos + 1] not in (b"0", b"1", b"d"):
                raise Invalid("parent")
            if b3[pos + 1 : pos + 2] != b"-":
                raise Invalid("parent")
            parent = strtoull16(b3[pos + 2 :])
    return Context(high, low, span, parent, is_sampled)


def extract(get: Callable[[bytes], bytes | None], is_sampled: bool) -> Context | None:
    """Envoy's extractSpanContext: the incoming context, None when there is none; Invalid when a
    present one is malformed.  A parent id of 0 stands for none."""
    b3 = get(B3)
    if b3 is not None:
        return _single(b3, is_sampled)
    tid = get(TRACE_ID)
    sid = get(SPAN_ID)
    if tid is None or sid is None:
        return None
    high = 0
    if len(tid) == 32:
        high = strtoull16(tid[:16])
        low = strtoull16(tid[16:])
    else:
        low = strtoull16(tid)
    span = strtoull16(sid)
    pid = get(PARENT_ID)
    parent = strtoull16(pid) if pid else 0
    return Context(high, low, span, parent, is_sampled)


def start_span(
    incoming: Context | None,
    is_sampled: bool,
    egress: bool,
    shared: bool,
    wide: bool,
    rand: Callable[[], int],
) -> Context:
    """Driver::startSpan / Tracer::startSpan: the span whose context goes upstream.  `wide`:
    trace_id_128bit; `shared`: shared_span_context; `rand()`: a random 64-bit int."""
    if incoming is None:
        span = rand()
        high = rand() if wide else 0
        return Context(high, span, span, None, is_sampled)
    if egress or not shared:
        return Context(incoming.trace_high, incoming.trace_low, rand(), incoming.span, is_sampled)
    # Ingress sharing the client's span (Zipkin's shared server span): its ids as they came.
    return Context(
        incoming.trace_high, incoming.trace_low, incoming.span, incoming.parent or None, is_sampled
    )


def inject(ctx: Context, single: bool) -> list[tuple[bytes, bytes]]:
    """Span::injectContext: the headers to set (each replacing any incoming value)."""
    flag = b"1" if ctx.sampled else b"0"
    if single:
        value = b"%s-%016x-%s" % (ctx.trace_hex(), ctx.span, flag)
        if ctx.parent is not None:
            value += b"-%016x" % ctx.parent
        return [(B3, value)]
    out = [(TRACE_ID, ctx.trace_hex()), (SPAN_ID, b"%016x" % ctx.span)]
    if ctx.parent is not None:
        out.append((PARENT_ID, b"%016x" % ctx.parent))
    out.append((SAMPLED, flag))
    return out


def propagate(
    get: Callable[[bytes], bytes | None],
    traced: bool,
    egress: bool,
    shared: bool,
    wide: bool,
    rand: Callable[[], int],
) -> list[tuple[bytes, bytes]]:
    """The B3 headers Envoy's Zipkin tracer sets on the upstream request ([] when it makes a
    NullSpan).  `traced`: the connection manager's tracing decision."""
    is_sampled = sampled(get, traced)
    try:
        incoming = extract(get, is_sampled)
    except Invalid:
        return []
    ctx = start_span(incoming, is_sampled, egress, shared, wide, rand)
    return inject(ctx, get(B3) is not None)

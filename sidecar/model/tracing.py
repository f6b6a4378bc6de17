"""What an HTTP connection manager is told about tracing and request ids (Envoy's
HttpConnectionManager.tracing and request_id_extension), kept as configured.

sidecar has no tracer: no span is started or reported.  What Envoy does on the wire is done
(http/trace_reason.py: the x-request-id trace reason and Route.decorator's
x-envoy-decorator-operation; http/b3.py: a Zipkin provider's B3 headers); translate/tracing.py says
once per process what is not."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CustomTag:
    """Tracing.custom_tags entry: the tag name and where its value comes from ("literal",
    "environment", "request_header", "metadata"), with the literal value or the source's name."""

    tag: str
    kind: str
    value: str = ""


@dataclass(frozen=True, slots=True)
class Zipkin:
    """envoy.config.trace.v3.ZipkinConfig, the part that shapes the B3 headers (http/b3.py); the
    collector fields are kept for config dumps only (no span is reported)."""

    trace_id_128bit: bool = False
    shared_span_context: bool = True
    collector_cluster: str = ""


@dataclass(frozen=True, slots=True)
class Tracing:
    """HttpConnectionManager.Tracing.  Percentages as Envoy reads them (defaults 100 / 100 / 100);
    `provider` is the provider's typed_config type name ("" for none: the bootstrap's)."""

    client_sampling: float = 100.0
    random_sampling: float = 100.0
    overall_sampling: float = 100.0
    verbose: bool = False
    max_path_tag_length: int = 256
    custom_tags: tuple[CustomTag, ...] = ()
    spawn_upstream_span: bool = False
    provider: str = ""
    provider_name: str = ""
    # Envoy's operation name: Egress on a listener with traffic_direction OUTBOUND, else Ingress.
    # It decides which way Route.decorator's x-envoy-decorator-operation goes (http/trace_reason.py).
    egress: bool = False
    # The Zipkin provider (inline, or the bootstrap's tracing.http): B3 headers go upstream.
    zipkin: Zipkin | None = None


@dataclass(frozen=True, slots=True)
class RequestIdExtension:
    """envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig (both default true).  Envoy uses them
    only on a tracing decision (packing the reason into the UUID's variant nibble, and sampling by
    the id): with no tracer the x-request-id on the wire is the same either way."""

    pack_trace_reason: bool = True
    use_request_id_for_trace_sampling: bool = True


DEFAULT_REQUEST_ID = RequestIdExtension()

"""envoy.filters.http.fault's config (HTTPFault) -> http/filters/fault.FaultSettings.

Used at filter level (lds.py) and per route through typed_per_filter_config (rds.py), which is how
Istio sends a VirtualService's fault section."""

from __future__ import annotations

from typing import Any

from sidecar.http.filters.fault import DENOMINATORS, FaultSettings, Percent
from sidecar.translate.common import enum_name, type_name, typed_config
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields

FAULT_TYPE = "envoy.extensions.filters.http.fault.v3.HTTPFault"
HTTP_RBAC_PER_ROUTE_TYPE = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
_TYPED_STRUCT_TYPES = ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct")

# Runtime keys change nothing without a runtime layer; the per-downstream-cluster stats are not kept.
_FAULT_IGNORED = (
    "delay_percent_runtime",
    "abort_percent_runtime",
    "delay_duration_runtime",
    "abort_http_status_runtime",
    "max_active_faults_runtime",
    "response_rate_limit_percent_runtime",
    "abort_grpc_status_runtime",
    "disable_downstream_cluster_stats",
    "filter_metadata",
)


def _fault_percent(pb: Any, path: str) -> Percent:
    """type.v3.FractionalPercent; unset is the proto default, 0 out of HUNDRED (never)."""
    if not pb.HasField("percentage"):
        return Percent(0, 100)
    p = pb.percentage
    return Percent(p.numerator, DENOMINATORS[enum_name(p, "denominator", f"{path}.percentage")])


def translate_fault(pb: Any, path: str) -> FaultSettings:
    """extensions.filters.http.fault.v3.HTTPFault -> FaultSettings (http/filters/fault.py)."""
    check_fields(
        pb,
        path,
        handled=("delay", "abort", "upstream_cluster", "headers", "downstream_nodes", "max_active_faults"),
        ignored=_FAULT_IGNORED,
    )
    kw: dict[str, Any] = {}
    if pb.HasField("delay"):
        d, dp = pb.delay, f"{path}.delay"
        check_fields(d, dp, handled=("fixed_delay", "header_delay", "percentage"))
        which = d.WhichOneof("fault_delay_secifier")
        if which is None:
            raise ConfigError(dp, 'field: "fault_delay_secifier", reason: is required')
        if which == "fixed_delay":
            ms = d.fixed_delay.seconds * 1000 + d.fixed_delay.nanos // 1_000_000
            if d.fixed_delay.seconds < 0 or (ms <= 0 and d.fixed_delay.nanos <= 0):
                raise ConfigError(f"{dp}.fixed_delay", "value must be greater than 0s")
            kw["delay_ms"] = ms
        else:
            kw["delay_from_header"] = True
        kw["delay"] = _fault_percent(d, dp)
    if pb.HasField("abort"):
        a, ap = pb.abort, f"{path}.abort"
        check_fields(a, ap, handled=("http_status", "grpc_status", "header_abort", "percentage"))
        which = a.WhichOneof("error_type")
        if which is None:
            raise ConfigError(ap, 'field: "error_type", reason: is required')
        if which == "http_status":
            if not 200 <= a.http_status < 600:
                raise ConfigError(f"{ap}.http_status", "value must be inside range [200, 600)")
            kw["abort_http"] = a.http_status
        elif which == "grpc_status":
            kw["abort_grpc"] = a.grpc_status
        else:
            kw["abort_from_header"] = True
        kw["abort"] = _fault_percent(a, ap)
    from sidecar.translate.route_match import translate_header_matcher  # imports routing: keep it lazy

    headers = tuple(translate_header_matcher(h, f"{path}.headers[{i}]") for i, h in enumerate(pb.headers))
    return FaultSettings(
        upstream_cluster=pb.upstream_cluster,
        headers=headers,
        downstream_nodes=frozenset(pb.downstream_nodes),
        max_active_faults=pb.max_active_faults.value if pb.HasField("max_active_faults") else None,
        **kw,
    )


def per_filter_config(name: str, any_pb: Any, path: str) -> object:
    """A route's typed_per_filter_config entry: the fault filter's is translated (it is how Istio
    sends faults); any other is kept as the raw Any, as before."""
    if type_name(any_pb.type_url) == HTTP_RBAC_PER_ROUTE_TYPE:
        from sidecar.translate.rbac import translate_rbac_per_route  # imports rds lazily too

        return translate_rbac_per_route(typed_config(any_pb, path), path)
    if type_name(any_pb.type_url) == "envoy.extensions.filters.http.cors.v3.CorsPolicy":
        # The CORS filter is accepted only as a no-op (translate/istio.py): a policy would be faked.
        raise ConfigError(path, "CORS policies are not supported by sidecar yet")
    if type_name(any_pb.type_url) not in (FAULT_TYPE, *_TYPED_STRUCT_TYPES):
        return any_pb
    msg = typed_config(any_pb, path)
    if msg.DESCRIPTOR.full_name != FAULT_TYPE:
        return any_pb
    return translate_fault(msg, path)

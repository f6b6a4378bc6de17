"""config.cluster.v3.OutlierDetection -> model.outlier.OutlierDetection (a cluster's outlier_detection).

Validation is the proto's (percentages <= 100, durations > 0) plus DetectorImpl::create's
max_ejection_time >= base_ejection_time.  Local-origin success-rate / failure-percentage ejection
(enforcing_local_origin_success_rate, enforcing_failure_percentage_local_origin), extension monitors
and ejection-time jitter are not implemented and refused when set; the active-health-check uneject
flag has nothing to act on (clusters have no health_checks here) and is ignored."""

from __future__ import annotations

from envoy.config.cluster.v3 import outlier_detection_pb2

from sidecar.model.outlier import OutlierDetection
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields, opt_duration, opt_uint

_COUNTS = (
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "consecutive_local_origin_failure",
    "success_rate_minimum_hosts",
    "success_rate_request_volume",
    "success_rate_stdev_factor",
    "failure_percentage_minimum_hosts",
    "failure_percentage_request_volume",
)
_PERCENTS = (
    "max_ejection_percent",
    "enforcing_consecutive_5xx",
    "enforcing_consecutive_gateway_failure",
    "enforcing_consecutive_local_origin_failure",
    "enforcing_success_rate",
    "failure_percentage_threshold",
    "enforcing_failure_percentage",
)
_DURATIONS = ("interval", "base_ejection_time", "max_ejection_time")
_DEFAULTS = OutlierDetection()


def translate_outlier_detection(od: outlier_detection_pb2.OutlierDetection, path: str) -> OutlierDetection:
    check_fields(
        od,
        path,
        handled=(
            *_COUNTS,
            *_PERCENTS,
            *_DURATIONS,
            "split_external_local_origin_errors",
            "always_eject_one_host",
            "max_ejection_time_jitter",
        ),
        ignored=("successful_active_health_check_uneject_host",),
    )
    if od.HasField("max_ejection_time_jitter") and opt_duration(od, "max_ejection_time_jitter", 0.0) > 0:
        raise ConfigError(f"{path}.max_ejection_time_jitter", "field is not supported by sidecar yet")
    kw: dict[str, object] = {}
    for name in _COUNTS:
        kw[name] = opt_uint(od, name, getattr(_DEFAULTS, name))
    for name in _PERCENTS:
        v = opt_uint(od, name, getattr(_DEFAULTS, name))
        if v > 100:
            raise ConfigError(f"{path}.{name}", "value must be less than or equal to 100")
        kw[name] = v
    for name in ("interval", "base_ejection_time", "max_ejection_time"):
        if od.HasField(name) and opt_duration(od, name, 0.0) <= 0:
            raise ConfigError(f"{path}.{name}", "value must be greater than 0s")
    interval = opt_duration(od, "interval", _DEFAULTS.interval)
    base = opt_duration(od, "base_ejection_time", _DEFAULTS.base_ejection_time)
    # Unset: the default (300 s) or base_ejection_time, whichever is larger (DetectorConfig).
    max_time = opt_duration(od, "max_ejection_time", max(_DEFAULTS.max_ejection_time, base))
    if max_time < base:
        # Envoy's wording (DetectorImpl::create).
        raise ConfigError(
            path, "outlier detector's max_ejection_time cannot be smaller than base_ejection_time"
        )
    return OutlierDetection(
        interval=interval,
        base_ejection_time=base,
        max_ejection_time=max_time,
        split_external_local_origin_errors=od.split_external_local_origin_errors,
        always_eject_one_host=bool(opt_uint(od, "always_eject_one_host", 0)),
        **kw,  # type: ignore[arg-type]
    )

"""route.v3.RetryPolicy -> model.retry.RetryPolicy (route and virtual host level)."""

from __future__ import annotations

import logging

from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from google.protobuf.duration_pb2 import Duration

from sidecar.model.retry import GRPC_CONDITIONS, HTTP_CONDITIONS, RetryPolicy
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields, duration

log = logging.getLogger("sidecar.config")

# Conditions Envoy knows that the sidecar does not implement yet: refused rather than ignored.
_NOT_YET = frozenset({"http3-post-connect-failure"})
_PREVIOUS_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"


def milliseconds(d: Duration, path: str) -> float:
    """A Duration in seconds at Envoy's millisecond precision (DurationUtil::durationToMilliseconds:
    nanoseconds below a millisecond are dropped; a negative duration is refused)."""
    if d.seconds < 0 or d.nanos < 0 or d.seconds > 315_576_000_000:
        raise ConfigError(path, "Duration out-of-range")
    return (d.seconds * 1000 + d.nanos // 1_000_000) / 1000


def translate_retry_policy(pb: rc_pb2.RetryPolicy, path: str) -> RetryPolicy:
    check_fields(
        pb,
        path,
        handled=(
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "per_try_idle_timeout",
            "retriable_status_codes",
            "retriable_headers",
            "retry_back_off",
            "rate_limited_retry_back_off",
            "retry_host_predicate",
            "host_selection_retry_max_attempts",
        ),
    )
    tokens = frozenset(t.strip() for t in pb.retry_on.split(",") if t.strip())
    for t in sorted(tokens):
        if t in _NOT_YET:
            raise ConfigError(f"{path}.retry_on", f"retry condition '{t}' is not supported by sidecar yet")
        if t not in HTTP_CONDITIONS and t not in GRPC_CONDITIONS:
            # Envoy ignores retry_on values it does not know; so do we, loudly.
            log.warning("%s.retry_on: unknown retry condition '%s' ignored (as Envoy does)", path, t)
    kw: dict[str, object] = {"retry_on": tokens}
    if pb.HasField("num_retries"):
        kw["num_retries"] = pb.num_retries.value
    if pb.HasField("per_try_timeout"):
        kw["per_try_timeout"] = milliseconds(pb.per_try_timeout, f"{path}.per_try_timeout")
    if pb.HasField("per_try_idle_timeout"):
        kw["per_try_idle_timeout"] = milliseconds(pb.per_try_idle_timeout, f"{path}.per_try_idle_timeout")
    if pb.retriable_headers:
        from sidecar.translate.route_match import translate_header_matcher  # imports routing: keep it lazy

        kw["retriable_headers"] = tuple(
            translate_header_matcher(h, f"{path}.retriable_headers[{i}]") for i, h in enumerate(pb.retriable_headers)
        )
    if pb.retriable_status_codes:
        kw["retriable_status_codes"] = frozenset(pb.retriable_status_codes)
    if pb.HasField("retry_back_off"):
        b = pb.retry_back_off
        bp = f"{path}.retry_back_off"
        check_fields(b, bp, handled=("base_interval", "max_interval"))
        base = duration(b.base_interval)
        if base <= 0:
            raise ConfigError(f"{bp}.base_interval", "value must be greater than 0s")
        kw["base_interval"] = base
        # Envoy: max_interval defaults to 10 times base_interval and may not be below it.
        mx = duration(b.max_interval) if b.HasField("max_interval") else base * 10
        if mx < base:
            raise ConfigError(f"{bp}.max_interval", "max_interval must be greater than or equal to base_interval")
        kw["max_interval"] = mx
    if pb.HasField("rate_limited_retry_back_off"):
        rl = pb.rate_limited_retry_back_off
        rp = f"{path}.rate_limited_retry_back_off"
        check_fields(rl, rp, handled=("reset_headers", "max_interval"))
        if not rl.reset_headers:
            raise ConfigError(f"{rp}.reset_headers", "value must contain at least 1 item(s)")
        formats = rc_pb2.RetryPolicy.ResetHeaderFormat
        kw["reset_headers"] = tuple(
            (h.name.lower().encode(), formats.Name(h.format)) for h in rl.reset_headers
        )
        if rl.HasField("max_interval"):
            mx = duration(rl.max_interval)
            if mx < 0.001:
                raise ConfigError(f"{rp}.max_interval", "value must be greater than or equal to 1ms")
            kw["reset_max_interval"] = mx
    for i, pred in enumerate(pb.retry_host_predicate):
        pp = f"{path}.retry_host_predicate[{i}]"
        if pred.typed_config.type_url != _PREVIOUS_HOSTS:
            raise ConfigError(pp, f"retry host predicate '{pred.name}' is not supported by sidecar yet")
        kw["avoid_previous_hosts"] = True
    if pb.host_selection_retry_max_attempts:
        kw["host_selection_retry_max_attempts"] = pb.host_selection_retry_max_attempts
    return RetryPolicy(**kw)  # type: ignore[arg-type]

"""config.core.v3.HealthCheck -> model.health_check.HealthCheck (a cluster's health_checks).

HTTP/1.1 and TCP checks are run (upstream/health_check.py); gRPC checks (they need an HTTP/2
upstream), custom checkers, TLS options for the probe and PROXY protocol headers are refused with
their field path, as is a second health check.  Validation copies the proto's rules (timeout,
interval, both thresholds and a checker are required; durations > 0) and the checkers' constructors
(Envoy's wording for status ranges, payload hex, a body with a body-less method, receive larger than
response_buffer_size).  Event logging fields change nothing observable here and are ignored."""

from __future__ import annotations

from typing import Any

from sidecar.model.health_check import DEFAULT_EXPECTED_STATUSES, HealthCheck, HttpCheck, TcpCheck
from sidecar.translate.common import enum_name
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields, duration, opt_duration, opt_uint
from sidecar.translate.headers import translate_header_value_option
from sidecar.translate.route_match import translate_string_matcher

_DURATIONS = (
    "no_traffic_interval",
    "no_traffic_healthy_interval",
    "unhealthy_interval",
    "unhealthy_edge_interval",
    "healthy_edge_interval",
)
_BODYLESS = ("GET", "HEAD", "DELETE", "TRACE")


def translate_health_checks(checks: list[Any], path: str) -> tuple[HealthCheck, ...]:
    """A cluster's `health_checks` (`path` is the list's path)."""
    if len(checks) > 1:
        raise ConfigError(f"{path}[1]", "only one health check per cluster is supported by sidecar yet")
    return tuple(translate_health_check(hc, f"{path}[{i}]") for i, hc in enumerate(checks))


def translate_health_check(pb: Any, path: str) -> HealthCheck:
    check_fields(
        pb,
        path,
        handled=(
            "timeout",
            "interval",
            "initial_jitter",
            "interval_jitter",
            "interval_jitter_percent",
            "unhealthy_threshold",
            "healthy_threshold",
            "reuse_connection",
            "http_health_check",
            "tcp_health_check",
            "grpc_health_check",  # refused below, with a reason
            "custom_health_check",
            "transport_socket_match_criteria",
            *_DURATIONS,
        ),
        ignored=(
            "event_log_path",
            "event_logger",
            "event_service",
            "always_log_health_check_failures",
            "always_log_health_check_success",
        ),
    )
    for name in ("timeout", "interval", "unhealthy_threshold", "healthy_threshold"):
        if not pb.HasField(name):
            raise ConfigError(f"{path}.{name}", "value is required")
    for name in ("timeout", "interval", *_DURATIONS):
        if pb.HasField(name) and duration(getattr(pb, name)) <= 0:
            raise ConfigError(f"{path}.{name}", "value must be greater than 0s")
    for name in ("initial_jitter", "interval_jitter"):
        if pb.HasField(name) and duration(getattr(pb, name)) < 0:
            raise ConfigError(f"{path}.{name}", "value must be greater than or equal to 0s")
    which = pb.WhichOneof("health_checker")
    if which is None:
        raise ConfigError(path, 'field: "health_checker", reason: is required')
    http = tcp = None
    if which == "http_health_check":
        http = _http(pb.http_health_check, f"{path}.http_health_check")
    elif which == "tcp_health_check":
        tcp = _tcp(pb.tcp_health_check, f"{path}.tcp_health_check")
    else:
        raise ConfigError(
            f"{path}.{which}", f"{which} is not supported by sidecar yet (HTTP and TCP checks are)"
        )
    return HealthCheck(
        timeout=duration(pb.timeout),
        interval=duration(pb.interval),
        unhealthy_threshold=pb.unhealthy_threshold.value,
        healthy_threshold=pb.healthy_threshold.value,
        http=http,
        tcp=tcp,
        initial_jitter=opt_duration(pb, "initial_jitter", 0.0),
        interval_jitter=opt_duration(pb, "interval_jitter", 0.0),
        interval_jitter_percent=pb.interval_jitter_percent,
        reuse_connection=bool(opt_uint(pb, "reuse_connection", 1)),
        no_traffic_interval=opt_duration(pb, "no_traffic_interval", 60.0),
        no_traffic_healthy_interval=opt_duration(pb, "no_traffic_healthy_interval", 0.0),
        unhealthy_interval=opt_duration(pb, "unhealthy_interval", 0.0),
        unhealthy_edge_interval=opt_duration(pb, "unhealthy_edge_interval", 0.0),
        healthy_edge_interval=opt_duration(pb, "healthy_edge_interval", 0.0),
        transport_socket_match_criteria=_match_criteria(pb),
    )


def _match_criteria(pb: Any) -> tuple[tuple[str, str], ...] | None:
    """transport_socket_match_criteria as the labels a transport_socket_matches entry is matched
    against (HealthCheckerImplBase::transportSocketMatchMetadata)."""
    if not pb.HasField("transport_socket_match_criteria"):
        return None
    from sidecar.translate.cds import struct_labels  # cds.py imports this module: keep it lazy

    return struct_labels(pb.transport_socket_match_criteria)


def _payload(pb: Any, path: str) -> bytes:
    """A Payload: `text` is hex (PayloadMatcher::loadProtoBytes), `binary` raw bytes."""
    check_fields(pb, path, handled=("text", "binary"))
    which = pb.WhichOneof("payload")
    if which == "binary":
        if not pb.binary:
            raise ConfigError(f"{path}.binary", "value length must be at least 1 bytes")
        return bytes(pb.binary)
    if which is None:
        raise ConfigError(path, 'field: "payload", reason: is required')
    if not pb.text:
        raise ConfigError(f"{path}.text", "value length must be at least 1 characters")
    try:
        if len(pb.text) % 2:
            raise ValueError
        return bytes.fromhex(pb.text)
    except ValueError:
        raise ConfigError(f"{path}.text", f"invalid hex string '{pb.text}'") from None


def _ranges(ranges: Any, kind: str, path: str) -> tuple[tuple[int, int], ...]:
    out = []
    for i, r in enumerate(ranges):
        rp = f"{path}[{i}]"
        check_fields(r, rp, handled=("start", "end"))
        start, end = r.start, r.end
        # HttpStatusChecker::validateRange's wording.
        if start >= end:
            raise ConfigError(
                rp,
                f"Invalid http {kind} status range: expecting start < end, but found start={start} and end={end}",
            )
        if start < 100:
            raise ConfigError(
                rp, f"Invalid http {kind} status range: expecting start >= 100, but found start={start}"
            )
        if end > 600:
            raise ConfigError(
                rp, f"Invalid http {kind} status range: expecting end <= 600, but found end={end}"
            )
        out.append((start, end))
    return tuple(out)


def _http(pb: Any, path: str) -> HttpCheck:
    check_fields(
        pb,
        path,
        handled=(
            "host",
            "path",
            "send",
            "receive",
            "response_buffer_size",
            "request_headers_to_add",
            "request_headers_to_remove",
            "expected_statuses",
            "retriable_statuses",
            "codec_client_type",
            "service_name_matcher",
            "method",
        ),
    )
    if not pb.path:
        raise ConfigError(f"{path}.path", "value length must be at least 1 characters")
    for name in ("host", "path"):
        if any(c in getattr(pb, name) for c in "\r\n\0"):
            raise ConfigError(f"{path}.{name}", "value does not match regex pattern of a header value")
    codec = enum_name(pb, "codec_client_type", path)
    if codec != "HTTP1":
        raise ConfigError(
            f"{path}.codec_client_type", f"{codec} health checks are not supported by sidecar yet"
        )
    method = enum_name(pb, "method", path)
    if method == "CONNECT":
        raise ConfigError(f"{path}.method", "value must not be in list [CONNECT]")
    if method == "METHOD_UNSPECIFIED":
        method = "GET"
    send = b""
    if pb.HasField("send"):
        if method in _BODYLESS:
            # HttpHealthCheckerImpl's wording.
            raise ConfigError(
                f"{path}.send",
                f"HTTP health check cannot specify a request payload with method '{method}'. Only methods "
                "that support a request body (POST, PUT, PATCH, OPTIONS) can be used with payload.",
            )
        send = _payload(pb.send, f"{path}.send")
    receive = tuple(_payload(p, f"{path}.receive[{i}]") for i, p in enumerate(pb.receive))
    buffer_size = opt_uint(pb, "response_buffer_size", 1024)
    total = sum(len(r) for r in receive)
    if buffer_size and total > buffer_size:
        raise ConfigError(
            f"{path}.receive",
            f"The expected response length '{total}' is over than http health response buffer size '{buffer_size}'",
        )
    if len(pb.request_headers_to_add) > 1000:
        raise ConfigError(f"{path}.request_headers_to_add", "value must contain no more than 1000 item(s)")
    adds = []
    for i, h in enumerate(pb.request_headers_to_add):
        hp = f"{path}.request_headers_to_add[{i}]"
        opt = translate_header_value_option(h, hp)
        if opt.dynamic:
            raise ConfigError(
                f"{hp}.header.value",
                "format commands in health check headers are not supported by sidecar yet",
            )
        adds.append(opt)
    removes = []
    for i, name in enumerate(pb.request_headers_to_remove):
        if not name:
            raise ConfigError(
                f"{path}.request_headers_to_remove[{i}]", "value length must be at least 1 characters"
            )
        removes.append(name.lower().encode())
    return HttpCheck(
        path=pb.path,
        host=pb.host,
        method=method,
        send=send,
        receive=receive,
        response_buffer_size=buffer_size,
        request_headers_to_add=tuple(adds),
        request_headers_to_remove=tuple(removes),
        expected_statuses=_ranges(pb.expected_statuses, "expected", f"{path}.expected_statuses")
        or DEFAULT_EXPECTED_STATUSES,
        retriable_statuses=_ranges(pb.retriable_statuses, "retriable", f"{path}.retriable_statuses"),
        service_name_matcher=(
            translate_string_matcher(pb.service_name_matcher, f"{path}.service_name_matcher")
            if pb.HasField("service_name_matcher")
            else None
        ),
    )


def _tcp(pb: Any, path: str) -> TcpCheck:
    check_fields(pb, path, handled=("send", "receive"))
    send = _payload(pb.send, f"{path}.send") if pb.HasField("send") else b""
    receive = tuple(_payload(p, f"{path}.receive[{i}]") for i, p in enumerate(pb.receive))
    return TcpCheck(send=send, receive=receive)

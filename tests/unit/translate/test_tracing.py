"""translate/tracing.py: HCM tracing, request_id_extension and upgrade_configs (and the route's
decorator / upgrade_configs / max_grpc_timeout in rds.py), accepted and refused by path."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.trace.v3 import zipkin_pb2  # noqa: F401  (registers ZipkinConfig for ParseDict)
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from sidecar.model.tracing import CustomTag, RequestIdExtension
from sidecar.translate import tracing
from sidecar.translate.errors import ConfigError
from sidecar.translate.lds import translate_listener
from sidecar.translate.rds import translate_route
from tests.support import istio_config as ic

T = "type.googleapis.com/"


def _hcm(cfg: dict[str, Any]) -> hcm_pb2.HttpConnectionManager:
    return json_format.ParseDict(cfg, hcm_pb2.HttpConnectionManager())


def test_tracing_fields_and_the_warning_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tracing, "_warned", False)
    caplog.set_level(logging.WARNING, logger="sidecar.config")
    pb = _hcm(
        {
            "tracing": {
                "random_sampling": {"value": 1},
                "custom_tags": [
                    {"tag": "a", "literal": {"value": "v"}},
                    {"tag": "b", "request_header": {"name": "x-h"}},
                ],
                "provider": {
                    "name": "envoy.tracers.zipkin",
                    "typed_config": {
                        "@type": T + "envoy.config.trace.v3.ZipkinConfig",
                        "collector_cluster": "z",
                    },
                },
            }
        }
    )
    for _ in range(2):
        t = tracing.translate_tracing(pb.tracing, "p.tracing")
    assert (t.client_sampling, t.random_sampling, t.overall_sampling) == (100.0, 1.0, 100.0)
    assert t.custom_tags == (CustomTag("a", "literal", "v"), CustomTag("b", "request_header", "x-h"))
    assert t.provider == "envoy.config.trace.v3.ZipkinConfig"
    warnings = [r.getMessage() for r in caplog.records if "no tracer" in r.getMessage()]
    assert len(warnings) == 1 and "x-b3" in warnings[0]


@pytest.mark.parametrize(
    ("cfg", "path", "reason"),
    [
        ({"tracing": {"overall_sampling": {"value": -1}}}, "p.tracing.overall_sampling.value", "range"),
        ({"tracing": {"custom_tags": [{"tag": "a"}]}}, "p.tracing.custom_tags[0]", "is required"),
        ({"upgrade_configs": [{"upgrade_type": ""}]}, "p.upgrade_configs[0].upgrade_type", "at least 1"),
        ({"upgrade_configs": [{"upgrade_type": "connect"}]}, "p.upgrade_configs[0].upgrade_type", "CONNECT"),
        (
            {"upgrade_configs": [{"upgrade_type": "websocket"}, {"upgrade_type": "WebSocket"}]},
            "p.upgrade_configs[1]",
            "multiple upgrade configs",
        ),
        (
            {"upgrade_configs": [{"upgrade_type": "websocket", "filters": [{"name": "f"}]}]},
            "p.upgrade_configs[0].filters",
            "not supported",
        ),
        (
            {"request_id_extension": {"typed_config": {"@type": T + "google.protobuf.Empty"}}},
            "p.request_id_extension.typed_config",
            "not supported",
        ),
    ],
)
def test_refusals(cfg: dict[str, Any], path: str, reason: str) -> None:
    pb = _hcm(cfg)
    with pytest.raises(ConfigError) as e:
        if "tracing" in cfg:
            tracing.translate_tracing(pb.tracing, "p.tracing")
        elif "upgrade_configs" in cfg:
            tracing.translate_upgrade_configs(pb.upgrade_configs, "p")
        else:
            tracing.translate_request_id(pb, "p")
    assert e.value.path == path
    assert reason in e.value.reason


def test_upgrade_types_and_request_id() -> None:
    pb = _hcm(
        {
            "upgrade_configs": [
                {"upgrade_type": "WebSocket"},
                {"upgrade_type": "spdy/3.1", "enabled": False},
            ],
            "request_id_extension": {
                "typed_config": {
                    "@type": T + "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
                    "pack_trace_reason": False,
                }
            },
        }
    )
    assert tracing.translate_upgrade_configs(pb.upgrade_configs, "p") == ("websocket",)
    assert tracing.translate_request_id(pb, "p") == RequestIdExtension(pack_trace_reason=False)
    assert tracing.translate_request_id(_hcm({}), "p") == RequestIdExtension()


def _route(extra: dict[str, Any], action: dict[str, Any] | None = None) -> rc_pb2.Route:
    return json_format.ParseDict(
        {"match": {"prefix": "/"}, "route": {"cluster": "c", **(action or {})}, **extra}, rc_pb2.Route()
    )


def test_route_fields() -> None:
    r = translate_route(
        _route(
            {"decorator": {"operation": "op", "propagate": False}},
            {
                "max_grpc_timeout": "1.5s",
                "grpc_timeout_offset": "0.1s",
                "upgrade_configs": [{"upgrade_type": "WebSocket", "enabled": False}],
            },
        ),
        "R",
    )
    assert (r.decorator_operation, r.decorator_propagate) == ("op", False)
    assert r.action.max_grpc_timeout == 1.5 and r.action.grpc_timeout_offset == 0.1  # type: ignore[union-attr]
    assert r.action.upgrade_configs == (("websocket", False),)  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as e:
        translate_route(_route({"decorator": {"operation": ""}}), "R")
    assert e.value.path == "R.decorator.operation"
    with pytest.raises(ConfigError) as e:
        translate_route(_route({}, {"upgrade_configs": [{"upgrade_type": "a"}, {"upgrade_type": "A"}]}), "R")
    assert e.value.path == "R.route.upgrade_configs[1]"


def test_outbound_listener_traces_as_egress() -> None:
    from sidecar.model.listener import HttpConnectionManager

    out = translate_listener(ic.outbound_http(), "o")
    inbound = translate_listener(ic.virtual_inbound(), "i")

    def directions(lst: Any) -> set[bool]:
        chains = [*lst.filter_chains, *([lst.default_filter_chain] if lst.default_filter_chain else [])]
        return {f.tracing.egress for c in chains for f in c.filters if isinstance(f, HttpConnectionManager)}

    assert directions(out) == {True}
    assert directions(inbound) == {False}

"""Translating what issue 3 asked of the router: a route's idle_timeout and max_stream_duration,
retry_policy.per_try_idle_timeout, a cookie hash policy with a ttl, and the connection manager's
internal_address_config (translate/hcm_internal.py); and what the model derives from them."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from sidecar.model.retry import RetryPolicy
from sidecar.model.route import (
    HashPolicy,
    HashPolicyKind,
    InternalAddressConfig,
    MaxStreamDuration,
    RouteAction,
)
from sidecar.translate.errors import ConfigError
from sidecar.translate.hcm_internal import hcm_internal_address_config, translate_internal_address_config
from sidecar.translate.rds import translate_route_action


def action(**fields: Any) -> RouteAction:
    return translate_route_action(
        json_format.ParseDict({"cluster": "c", **fields}, rc_pb2.RouteAction()), "r"
    )


def test_idle_timeout() -> None:
    assert action().idle_timeout is None
    assert action(idle_timeout="0.3s").idle_timeout == 0.3
    assert action(idle_timeout="0s").idle_timeout == 0.0
    assert action(idle_timeout="0.0015s").idle_timeout == 0.001  # Envoy's millisecond precision
    assert action(idle_timeout="1s").stream_timers


def test_max_stream_duration() -> None:
    a = action(timeout="7s", max_stream_duration={"max_stream_duration": "0.3s"})
    assert a.max_stream_duration == MaxStreamDuration(max_stream_duration=0.3)
    # Envoy's "new timeouts": the route timeout is neither enforced nor announced by the router.
    assert (a.timeout, a.upstream_timeout, a.timeout_header) == (7.0, 0.0, b"")
    assert a.stream_timers
    g = action(max_stream_duration={"grpc_timeout_header_max": "0s", "grpc_timeout_header_offset": "0.1s"})
    assert g.max_stream_duration == MaxStreamDuration(
        grpc_timeout_header_max=0.0, grpc_timeout_header_offset=0.1
    )
    assert not action().stream_timers


def test_per_try_idle_timeout() -> None:
    a = action(retry_policy={"retry_on": "5xx", "per_try_idle_timeout": "0.2s", "per_try_timeout": "1s"})
    assert a.retry_policy is not None and a.retry_policy.per_try_idle_timeout == 0.2
    assert a.try_timers == (1.0, 0.2)
    assert a.timeout_header == b"1000"  # the per-try timeout is the tighter one
    assert action().try_timers is None


def test_per_try_timeout_not_below_the_route_timeout_is_dropped() -> None:
    a = action(timeout="1s", retry_policy={"retry_on": "5xx", "per_try_timeout": "1s"})
    assert (a.per_try, a.try_timers, a.timeout_header) == (0.0, None, b"1000")
    b = action(timeout="0s", retry_policy={"retry_on": "5xx", "per_try_timeout": "2s"})
    assert (b.per_try, b.timeout_header) == (2.0, b"2000")


@pytest.mark.parametrize("field", ["idle_timeout", "per_try_idle_timeout"])
def test_negative_durations_are_refused(field: str) -> None:
    fields: dict[str, Any] = (
        {"idle_timeout": "-1s"}
        if field == "idle_timeout"
        else {"retry_policy": {"retry_on": "5xx", field: "-1s"}}
    )
    with pytest.raises(ConfigError) as e:
        action(**fields)
    assert e.value.path.endswith(field)


def test_cookie_with_ttl() -> None:
    a = action(
        hash_policy=[
            {
                "cookie": {
                    "name": "sess",
                    "ttl": "60.9s",
                    "path": "/p",
                    "attributes": [{"name": "SameSite", "value": "Strict"}, {"name": "Secure"}],
                },
                "terminal": True,
            }
        ]
    )
    # Envoy keeps whole seconds of the ttl.
    assert a.hash_policy == (
        HashPolicy(
            HashPolicyKind.COOKIE,
            "sess",
            terminal=True,
            ttl=60,
            path="/p",
            attributes=(("SameSite", "Strict"), ("Secure", "")),
        ),
    )
    # Without a ttl, path and attributes shape nothing.
    b = action(hash_policy=[{"cookie": {"name": "sess", "path": "/p", "attributes": [{"name": "Secure"}]}}])
    assert b.hash_policy == (HashPolicy(HashPolicyKind.COOKIE, "sess"),)


def test_cookie_attribute_needs_a_name() -> None:
    with pytest.raises(ConfigError) as e:
        action(hash_policy=[{"cookie": {"name": "s", "ttl": "1s", "attributes": [{"value": "x"}]}}])
    assert e.value.path == "r.hash_policy[0].cookie.attributes[0].name"


def test_route_action_derived_fields_without_max_stream_duration() -> None:
    a = RouteAction(
        cluster="c", timeout=2.0, retry_policy=RetryPolicy(retry_on=frozenset({"5xx"}), per_try_timeout=0.5)
    )
    assert (a.upstream_timeout, a.per_try, a.timeout_header, a.try_timers) == (2.0, 0.5, b"500", (0.5, 0.0))
    assert RouteAction(cluster="c", timeout=1.005).timeout_header == b"1005"


def iac(data: dict[str, Any]) -> InternalAddressConfig:
    pb = json_format.ParseDict(data, hcm_pb2.HttpConnectionManager.InternalAddressConfig())
    return translate_internal_address_config(pb, "hcm.internal_address_config")


def test_internal_address_config() -> None:
    assert iac({}) == InternalAddressConfig()
    got = iac(
        {
            "unix_sockets": True,
            "cidr_ranges": [
                {"address_prefix": "10.1.2.3", "prefix_len": 8},
                {"address_prefix": "10.0.0.0", "prefix_len": 40},  # past the width: the whole address
                {"address_prefix": "fd00::", "prefix_len": 8},
                {"address_prefix": "1.2.3.4"},
            ],
        }
    )
    assert got == InternalAddressConfig(True, ("10.0.0.0/8", "10.0.0.0/32", "fd00::/8", "0.0.0.0/0"))


@pytest.mark.parametrize(
    ("cidr", "path", "reason"),
    [
        (
            {"address_prefix": "10.0.0.300", "prefix_len": 8},
            "cidr_ranges[0]",
            "invalid ip/mask combo '10.0.0.300/8'",
        ),
        ({"address_prefix": "fe80::1%eth0", "prefix_len": 8}, "cidr_ranges[0]", "invalid ip/mask combo"),
        ({"address_prefix": "", "prefix_len": 8}, "cidr_ranges[0].address_prefix", "at least 1 characters"),
        (
            {"address_prefix": "::1", "prefix_len": 200},
            "cidr_ranges[0].prefix_len",
            "less than or equal to 128",
        ),
    ],
)
def test_internal_address_config_refusals(cidr: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        iac({"cidr_ranges": [cidr]})
    assert e.value.path == f"hcm.internal_address_config.{path}"
    assert reason in str(e.value)


def test_hcm_hook() -> None:
    pb = json_format.ParseDict({"stat_prefix": "p"}, hcm_pb2.HttpConnectionManager())
    assert hcm_internal_address_config(pb, "hcm") is None
    pb.internal_address_config.SetInParent()
    assert hcm_internal_address_config(pb, "hcm") == InternalAddressConfig()

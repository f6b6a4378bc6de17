"""dynamic_resources / ConfigSource translation (sidecar/xds/config.py), the back-off policy, the
node (sidecar/xds/node.py), and the rule that importing the xDS client creates no gRPC state."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from google.protobuf import json_format

from sidecar.translate.errors import ConfigError
from sidecar.xds.config import (
    ApiType,
    Backoff,
    ConfigSource,
    DataSource,
    GrpcTarget,
    RateLimit,
    grpc_target_for,
    translate_config_source,
    translate_dynamic_resources,
)
from sidecar.xds.node import build_node, check_local_info

# The dynamic_resources pilot-agent writes (istio tools/packaging/common/envoy_bootstrap.json).
ISTIO = {
    "lds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
    "cds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
    "ads_config": {
        "api_type": "GRPC",
        "set_node_on_first_message_only": True,
        "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
    },
}


def dyn(data: dict[str, Any]) -> Any:
    pb = bootstrap_pb2.Bootstrap.DynamicResources()
    json_format.ParseDict(data, pb)
    return translate_dynamic_resources(pb)


def source(data: dict[str, Any]) -> ConfigSource:
    pb = config_source_pb2.ConfigSource()
    json_format.ParseDict(data, pb)
    return translate_config_source(pb, "x")


def refused(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        dyn(data)
    return info.value


def test_istio_bootstrap() -> None:
    d = dyn(ISTIO)
    assert d.ads is not None and d.ads.api_type is ApiType.GRPC and d.ads.node_on_first_message_only
    assert d.ads.grpc == GrpcTarget(cluster_name="xds-grpc", authority="xds-grpc")
    assert d.lds == ConfigSource(ads=True, initial_fetch_timeout=0.0)
    assert d.cds == ConfigSource(ads=True, initial_fetch_timeout=0.0)


def test_defaults() -> None:
    assert source({"ads": {}}).initial_fetch_timeout == 15.0  # Envoy's default
    d = dyn(
        {"ads_config": {"api_type": "DELTA_GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "x"}}]}}
    )
    assert d.ads.api_type is ApiType.DELTA_GRPC and d.ads.grpc.backoff == Backoff(0.5, 30.0)
    assert d.lds is None and d.cds is None


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        (
            {"ads_config": {"api_type": "GRPC", "transport_api_version": "V2",
                            "grpc_services": [{"envoy_grpc": {"cluster_name": "x"}}]}},
            "dynamic_resources.ads_config.transport_api_version",
            "V2 xDS transport protocol version is deprecated",
        ),
        ({"lds_config": {"ads": {}}}, "dynamic_resources.lds_config.ads", "needs dynamic_resources.ads_config"),
        ({"lds_config": {"path_config_source": {"path": "/x"}}}, "dynamic_resources.lds_config.path_config_source",
         "not supported"),
        ({"cds_config": {"path": "/x"}}, "dynamic_resources.cds_config.path", "not supported"),
        ({"cds_config": {"self": {}}}, "dynamic_resources.cds_config.self", "not supported"),
        ({"cds_config": {}}, "dynamic_resources.cds_config", "needs one of ads or api_config_source"),
        (
            {"ads_config": {"api_type": "REST", "cluster_names": ["a"], "refresh_delay": "1s"}},
            "dynamic_resources.ads_config.api_type",
            "ADS needs api_type GRPC or DELTA_GRPC",
        ),
        (
            {"ads_config": {"api_type": "AGGREGATED_GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "x"}}]}},
            "dynamic_resources.ads_config.api_type",
            "AGGREGATED_GRPC is not supported",
        ),
        (
            {"ads_config": {"api_type": "GRPC", "cluster_names": ["a"],
                            "grpc_services": [{"envoy_grpc": {"cluster_name": "x"}}]}},
            "dynamic_resources.ads_config.cluster_names",
            "must not have a cluster name",
        ),
        ({"ads_config": {"api_type": "GRPC"}}, "dynamic_resources.ads_config.grpc_services", "exactly one"),
        (
            {"cds_config": {"api_config_source": {"api_type": "REST", "cluster_names": ["a"]}}},
            "dynamic_resources.cds_config.api_config_source.refresh_delay",
            "refresh_delay is required",
        ),
        (
            {"cds_config": {"api_config_source": {"api_type": "REST", "refresh_delay": "1s",
                                                  "grpc_services": [{"envoy_grpc": {"cluster_name": "x"}}]}}},
            "dynamic_resources.cds_config.api_config_source.grpc_services",
            "must not have a gRPC service",
        ),
        (
            {"ads_config": {"api_type": "GRPC", "config_validators": [{"name": "v"}],
                            "grpc_services": [{"envoy_grpc": {"cluster_name": "x"}}]}},
            "dynamic_resources.ads_config.config_validators",
            "not supported",
        ),
        (
            {"ads_config": {"api_type": "GRPC", "grpc_services": [
                {"google_grpc": {"target_uri": "a:1", "call_credentials": [{"access_token": "t"}]}}]}},
            "dynamic_resources.ads_config.grpc_services[0].google_grpc.call_credentials",
            "not supported",
        ),
        (
            {"ads_config": {"api_type": "GRPC", "grpc_services": [
                {"envoy_grpc": {"cluster_name": "x"}, "initial_metadata": [{"key": ":path", "value": "v"}]}]}},
            "dynamic_resources.ads_config.grpc_services[0].initial_metadata[0].key",
            "invalid gRPC metadata key",
        ),
        (
            {"ads_config": {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "x",
             "retry_policy": {"retry_back_off": {"base_interval": "2s", "max_interval": "1s"}}}}]}},
            "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.retry_policy.retry_back_off.max_interval",
            "greater than or equal",
        ),
    ],
)  # fmt: skip
def test_refusals_name_the_field(data: dict[str, Any], path: str, words: str) -> None:
    err = refused(data)
    assert err.path == path and words in err.reason


def test_rest_source() -> None:
    src = source({"api_config_source": {"api_type": "REST", "cluster_names": ["rest"], "refresh_delay": "2s",
                                        "rate_limit_settings": {"max_tokens": 5}}})  # fmt: skip
    assert src.api is not None and src.api.api_type is ApiType.REST
    assert (src.api.rest_cluster, src.api.refresh_delay, src.api.request_timeout) == ("rest", 2.0, 1.0)
    assert src.api.rate_limit == RateLimit(max_tokens=5, fill_rate=10.0)


def test_grpc_service_details() -> None:
    src = source({"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [{
        "google_grpc": {
            "target_uri": "istiod.istio-system.svc:15012", "stat_prefix": "ignored",
            "channel_credentials": {"ssl_credentials": {"root_certs": {"filename": "/etc/ca.pem"},
                                                        "cert_chain": {"inline_string": "PEM"}}},
            "channel_args": {"args": {"grpc.keepalive_time_ms": {"int_value": 30000}}},
        },
        "initial_metadata": [{"key": "Authorization", "value": "Bearer t"}],
        "timeout": "5s",
    }]}})  # fmt: skip
    g = src.api.grpc if src.api else None
    assert g is not None and g.target_uri == "istiod.istio-system.svc:15012" and not g.cluster_name
    assert g.initial_metadata == (("authorization", "Bearer t"),)
    assert g.ssl is not None and g.ssl.root_certs == DataSource(filename="/etc/ca.pem")
    assert g.ssl.cert_chain == DataSource(inline=b"PEM") and g.ssl.private_key is None
    assert g.channel_args == (("grpc.keepalive_time_ms", 30000),)
    eg = source({"api_config_source": {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {
        "cluster_name": "xds", "authority": "istiod", "max_receive_message_length": 1000,
        "retry_policy": {"retry_back_off": {"base_interval": "0.1s"}, "num_retries": 3}}}]}})  # fmt: skip
    t = eg.api.grpc if eg.api else None
    assert t is not None and (t.authority, t.max_receive_message_length) == ("istiod", 1000)
    assert t.backoff == Backoff(0.1, 1.0)  # max_interval defaults to 10x base


def test_backoff_is_envoys_jittered_exponential() -> None:
    b = Backoff()
    # the k-th wait is uniform in [0, min(0.5 * 2**k, 30)): rand scales the interval
    assert [b.delay(k, 0.5) for k in range(8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert b.delay(0, 0.0) == 0.0 and b.delay(1000, 0.999999) < 30.0


def test_grpc_target_for() -> None:
    assert grpc_target_for("10.0.0.1", 15010) == "10.0.0.1:15010"
    assert grpc_target_for("::1", 15010) == "[::1]:15010"
    assert grpc_target_for(pipe="./etc/istio/proxy/XDS") == "unix:./etc/istio/proxy/XDS"


@dataclass(frozen=True)
class Flags:
    service_cluster: str = ""
    service_node: str = ""
    service_zone: str = ""


def test_node_from_bootstrap_and_flags() -> None:
    pb = base_pb2.Node(id="boot", cluster="bc", user_agent_name="liar")
    pb.locality.zone = "z0"
    pb.metadata.fields["ISTIO_VERSION"].string_value = "1.27"
    n = build_node(pb, Flags(service_node="flag-node", service_zone="z9"))
    assert (n.id, n.cluster, n.locality.zone) == ("flag-node", "bc", "z9")
    assert n.metadata.fields["ISTIO_VERSION"].string_value == "1.27"
    assert n.user_agent_name == "envoy" and n.user_agent_build_version.version.major_number == 1
    assert n.user_agent_build_version.metadata.fields["sidecar.version"].string_value
    assert pb.id == "boot"  # the bootstrap's message is not changed
    check_local_info(n, "ads")
    with pytest.raises(ConfigError, match="ads: node 'id' and 'cluster' are required"):
        check_local_info(build_node(None), "ads")


def test_importing_the_client_creates_no_grpc_state() -> None:
    code = "import sys, sidecar.xds.client, sidecar.xds.rest; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"

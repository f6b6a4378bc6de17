"""The oracle for tests/support/istio_config.py: real Envoy (`--mode validate`) accepts the istiod
shaped resources once Istio's private filters are taken out (stock Envoy does not have them either),
so the fixture's standard parts are well-formed, and what sidecar refuses there is a gap of ours."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from sidecar.translate import istio
from tests.support import istio_config as ic

ENVOY = Path(sys.executable).with_name("envoy")
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def without_istio(pb: Any) -> Any:
    chains = [*pb.filter_chains, *([pb.default_filter_chain] if pb.HasField("default_filter_chain") else [])]
    for chain in chains:
        keep = [f for f in chain.filters if istio.istio_type(f.typed_config) is None]
        del chain.filters[:]
        chain.filters.extend(keep)
        for f in chain.filters:
            if f.typed_config.type_url == ic.HCM:
                h = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(h)
                http = [x for x in h.http_filters if istio.istio_type(x.typed_config) is None]
                del h.http_filters[:]
                h.http_filters.extend(http)
                f.typed_config.Pack(h)
    return pb


def as_json(pb: Message) -> dict[str, Any]:
    return json_format.MessageToDict(pb, preserving_proto_field_name=True)


def grpc_cluster(name: str, path: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            HPO: {
                "@type": f"type.googleapis.com/{HPO}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": path}}}}]}],
        },
    }


def test_envoy_accepts_the_fixture_without_istio_filters(tmp_path: Path) -> None:
    clusters = []
    for c in ic.cds():
        c.ClearField("filters")
        clusters.append(as_json(c))
    routes = {
        "name": "routes",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": ic.HCM,
                            "stat_prefix": "r",
                            "route_config": as_json(ic.rds()[0]),
                            "http_filters": [
                                ic.filter_json(
                                    "f", ic.T + "envoy.extensions.filters.http.fault.v3.HTTPFault"
                                ),
                                ic.filter_json("r", ic.T + "envoy.extensions.filters.http.router.v3.Router"),
                            ],
                        },
                    }
                ]
            }
        ],
    }
    boot = {
        "node": {"id": "sidecar~10.244.0.12~productpage.default~default.svc.cluster.local", "cluster": "pp"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            }
        },
        "static_resources": {
            "listeners": [*(as_json(without_istio(pb)) for pb in ic.lds()), routes],
            "clusters": [
                *clusters,
                grpc_cluster("xds-grpc", str(tmp_path / "xds")),
                grpc_cluster("sds-grpc", str(tmp_path / "sds")),
            ],
        },
    }
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(boot))
    out = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"configuration '{path}' OK" in out.stdout + out.stderr

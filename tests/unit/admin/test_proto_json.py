"""proto_json: xDS resources as /config_dump prints them, even when an Any inside names a type sidecar
has no descriptor for (Istio's private configs): that Any prints as its URL and base64 bytes
instead of failing the whole dump (json_format raises TypeError on it)."""

from __future__ import annotations

import base64

import pytest
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format

from sidecar.admin.protojson import proto_json


def _listener() -> listener_pb2.Listener:
    lst = listener_pb2.Listener(name="l")
    chain = lst.filter_chains.add()
    f = chain.filters.add(name="istio.stats")
    f.typed_config.type_url = "type.googleapis.com/stats.PluginConfig"
    f.typed_config.value = b"\x0a\x03abc"
    ts = chain.transport_socket
    ts.name = "envoy.transport_sockets.raw_buffer"
    ts.typed_config.type_url = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
    return lst


def test_unknown_any_prints_as_url_and_bytes() -> None:
    lst = _listener()
    with pytest.raises(TypeError):
        json_format.MessageToDict(lst, preserving_proto_field_name=True)
    out = proto_json(lst)
    chain = out["filter_chains"][0]
    assert chain["filters"][0]["typed_config"] == {
        "@type": "type.googleapis.com/stats.PluginConfig",
        "value": base64.b64encode(b"\x0a\x03abc").decode(),
    }
    # A known type whose module was never imported is imported and printed normally.
    assert chain["transport_socket"]["typed_config"] == {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
    }
    assert lst.filter_chains[0].filters[0].typed_config.type_url.endswith("stats.PluginConfig")  # not mutated

"""sidecar/l4/metadata_exchange.py: Istio's TCP metadata exchange preamble, fed whole or in pieces."""

from __future__ import annotations

import itertools
import struct
from typing import Any

from google.protobuf import any_pb2, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from sidecar.l4.metadata_exchange import (
    MAGIC,
    MAX_PREAMBLE,
    NEED_MORE,
    Decoder,
    Exchanged,
    PassThrough,
    Result,
    encode,
    workload_metadata,
)

NODE_MD = {
    "NAME": "productpage-v1-5d9b4c9849-x7k2p",
    "NAMESPACE": "default",
    "CLUSTER_ID": "Kubernetes",
    "WORKLOAD_NAME": "productpage-v1",
    "OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1",
    "LABELS": {
        "app": "productpage",
        "version": "v1",
        "pod-template-hash": "5d9b4c9849",
        "service.istio.io/canonical-name": "productpage",
        "service.istio.io/canonical-revision": "v1",
    },
    "MESH_ID": "cluster.local",
    "ISTIO_VERSION": "1.24.0",
}
NODE_ID = "sidecar~10.244.0.12~productpage-v1-5d9b4c9849-x7k2p.default~default.svc.cluster.local"


def feed_pieces(data: bytes, cuts: list[int], end: bool = False) -> Result:
    """Feed `data` split at `cuts`; return the first result other than NeedMore (or the last)."""
    d = Decoder()
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in itertools.pairwise(points)] or [b""]
    result: Result = NEED_MORE
    for i, piece in enumerate(pieces):
        result = d.feed(piece, end=end and i == len(pieces) - 1)
        if result is not NEED_MORE:
            if isinstance(result, Exchanged):
                rest = b"".join(pieces[i + 1 :])
                return Exchanged(result.peer, result.peer_id, result.leftover + rest)
            assert isinstance(result, PassThrough)
            return PassThrough(result.data + b"".join(pieces[i + 1 :]), result.reason)
    return result


def test_workload_metadata_keeps_istio_fields_only() -> None:
    md = workload_metadata(NODE_MD)
    assert md == {
        "NAME": "productpage-v1-5d9b4c9849-x7k2p",
        "NAMESPACE": "default",
        "WORKLOAD_NAME": "productpage-v1",
        "CLUSTER_ID": "Kubernetes",
        "LABELS": {
            "service.istio.io/canonical-name": "productpage",
            "service.istio.io/canonical-revision": "v1",
            "app": "productpage",
            "version": "v1",
        },
        "OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1",
    }
    assert workload_metadata(NODE_MD, ["pod-template-hash"])["LABELS"]["pod-template-hash"] == "5d9b4c9849"
    # An owner whose kind Istio does not know is dropped; LABELS is always there.
    assert workload_metadata({"OWNER": "x/replicasets/w", "WORKLOAD_NAME": "w"}) == {
        "WORKLOAD_NAME": "w",
        "LABELS": {},
    }


def test_encode_layout() -> None:
    blob = encode(workload_metadata(NODE_MD), NODE_ID)
    magic, size = struct.unpack("!II", blob[:8])
    assert magic == MAGIC == 1025705063 and size == len(blob) - 8
    wrapper = any_pb2.Any()
    wrapper.ParseFromString(blob[8:])
    assert wrapper.type_url == "type.googleapis.com/google.protobuf.Struct"
    body = struct_pb2.Struct()
    body.ParseFromString(wrapper.value)
    assert body.fields["x-envoy-peer-metadata-id"].string_value == NODE_ID
    assert body.fields["x-envoy-peer-metadata"].struct_value.fields["NAMESPACE"].string_value == "default"
    # Deterministic: the same metadata gives the same bytes.
    assert encode(workload_metadata(NODE_MD), NODE_ID) == blob


def test_no_id_means_no_id_key() -> None:
    r = Decoder().feed(encode({"NAME": "a"}, ""))
    assert isinstance(r, Exchanged) and r.peer == {"NAME": "a"} and r.peer_id is None


def test_wrong_magic_passes_everything_through() -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    d = Decoder()
    assert d.feed(data[:7]) is NEED_MORE  # Envoy decides nothing before 8 bytes
    r = d.feed(data[7:])
    assert r == PassThrough(data, "no metadata exchange magic")
    assert d.feed(b"more") == PassThrough(b"more", "preamble already read")


def test_short_stream_and_cut_body() -> None:
    assert Decoder().feed(b"abc", end=True) == PassThrough(b"abc", "closed before the preamble")
    blob = encode({"NAME": "a"}, "id")
    assert Decoder().feed(blob[:-1], end=True) == PassThrough(b"", "closed inside the preamble")


def test_bad_body_drops_the_header_only() -> None:
    body = b"\xff\xff\xff"  # not a protobuf message
    r = Decoder().feed(struct.pack("!II", MAGIC, len(body)) + body + b"payload")
    assert r == PassThrough(body + b"payload", "preamble is not a google.protobuf.Any")
    r = Decoder().feed(struct.pack("!II", MAGIC, MAX_PREAMBLE + 1) + b"x")
    assert isinstance(r, PassThrough) and r.data == b"x"


def test_any_of_another_type_is_read_as_no_metadata() -> None:
    blob = any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Empty").SerializeToString()
    r = Decoder().feed(struct.pack("!II", MAGIC, len(blob)) + blob + b"p")
    assert r == Exchanged(None, None, b"p")


json_leaf = st.one_of(st.text(max_size=8), st.booleans(), st.integers(-1000, 1000).map(float))
json_struct = st.dictionaries(
    st.text(max_size=8),
    st.recursive(json_leaf, lambda c: st.dictionaries(st.text(max_size=4), c, max_size=3)),
    max_size=5,
)


@given(
    json_struct, st.text(max_size=20), st.binary(max_size=64), st.lists(st.integers(0, 10_000), max_size=8)
)
def test_roundtrip_in_any_pieces(md: dict[str, Any], node_id: str, payload: bytes, cuts: list[int]) -> None:
    r = feed_pieces(encode(md, node_id) + payload, cuts)
    assert isinstance(r, Exchanged)
    assert r.peer == md and r.peer_id == (node_id or None) and r.leftover == payload


@given(st.binary(max_size=200), st.lists(st.integers(0, 1000), max_size=6), st.booleans())
def test_any_bytes_pass_through_or_exchange(data: bytes, cuts: list[int], end: bool) -> None:
    r = feed_pieces(data, cuts, end)
    if len(data) >= 8 and struct.unpack("!I", data[:4])[0] != MAGIC:
        assert r == PassThrough(data, "no metadata exchange magic")
    elif len(data) < 8:
        assert r == (PassThrough(data, "closed before the preamble") if end else NEED_MORE)
    else:  # the magic: a suffix of the input comes out, never more bytes than went in
        out = r.leftover if isinstance(r, Exchanged) else r.data if isinstance(r, PassThrough) else b""
        assert data.endswith(out) and len(out) <= len(data) - 8

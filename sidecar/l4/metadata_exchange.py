"""Istio's TCP metadata exchange preamble (istio.metadata_exchange, protocol istio-peer-exchange):
a sans-IO codec.  No I/O, no asyncio: the TCP proxy feeds bytes in and writes what comes out.

On a connection whose negotiated ALPN is the filter's protocol, each side writes a preamble
before its first payload byte and reads the peer's (istio/proxy, now envoy contrib/istio/filters/
network/metadata_exchange):

    magic      4 bytes, network order, 0x3D230467
    data_size  4 bytes, network order: the length of what follows
    data       a serialized google.protobuf.Any (type.googleapis.com/google.protobuf.Struct) holding
               a Struct {"x-envoy-peer-metadata": <workload metadata struct>,
                         "x-envoy-peer-metadata-id": <node id>}

Reading, as Envoy reads it: nothing is decided before 8 bytes have arrived; a wrong magic means
the peer has no such filter, and every byte passes through unchanged (PassThrough).  A right magic
with a body that is not an Any drops the 8 header bytes and passes the rest.  A stream that ends
before 8 bytes passes what it had; one that ends inside the body delivers nothing more (Envoy keeps
holding it).  A body larger than MAX_PREAMBLE is treated as not an Any (Envoy has no cap; we bound
memory).  The workload metadata keys (NAME, NAMESPACE, WORKLOAD_NAME, CLUSTER_ID, IDENTITY, OWNER,
LABELS, REGION, AVAILABILITY_ZONE) are those of Istio's convertWorkloadMetadataToStruct."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2, json_format, struct_pb2
from google.protobuf.message import DecodeError

MAGIC = 0x3D230467
HEADER = struct.Struct("!II")
PEER_METADATA_KEY = "x-envoy-peer-metadata"
PEER_METADATA_ID_KEY = "x-envoy-peer-metadata-id"
STRUCT_TYPE_URL = "type.googleapis.com/google.protobuf.Struct"
MAX_PREAMBLE = 1 << 20

_OWNER_PREFIX = "kubernetes://apis/apps/v1/namespaces/"
_WORKLOAD_TYPES = ("pod", "deployment", "job", "cronjob")
_CANONICAL_NAME = "service.istio.io/canonical-name"
_CANONICAL_REVISION = "service.istio.io/canonical-revision"


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The preamble is not complete yet: hold the bytes (Envoy's StopIteration)."""


@dataclass(frozen=True, slots=True)
class Exchanged:
    """The peer's preamble was read.  `peer` is its workload metadata (None when the Struct has
    none); `leftover` is the payload that followed it in the bytes fed so far."""

    peer: dict[str, Any] | None
    peer_id: str | None
    leftover: bytes


@dataclass(frozen=True, slots=True)
class PassThrough:
    """No (valid) preamble: `data` goes on to the payload path unchanged; `reason` says why."""

    data: bytes
    reason: str


Result = NeedMore | Exchanged | PassThrough
NEED_MORE = NeedMore()


def workload_metadata(
    node_metadata: Mapping[str, Any], additional_labels: Iterable[str] = ()
) -> dict[str, Any]:
    """The struct Istio sends as x-envoy-peer-metadata, from the node's metadata (pilot-agent's
    NAME, NAMESPACE, CLUSTER_ID, LABELS, OWNER, WORKLOAD_NAME ...): only the fields Istio keeps."""

    def text(key: str) -> str:
        value = node_metadata.get(key, "")
        return value if isinstance(value, str) else ""

    raw_labels = node_metadata.get("LABELS")
    labels_in = raw_labels if isinstance(raw_labels, Mapping) else {}

    def label(key: str) -> str:
        value = labels_in.get(key, "")
        return value if isinstance(value, str) else ""

    out: dict[str, Any] = {}
    for key in ("NAME", "NAMESPACE", "WORKLOAD_NAME", "CLUSTER_ID", "IDENTITY"):
        if text(key):
            out[key] = text(key)
    labels: dict[str, str] = {}
    app = label("app.kubernetes.io/name") or label("app")
    version = label("app.kubernetes.io/version") or label("version")
    for key, value in (
        (_CANONICAL_NAME, label(_CANONICAL_NAME)),
        (_CANONICAL_REVISION, label(_CANONICAL_REVISION)),
        ("app", app),
        ("version", version),
    ):
        if value:
            labels[key] = value
    for key in sorted(set(additional_labels)):
        if label(key):
            labels[key] = label(key)
    out["LABELS"] = labels  # always present, as Istio's mutable_struct_value makes it
    kind = _owner_kind(text("OWNER"), text("WORKLOAD_NAME"))
    if kind:
        out["OWNER"] = f"{_OWNER_PREFIX}{text('NAMESPACE')}/{kind}s/{text('WORKLOAD_NAME')}"
    for key in ("REGION", "AVAILABILITY_ZONE"):
        if text(key):
            out[key] = text(key)
    return out


def _owner_kind(owner: str, workload: str) -> str:
    """Istio's parseOwner: strip "s/<workload>" and read the path segment before it."""
    if len(owner) <= len(workload) + 2:
        return ""
    head = owner[: len(owner) - len(workload) - 2]
    kind = head.rsplit("/", 1)[-1] if "/" in head else ""
    return kind if kind in _WORKLOAD_TYPES else ""


def encode(metadata: Mapping[str, Any], node_id: str) -> bytes:
    """Our preamble: header + Any(Struct{x-envoy-peer-metadata, x-envoy-peer-metadata-id})."""
    body = struct_pb2.Struct()
    value = body.fields[PEER_METADATA_KEY].struct_value
    value.SetInParent()  # present even when empty, as Istio always sends it
    value.update(dict(metadata))
    if node_id:
        body.fields[PEER_METADATA_ID_KEY].string_value = node_id
    data = any_pb2.Any(type_url=STRUCT_TYPE_URL, value=body.SerializeToString(deterministic=True))
    blob = data.SerializeToString(deterministic=True)
    return HEADER.pack(MAGIC, len(blob)) + blob


class Decoder:
    """Reads the peer's preamble from the bytes fed to it; one result other than NeedMore, then
    every later feed passes its bytes through."""

    __slots__ = ("_buf", "_done", "_size")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._size = -1  # the body's length once the header is read
        self._done = False

    def feed(self, data: bytes, end: bool = False) -> Result:
        if self._done:
            return PassThrough(bytes(data), "preamble already read")
        self._buf += data
        if self._size < 0:
            if len(self._buf) < HEADER.size:
                if end:  # Envoy: the peer half-closed before a full header; do not block the payload
                    return self._finish(PassThrough(bytes(self._buf), "closed before the preamble"))
                return NEED_MORE
            magic, size = HEADER.unpack_from(self._buf)
            if magic != MAGIC:
                return self._finish(PassThrough(bytes(self._buf), "no metadata exchange magic"))
            del self._buf[: HEADER.size]
            if size > MAX_PREAMBLE:
                return self._finish(PassThrough(bytes(self._buf), "preamble too large"))
            self._size = size
        if len(self._buf) < self._size:
            if end:  # Envoy keeps holding a partial body: nothing more reaches the payload path
                return self._finish(PassThrough(b"", "closed inside the preamble"))
            return NEED_MORE
        blob = bytes(self._buf[: self._size])
        rest = bytes(self._buf[self._size :])
        wrapper = any_pb2.Any()
        try:
            wrapper.ParseFromString(blob)
        except DecodeError:
            return self._finish(PassThrough(bytes(self._buf), "preamble is not a google.protobuf.Any"))
        peer, peer_id = _read_struct(wrapper)
        return self._finish(Exchanged(peer, peer_id, rest))

    def _finish(self, result: Result) -> Result:
        self._done = True
        self._buf = bytearray()
        return result


def _read_struct(wrapper: any_pb2.Any) -> tuple[dict[str, Any] | None, str | None]:
    if wrapper.type_url.rsplit("/", 1)[-1] != "google.protobuf.Struct":
        return None, None
    body = struct_pb2.Struct()
    try:
        body.ParseFromString(wrapper.value)
    except DecodeError:
        return None, None
    peer = None
    if PEER_METADATA_KEY in body.fields and body.fields[PEER_METADATA_KEY].HasField("struct_value"):
        peer = json_format.MessageToDict(body.fields[PEER_METADATA_KEY].struct_value)
    peer_id = None
    if PEER_METADATA_ID_KEY in body.fields:
        value = body.fields[PEER_METADATA_ID_KEY]
        peer_id = value.string_value if value.HasField("string_value") else None
    return peer, peer_id

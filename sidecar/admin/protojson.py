"""Proto-shaped JSON helpers for the admin: snake_case field names, addresses, timestamps and
redaction of sensitive fields, as Envoy's admin prints them.  Pure (no I/O)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sidecar.model.snapshot import Snapshot

_REDACTED = "[redacted]"
_REDACTED_B64 = "W3JlZGFjdGVkXQ=="  # "[redacted]" as proto JSON prints bytes


def address_json(address: str) -> dict[str, Any]:
    """ "ip:port" / "[v6]:port" / a pipe path -> config.core.v3.Address JSON."""
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and host and not address.startswith(("/", "@")):
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        sock: dict[str, Any] = {"address": host}
        if int(port):
            sock["port_value"] = int(port)
        return {"socket_address": sock}
    return {"pipe": {"path": address}}


def timestamp(epoch: float) -> str:
    """google.protobuf.Timestamp JSON at Envoy's millisecond precision."""
    dt = datetime.fromtimestamp(epoch, tz=UTC)
    ms = dt.microsecond // 1000
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms:03d}" if ms else "") + "Z"


_CAMEL = re.compile(r"[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+")


def _has_camel_key(v: Any, budget: list[int]) -> bool:
    """Whether some key looks like a camelCase proto field name ("staticResources").  Struct keys
    such as Istio's "ISTIO_VERSION" or "app.kubernetes.io/name" do not; a false positive only costs
    a round trip.  Looks at no more than budget[0] keys."""
    if isinstance(v, Mapping):
        for k, x in v.items():
            budget[0] -= 1
            if budget[0] < 0:
                return False
            if (isinstance(k, str) and _CAMEL.fullmatch(k)) or _has_camel_key(x, budget):
                return True
    elif isinstance(v, list):
        return any(_has_camel_key(x, budget) for x in v)
    return False


_snake_cache: dict[int, tuple[object, Mapping[str, Any]]] = {}


def snake_case(d: Mapping[str, Any], full_name: str) -> Mapping[str, Any]:
    """Envoy's admin prints proto field names.  JSON with camelCase names (MessageToDict's default)
    is re-encoded through the proto `full_name` when its types are importable; else returned as is."""
    if not _has_camel_key(d, [10_000]):
        return d
    hit = _snake_cache.get(id(d))
    if hit is not None and hit[0] is d:
        return hit[1]
    try:
        from google.protobuf import json_format, symbol_database

        cls = symbol_database.Default().GetSymbol(full_name)
        msg = json_format.ParseDict(dict(d), cls(), ignore_unknown_fields=True)
        out: Mapping[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    except Exception:  # unknown types inside an Any, or the module was never imported
        out = d
    if len(_snake_cache) > 64:
        _snake_cache.clear()
    _snake_cache[id(d)] = (d, out)
    return out


def bootstrap_of(snapshot: Snapshot) -> Mapping[str, Any]:
    """The bootstrap with snake_case field names."""
    return snake_case(snapshot.bootstrap_json, "envoy.config.bootstrap.v3.Bootstrap")


def static_resources(snapshot: Snapshot, key: str) -> list[Mapping[str, Any]]:
    """bootstrap.static_resources[key] ("clusters", "listeners", "secrets")."""
    res = bootstrap_of(snapshot).get("static_resources") or {}
    items = res.get(key) if isinstance(res, Mapping) else None
    return [i for i in items or () if isinstance(i, Mapping)]


def _redact_all(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: (_REDACTED_B64 if k == "inline_bytes" else _redact_all(x)) for k, x in v.items()}
    if isinstance(v, list):
        return [_redact_all(x) for x in v]
    return _REDACTED if isinstance(v, str) else v


def redact(v: Any, parent: str = "") -> Any:
    """A copy with Envoy's sensitive fields redacted (TlsCertificate.private_key/password,
    GenericSecret.secret, TlsSessionTicketKeys.keys)."""
    if isinstance(v, Mapping):
        out = {}
        for k, x in v.items():
            sensitive = k in ("private_key", "password") or (k, parent) in (
                ("secret", "generic_secret"),
                ("keys", "session_ticket_keys"),
            )
            out[k] = _redact_all(x) if sensitive else redact(x, k)
        return out
    if isinstance(v, list):
        return [redact(x, parent) for x in v]
    return v


_OPAQUE = "type.googleapis.com/google.protobuf.BytesValue"


def proto_json(msg: Any) -> dict[str, Any]:
    """`msg` as Envoy's admin prints it (proto field names).  Every Any inside has its type imported
    first; an Any whose type sidecar has no descriptor for (Istio's private configs such as
    stats.PluginConfig) prints as {"@type": its URL, "value": base64 bytes} instead of failing the
    whole dump, which is what json_format does with an unknown type."""
    from google.protobuf import json_format

    unknown: dict[str, str] = {}
    copy = type(msg)()
    copy.CopyFrom(msg)
    _resolve_anys(copy, unknown, 0)
    out: dict[str, Any] = json_format.MessageToDict(copy, preserving_proto_field_name=True)
    if unknown:
        _restore_urls(out, unknown, 0)
    return out


def _resolve_anys(msg: Any, unknown: dict[str, str], depth: int) -> None:
    """Import each Any's type; wrap the ones that stay unknown as BytesValue, remembering their URL
    by the base64 of their bytes (restored by _restore_urls)."""
    import base64

    from google.protobuf import wrappers_pb2

    from sidecar.translate.common import message_class

    if depth > 100:
        return
    if msg.DESCRIPTOR.full_name == "google.protobuf.Any":
        cls = message_class(msg.type_url) if msg.type_url else None
        if cls is None:
            raw = bytes(msg.value)
            unknown[base64.b64encode(raw).decode()] = msg.type_url
            msg.Pack(wrappers_pb2.BytesValue(value=raw))
            return
        inner = cls()
        if msg.Unpack(inner):
            _resolve_anys(inner, unknown, depth + 1)
            msg.Pack(inner)
        return
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.is_repeated:
            if field.message_type.GetOptions().map_entry:
                vfield = field.message_type.fields_by_name["value"]
                if vfield.message_type is not None:
                    for v in value.values():
                        _resolve_anys(v, unknown, depth + 1)
            else:
                for v in value:
                    _resolve_anys(v, unknown, depth + 1)
        else:
            _resolve_anys(value, unknown, depth + 1)


def _restore_urls(obj: Any, unknown: Mapping[str, str], depth: int) -> None:
    if depth > 200:
        return
    if isinstance(obj, dict):
        if obj.get("@type") == _OPAQUE and obj.get("value") in unknown:
            obj["@type"] = unknown[obj["value"]]
        for v in obj.values():
            _restore_urls(v, unknown, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _restore_urls(v, unknown, depth + 1)

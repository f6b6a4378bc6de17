"""Helpers shared by the translators: typed-config (Any) lookup, addresses, enums, config hashes.

Message types for `@type` URLs are found in xds-protos on demand: the generated modules of the
type's proto package are imported the first time the type is seen, so a bootstrap or an xDS
resource may carry any Envoy, xds or udpa type without us importing every module up front (they are
refused later, by the translators, with their field path, unless we implement them).

Pure: no I/O beyond importing generated protobuf modules."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import ipaddress
import logging
import os
import re
from collections.abc import Iterator
from typing import TypeVar

from envoy.config.core.v3 import address_pb2
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

from sidecar.model.endpoint import SocketAddress
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields

M = TypeVar("M", bound=Message)

# Proto packages we may import on demand: those xds-protos and protobuf install.
_ROOTS = ("envoy.", "xds.", "udpa.", "validate.", "google.protobuf.", "google.rpc.")
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
_tried_packages: set[str] = set()
log = logging.getLogger("sidecar.config")
_logged: set[str] = set()


def log_ignored(path: str, why: str) -> None:
    """Say once per process that a set field is accepted but has no effect here."""
    if path not in _logged:
        _logged.add(path)
        log.info("ignoring %s: %s", path, why)


def type_name(type_url: str) -> str:
    """`type.googleapis.com/envoy.x.v3.Foo` -> `envoy.x.v3.Foo` (the part after the last slash)."""
    return type_url.rsplit("/", 1)[-1]


def _import_package(full_name: str) -> None:
    """Import every generated `*_pb2` module of the proto package that declares `full_name`."""
    parts = full_name.split(".")
    pkg_parts = []
    for p in parts:
        if p[:1].isupper():  # message names are CamelCase, package components are lowercase
            break
        pkg_parts.append(p)
    package = ".".join(pkg_parts)
    if not (package + ".").startswith(_ROOTS) or package in _tried_packages:
        return
    _tried_packages.add(package)
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    for location in spec.submodule_search_locations:
        try:
            names = sorted(os.listdir(location))
        except OSError:
            continue
        for name in names:
            if name.endswith("_pb2.py"):
                importlib.import_module(f"{package}.{name[:-3]}")


def message_class(type_url: str) -> type[Message] | None:
    """The generated class for a type URL, importing its module if needed; None when unknown."""
    name = type_name(type_url)
    if not _TYPE_NAME.fullmatch(name):
        return None
    pool = descriptor_pool.Default()
    try:
        desc = pool.FindMessageTypeByName(name)
    except KeyError:
        _import_package(name)
        try:
            desc = pool.FindMessageTypeByName(name)
        except KeyError:
            return None
    return message_factory.GetMessageClass(desc)


def preload_types(obj: object) -> None:
    """Import the message types named by every `@type` in a JSON-like tree (before ParseDict)."""
    for url in _type_urls(obj, 0):
        message_class(url)


def _type_urls(obj: object, depth: int) -> Iterator[str]:
    if depth > 200:  # protobuf's own recursion limit is 100; stay bounded on hostile input
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "@type" and isinstance(value, str):
                yield value
            else:
                yield from _type_urls(value, depth + 1)
    elif isinstance(obj, list):
        for value in obj:
            yield from _type_urls(value, depth + 1)


_TYPED_STRUCTS = ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct")


def typed_config(any_pb: any_pb2.Any, path: str) -> Message:
    """The message inside a typed_config, of whatever type it names.

    A TypedStruct wrapper (udpa.type.v1 / xds.type.v3) is opened as Envoy opens it: its `value`
    Struct is read as JSON into the message type its `type_url` names."""
    name = type_name(any_pb.type_url)
    if name in _TYPED_STRUCTS:
        wrapper = message_class(any_pb.type_url)
        assert wrapper is not None  # both wrappers ship with xds-protos
        ts = unpack(any_pb, wrapper, path)
        cls = message_class(ts.type_url)  # type: ignore[attr-defined]
        if cls is None:
            raise ConfigError(f"{path}.type_url", f"unknown type URL '{ts.type_url}'")  # type: ignore[attr-defined]
        inner = cls()
        value = json_format.MessageToDict(ts.value)  # type: ignore[attr-defined]
        preload_types(value)
        try:
            json_format.ParseDict(value, inner)
        except json_format.ParseError as e:
            raise ConfigError(
                f"{path}.value", f"cannot read {name} as {cls.DESCRIPTOR.full_name}: {e}"
            ) from None
        return inner
    cls = message_class(any_pb.type_url)
    if cls is None:
        raise ConfigError(path, f"unknown type URL '{any_pb.type_url}'")
    return unpack(any_pb, cls, path)


def unpack(any_pb: any_pb2.Any, cls: type[M], path: str) -> M:
    """The message inside `any_pb`, which must be of type `cls`."""
    msg = cls()
    if type_name(any_pb.type_url) != cls.DESCRIPTOR.full_name:
        raise ConfigError(path, f"expected type {cls.DESCRIPTOR.full_name}, got '{any_pb.type_url}'")
    try:
        msg.ParseFromString(any_pb.value)
    except DecodeError as e:
        raise ConfigError(path, f"cannot decode {cls.DESCRIPTOR.full_name}: {e}") from None
    return msg


def config_hash(pb: Message) -> int:
    """A stable 64-bit digest of a message's deterministic encoding (same config -> same hash,
    across processes too, unlike hash())."""
    digest = hashlib.blake2b(pb.SerializeToString(deterministic=True), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def enum_name(msg: Message, field: str, path: str) -> str:
    """The name of an enum field's value; an unknown number (proto3 enums are open) is refused."""
    fd = msg.DESCRIPTOR.fields_by_name[field]
    number = getattr(msg, field)
    assert fd.enum_type is not None, field
    value = fd.enum_type.values_by_number.get(number)
    if value is None:
        raise ConfigError(f"{path}.{field}", f"value must be one of the defined enum values, got {number}")
    return value.name


def bool_value(msg: Message, field: str, default: bool) -> bool:
    """A google.protobuf.BoolValue field, or `default` when unset."""
    if msg.HasField(field):
        return bool(getattr(msg, field).value)
    return default


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def socket_address(addr: address_pb2.Address, path: str, *, resolve: bool) -> SocketAddress:
    """An Address (socket_address or pipe) as a SocketAddress.

    With `resolve` False the address must be an IP literal, as Envoy requires of listeners and of
    STATIC endpoints ("malformed IP address: ..."); DNS clusters pass True to keep hostnames."""
    which = addr.WhichOneof("address")
    if which == "pipe":
        pipe = addr.pipe
        check_fields(pipe, f"{path}.pipe", handled=("path",))
        if not pipe.path:
            raise ConfigError(f"{path}.pipe.path", "value length must be at least 1 characters")
        return SocketAddress(host="", port=0, pipe=pipe.path)
    if which != "socket_address":
        if which is None:
            raise ConfigError(path, "address is necessary")
        raise ConfigError(f"{path}.{which}", "address kind is not supported by sidecar yet")
    sa = addr.socket_address
    sp = f"{path}.socket_address"
    check_fields(sa, sp, handled=("protocol", "address", "port_value", "ipv4_compat"))
    if sa.protocol != address_pb2.SocketAddress.TCP:
        raise ConfigError(f"{sp}.protocol", "only TCP is supported by sidecar yet")
    if not sa.address:
        raise ConfigError(f"{sp}.address", "value length must be at least 1 characters")
    host = sa.address
    if not resolve and not is_ip(host):
        raise ConfigError(f"{sp}.address", f"malformed IP address: {host}")
    return SocketAddress(host=host, port=sa.port_value, ipv4_compat=sa.ipv4_compat)

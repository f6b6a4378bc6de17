"""Refuse what we do not implement, loudly: every set field of a message must be handled.

`check_fields(msg, path, handled, ignored)` raises ConfigError naming the first set field that is
neither handled nor known to be moot for us.  Fields in `ignored` are logged once per process
(Envoy would accept them, and they change nothing a user could observe here)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from sidecar.translate.errors import ConfigError

log = logging.getLogger("sidecar.config")
_logged: set[str] = set()


def check_fields(
    msg: Message, path: str, handled: Iterable[str], ignored: Iterable[str] = ()
) -> None:
    handled = set(handled)
    ignored = set(ignored)
    for fd, _ in msg.ListFields():
        name = fd.name
        if name in handled:
            continue
        if name in ignored:
            key = f"{msg.DESCRIPTOR.full_name}.{name}"
            if key not in _logged:
                _logged.add(key)
                log.info("ignoring %s.%s (no effect in sidecar)", path, name)
            continue
        raise ConfigError(f"{path}.{name}", "field is not supported by sidecar yet")


def duration(d: Duration) -> float:
    """A protobuf Duration in seconds."""
    return d.seconds + d.nanos / 1e9


def opt_duration(msg: Message, field: str, default: float) -> float:
    """`field` of `msg` in seconds, or `default` when unset (Envoy's documented default)."""
    if msg.HasField(field):
        return duration(getattr(msg, field))
    return default


def opt_uint(msg: Message, field: str, default: int) -> int:
    """A google.protobuf.UInt32Value/BoolValue-style wrapper field, or `default` when unset."""
    if msg.HasField(field):
        value: int = getattr(msg, field).value
        return value
    return default

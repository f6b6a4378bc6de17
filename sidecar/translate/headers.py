"""Header mutations of envoy.config.core.v3.HeaderValueOption and the *_headers_to_add/_remove
fields (route configuration, virtual host, route, weighted cluster) -> model.route.HeaderMutations,
with Envoy's checks (header_parser.cc: no :-prefixed or host header, valid %COMMAND% formats;
proto-validate lengths).  Split out of rds.py; health-check headers use it too."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from envoy.config.core.v3 import base_pb2

from sidecar.model.route import NO_MUTATIONS, AppendAction, HeaderMutations, HeaderValueOption
from sidecar.routing import matchers as m
from sidecar.translate.common import enum_name
from sidecar.translate.errors import ConfigError
from sidecar.translate.fields import check_fields
from sidecar.translate.route_match import MAX_HEADER_BYTES, header_text

# %COMMAND% forms of header values that http/header_mutation.py expands; others are refused.
SUPPORTED_HEADER_COMMANDS = frozenset(
    {
        "DOWNSTREAM_REMOTE_ADDRESS",
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_LOCAL_ADDRESS",
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        "PROTOCOL",
    }
)
# Envoy's substitution format command: %NAME%, %NAME(args)%, with an optional :max_length.
_COMMAND = re.compile(rb"%([A-Z0-9_]+)(\([^)]*\))?(:[0-9]+)?%")


# --- header mutations -----------------------------------------------------------------------------


def _header_value(raw: bytes, path: str) -> tuple[bytes, bool]:
    """(value, dynamic): a value with a %COMMAND% is kept as written for http/header_mutation.py;
    a literal one has its '%%' escapes undone.  Malformed or unsupported commands are refused."""
    dynamic = False
    i = raw.find(b"%")
    while i >= 0:
        if raw[i + 1 : i + 2] == b"%":
            i = raw.find(b"%", i + 2)
            continue
        cmd = _COMMAND.match(raw, i)
        if cmd is None:
            text = raw.decode("utf-8", "replace")
            raise ConfigError(
                path, f"Incorrect configuration: {text}. Couldn't find valid command at position {i}"
            )
        name, args, limit = (g.decode() if g else "" for g in cmd.groups())
        supported = name in SUPPORTED_HEADER_COMMANDS and not args
        if name == "REQ":
            supported = bool(args) and "?" not in args
        if not supported or limit:
            raise ConfigError(path, f"format command {cmd.group(0).decode()} is not supported by sidecar yet")
        dynamic = True
        i = raw.find(b"%", cmd.end())
    return (raw if dynamic else raw.replace(b"%%", b"%")), dynamic


def translate_header_value_option(pb: base_pb2.HeaderValueOption, path: str) -> HeaderValueOption:
    check_fields(pb, path, handled=("header", "append", "append_action", "keep_empty_value"))
    if not pb.HasField("header"):
        raise ConfigError(f"{path}.header", "value is required")
    hv, hp = pb.header, f"{path}.header"
    check_fields(hv, hp, handled=("key", "value", "raw_value"))
    key = header_text(hv.key, f"{hp}.key", min_len=1)
    # HeaderUtility::isModifiableHeader: :path etc. have their own RouteAction fields.
    if key.startswith(":") or m.ascii_lower(key) == "host":
        raise ConfigError(f"{hp}.key", ":-prefixed or host headers may not be modified")
    if hv.value and hv.raw_value:
        raise ConfigError(hp, "only one of value or raw_value may be set")
    if hv.raw_value:
        raw, vp = hv.raw_value, f"{hp}.raw_value"
        if len(raw) > MAX_HEADER_BYTES or re.search(rb"[\x00\n\r]", raw):
            raise ConfigError(vp, "value must be at most 16384 bytes without NUL, CR or LF")
    else:
        raw, vp = header_text(hv.value, f"{hp}.value").encode(), f"{hp}.value"
    value, dynamic = _header_value(raw, vp)
    action_name = enum_name(pb, "append_action", path)
    if pb.HasField("append"):
        if action_name != "APPEND_IF_EXISTS_OR_ADD":
            raise ConfigError(path, "Both append and append_action are set and it's not allowed")
        action_name = "APPEND_IF_EXISTS_OR_ADD" if pb.append.value else "OVERWRITE_IF_EXISTS_OR_ADD"
    return HeaderValueOption(
        name=m.ascii_lower(key).encode(),
        value=value,
        append_action=AppendAction[action_name],
        keep_empty_value=pb.keep_empty_value,
        dynamic=dynamic,
    )


def _removals(names: Iterable[str], path: str) -> tuple[bytes, ...]:
    out = []
    for i, name in enumerate(names):
        p = f"{path}[{i}]"
        header_text(name, p, min_len=1)
        if name.startswith(":") or m.ascii_lower(name) == "host":
            raise ConfigError(p, ":-prefixed or host headers may not be removed")
        out.append(m.ascii_lower(name).encode())
    return tuple(out)


def translate_mutations(pb: Any, path: str) -> HeaderMutations:
    """The four *_headers_to_add/_remove fields of a route config, virtual host, route or cluster."""
    adds = {}
    for f in ("request_headers_to_add", "response_headers_to_add"):
        items = getattr(pb, f)
        if len(items) > 1000:
            raise ConfigError(f"{path}.{f}", "value must contain no more than 1000 item(s)")
        adds[f] = tuple(translate_header_value_option(h, f"{path}.{f}[{i}]") for i, h in enumerate(items))
    return HeaderMutations(
        request_headers_to_add=adds["request_headers_to_add"],
        request_headers_to_remove=_removals(
            pb.request_headers_to_remove, f"{path}.request_headers_to_remove"
        ),
        response_headers_to_add=adds["response_headers_to_add"],
        response_headers_to_remove=_removals(
            pb.response_headers_to_remove, f"{path}.response_headers_to_remove"
        ),
    )


def maybe_mutations(pb: Any, path: str) -> HeaderMutations:
    """As translate_mutations, but the shared NO_MUTATIONS when there are none (callers test `is`)."""
    mutations = translate_mutations(pb, path)
    return NO_MUTATIONS if mutations.empty else mutations

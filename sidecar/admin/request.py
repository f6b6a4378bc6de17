"""An admin request and its response, as the handlers see them (no sockets here).

Content types are Envoy's admin ones: text/plain; charset=UTF-8 for text, application/json for
JSON (source/server/admin/utils.cc).  JSON goes through orjson."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson

TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"
HTML = "text/html; charset=UTF-8"
# Envoy answers some errors (config_dump's) with bare text/plain.
PLAIN = "text/plain"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query string
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # lowercase names
    body: bytes = b""


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = TEXT
    # Run after the response is written (quitquitquit, drain_listeners).
    after: Callable[[], object] | None = None


def text(body: str, status: int = 200, content_type: str = TEXT) -> Response:
    return Response(status, body.encode("utf-8", "replace"), content_type)


def _default(obj: object) -> object:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return str(obj)


# Lines of orjson's pretty output start with 2 spaces per level; Envoy indents by 1.  Strings
# never hold a raw newline in JSON, so leading spaces are always indentation.
_INDENT = re.compile(rb"^((?:  )+)", re.MULTILINE)


def _halve(m: re.Match[bytes]) -> bytes:
    return b" " * (len(m.group(1)) // 2)


def dumps(obj: Any, pretty: bool = True) -> bytes:
    """JSON bytes.  Pretty output is Envoy's (protobuf's) layout: 1-space indent, final newline."""
    if pretty:
        data = orjson.dumps(obj, default=_default, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        return _INDENT.sub(_halve, data)
    return orjson.dumps(obj, default=_default)


def json_response(obj: Any, pretty: bool = True, status: int = 200) -> Response:
    return Response(status, dumps(obj, pretty), JSON)


def parse_query(raw: str) -> dict[str, str]:
    """Envoy's query parsing: '&'-separated `key=value` or bare `key` (value ""), percent-decoded
    ('+' stays '+', so "filter=a+" is the regex "a+"); the first of repeated keys wins."""
    params: dict[str, str] = {}
    for part in raw.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        key = unquote(key, errors="replace")
        if key not in params:
            params[key] = unquote(value, errors="replace")
    return params

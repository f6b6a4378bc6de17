"""The HTTP filter interface (Envoy's StreamDecoderFilter/StreamEncoderFilter, as plain methods).

Hooks return `CONTINUE` at once or `STOP`; a filter that stops later calls `stream.resume_request()`
or replies with `stream.local_reply(...)`.  Most filters answer CONTINUE to most hooks: subclass
`PassThrough` and override what you need.  A coroutine per hook per stream would be pure allocation
on the hot path, hence plain methods (ARCHITECTURE.md sketch B)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sidecar.http.events import RequestHead, ResponseHead

if TYPE_CHECKING:
    from sidecar.http.conn_manager import Stream

CONTINUE = 0
STOP = 1


class HttpFilter(Protocol):
    def on_request_head(self, stream: Stream, head: RequestHead, end: bool) -> int: ...
    def on_request_body(self, stream: Stream, chunk: bytes, end: bool) -> int: ...
    def on_response_head(self, stream: Stream, head: ResponseHead, end: bool) -> int: ...
    def on_response_body(self, stream: Stream, chunk: bytes, end: bool) -> int: ...
    def on_destroy(self, stream: Stream) -> None: ...


class PassThrough:
    __slots__ = ()

    def on_request_head(self, stream: Stream, head: RequestHead, end: bool) -> int:
        return CONTINUE

    def on_request_body(self, stream: Stream, chunk: bytes, end: bool) -> int:
        return CONTINUE

    def on_response_head(self, stream: Stream, head: ResponseHead, end: bool) -> int:
        return CONTINUE

    def on_response_body(self, stream: Stream, chunk: bytes, end: bool) -> int:
        return CONTINUE

    def on_destroy(self, stream: Stream) -> None:
        return None

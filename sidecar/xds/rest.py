"""REST-JSON polling (ApiConfigSource api_type REST), through the same core as the gRPC streams.

Envoy's HttpSubscriptionImpl: every `refresh_delay`, POST the subscription's DiscoveryRequest as JSON
(protobuf JSON mapping) to `/v3/discovery:<listeners|routes|clusters|endpoints|secrets>` on the
REST cluster, within `request_timeout`; a 200 carries a DiscoveryResponse, a 304 means nothing
changed, anything else (or no answer) counts as update_failure and the next poll tries again.
Each request carries the node, the last accepted version_info and the resource names, so a NACK is
the old version again.  Unlike Envoy we also send error_detail with a NACK (a DiscoveryRequest field
that REST servers such as sovereign accept), which says why.

The HTTP client is a few lines on asyncio streams with httptools parsing the response (a runtime
dependency already); plaintext only: a REST cluster with TLS is refused by the resolver."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httptools
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from sidecar.translate.common import preload_types
from sidecar.xds.ads import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Rejected, XdsState
from sidecar.xds.client import ApplyFn, ChannelSpec, Mux, Resolve, TimeoutFn
from sidecar.xds.config import ApiSource

log = logging.getLogger("sidecar.config")

# The google.api.http post path of each Fetch* method in data-plane-api.
REST_PATHS = {
    LISTENER: "/v3/discovery:listeners",
    ROUTE: "/v3/discovery:routes",
    CLUSTER: "/v3/discovery:clusters",
    ENDPOINT: "/v3/discovery:endpoints",
    SECRET: "/v3/discovery:secrets",
}
MAX_RESPONSE = 256 * 1024 * 1024


class RestMux(Mux):
    """Polls one type from one REST cluster."""

    def __init__(
        self,
        state: XdsState,
        apply: ApplyFn,
        on_timeout: TimeoutFn | None,
        api: ApiSource,
        resolve: Resolve,
        type_url: str,
    ) -> None:
        super().__init__(state, apply, on_timeout)
        self.api = api
        self.resolve = resolve
        self.type_url = type_url
        self.path = REST_PATHS[type_url]
        self.polls = 0

    def _address(self) -> tuple[str, int, str]:
        spec = self.resolve(self.api.rest_cluster)
        if isinstance(spec, ChannelSpec):
            if spec.credentials is not None:
                raise ValueError(f"REST cluster {self.api.rest_cluster}: TLS is not supported by sidecar yet")
            spec = spec.target
        if spec.startswith("unix:"):
            return "", 0, spec[5:].removeprefix("//")
        host, _, port = spec.rpartition(":")
        return host.strip("[]"), int(port), ""

    async def run(self) -> None:
        self.state.connected()  # no stream: the core is "connected" for as long as we poll
        while not self._stopped.is_set():
            self.polls += 1
            try:
                host, port, pipe = self._address()
                request = self.state.request_for(self.type_url)
                body = json_format.MessageToJson(request, indent=None).encode()
                status, payload = await asyncio.wait_for(
                    http_post(host, port, pipe, self.path, body, self.api.rest_cluster),
                    self.api.request_timeout,
                )
                if status == 200:
                    await self._on_body(payload)
                elif status != 304:  # 304: nothing changed since version_info
                    raise ConnectionError(f"HTTP status {status}")
            except (OSError, TimeoutError, ValueError, httptools.HttpParserError) as e:
                log.warning("REST update for %s failed: %s", self.path, e or type(e).__name__)
                self.state.disconnected()  # update_failure, as Envoy counts a failed fetch
                self.state.connected()
            await self.sleep(self.api.refresh_delay)

    async def _on_body(self, payload: bytes) -> None:
        response = discovery_pb2.DiscoveryResponse()
        try:
            data = json.loads(payload)
            preload_types(data)  # Any fields need their message types in the pool
            json_format.ParseDict(data, response, ignore_unknown_fields=True)
        except (ValueError, json_format.ParseError) as e:
            self.state.reject(self.type_url, "", [Rejected("", "", f"invalid DiscoveryResponse JSON: {e}")])
            return
        if not response.type_url:
            response.type_url = self.type_url  # REST is one type per endpoint; servers may omit it
        await self.handle(response)


class _Response:
    """httptools callbacks: the status and body of one response."""

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.size = 0
        self.headers_done = False
        self.done = False

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_RESPONSE:
            raise ValueError(f"response larger than {MAX_RESPONSE} bytes")
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.done = True


async def http_post(
    host: str, port: int, pipe: str, path: str, body: bytes, authority: str
) -> tuple[int, bytes]:
    """POST `body` as JSON; returns (status, body).  One connection per request (Connection: close)."""
    if pipe:
        reader, writer = await asyncio.open_unix_connection(pipe)
    else:
        reader, writer = await asyncio.open_connection(host, port)
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        got = _Response()
        parser: Any = httptools.HttpResponseParser(got)
        while not got.done:
            data = await reader.read(65536)
            if not data:
                if got.headers_done:
                    break  # a body delimited by the end of the connection
                raise ConnectionError("connection closed before the response headers")
            parser.feed_data(data)
        return int(parser.get_status_code()), b"".join(got.body)
    finally:
        writer.close()

"""REST-JSON for the dev ADS server: `POST /v3/discovery:<listeners|routes|clusters|endpoints|secrets>`
with a JSON DiscoveryRequest (protobuf JSON mapping), as Envoy's HttpSubscriptionImpl and
sidecar/xds/rest.py send it.  200 carries a JSON DiscoveryResponse, 304 means the request's
version_info is current (xds_core.rest_response decides), 400/404/405 for requests that are not that.

HTTP/1.1 on asyncio streams, keep-alive honoured (Envoy reuses its connection; the sidecar sends
`Connection: close`).  Every read has a timeout and every size a bound."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from envoy.service.discovery.v3 import discovery_pb2 as d
from google.protobuf import json_format

from sidecar.devtools.xds_core import Store, rest_response
from sidecar.devtools.xds_files import KINDS

log = logging.getLogger("sidecar.devtools.ads_server")

PREFIX = "/v3/discovery:"
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may sit idle
MAX_REQUESTS = 10_000  # per connection
_REASONS = {200: "OK", 304: "Not Modified", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class RestHandler:
    """Answers REST-JSON polls from `store`; `nonce` gives each response its nonce."""

    def __init__(self, store: Store, nonce: Callable[[], str]) -> None:
        self.store = store
        self.nonce = nonce
        self.polls = 0

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body) for one request; pure apart from logging a NACK."""
        stem = path.split("?", 1)[0].removeprefix(PREFIX) if path.startswith(PREFIX) else ""
        if stem not in KINDS:
            return 404, b"unknown discovery path\n"
        if method != "POST":
            return 405, b"POST a DiscoveryRequest\n"
        type_url = KINDS[stem][0]
        req = d.DiscoveryRequest()
        try:
            json_format.ParseDict(json.loads(body or b"{}"), req, ignore_unknown_fields=True)
        except (ValueError, json_format.ParseError) as e:
            return 400, f"invalid DiscoveryRequest JSON: {e}\n".encode()
        self.polls += 1
        if req.HasField("error_detail"):
            log.warning("NACK (REST %s, version %r): %s", stem, req.version_info, req.error_detail.message)
        resp = rest_response(self.store, req, type_url, self.nonce())
        if resp is None:
            return 304, b""
        return 200, json_format.MessageToJson(resp, indent=None).encode()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(MAX_REQUESTS):
                if not await self._one(reader, writer):
                    break
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
        if len(head) > MAX_HEAD:
            raise ValueError("request head too large")
        lines = head.decode("latin-1").split("\r\n")
        method, path, version = ([*lines[0].split(" "), "", "", ""])[:3]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if not 0 <= length <= MAX_BODY or "chunked" in headers.get("transfer-encoding", "").lower():
            raise ValueError("unsupported request body")
        body = await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT)
        status, payload = self.answer(method, path, body)
        close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        out = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        if status != 304:
            ctype = "application/json" if status == 200 else "text/plain"
            out += f"Content-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n"
        if close:
            out += "Connection: close\r\n"
        writer.write(out.encode() + b"\r\n" + (payload if status != 304 else b""))
        await writer.drain()
        return not close

"""Helpers for the RBAC unit tests: configs from YAML through the real translator, and a dict-backed
engine.RequestView (a fake request or connection, with an optional fake TLS peer identity)."""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from google.protobuf import json_format

from sidecar.model.rbac import HttpRbac, IpAddress, NetworkRbac, PeerIdentity, Rbac
from sidecar.translate.rbac import translate_network_rbac, translate_rbac_filter, translate_rules


def _load(data: str | dict[str, Any]) -> dict[str, Any]:
    d = yaml.safe_load(data) if isinstance(data, str) else data
    assert isinstance(d, dict)
    return d


def rules(data: str | dict[str, Any], path: str = "rules") -> Rbac:
    """config.rbac.v3.RBAC from YAML, translated."""
    return translate_rules(json_format.ParseDict(_load(data), rbac_pb2.RBAC()), path)


def http_rbac(data: str | dict[str, Any], path: str = "rbac") -> HttpRbac:
    return translate_rbac_filter(json_format.ParseDict(_load(data), http_rbac_pb2.RBAC()), path)


def network_rbac(data: str | dict[str, Any], path: str = "rbac") -> NetworkRbac:
    return translate_network_rbac(json_format.ParseDict(_load(data), network_rbac_pb2.RBAC()), path)


def ip(text: str | None) -> IpAddress | None:
    return None if text is None else ipaddress.ip_address(text)


class FakeRequest:
    """engine.RequestView over plain values.  `headers` keys are lowercase; a list value is a
    repeated header.  `method` and `path` answer `:method` / `:path`; `path` None is a connection
    with no request (every header missing too, as the network filter sees it)."""

    def __init__(
        self,
        method: str | None = "GET",
        path: str | None = "/",
        headers: dict[str, str | list[str]] | None = None,
        source: str | None = "127.0.0.1",
        remote: str | None = None,
        destination: str | None = "127.0.0.1",
        port: int | None = 8080,
        sni: str = "",
        peer: PeerIdentity | None = None,
    ) -> None:
        self.values: dict[str, list[str]] = {}
        if path is not None:
            for name, value in (headers or {}).items():
                self.values[name.lower()] = [value] if isinstance(value, str) else list(value)
            if method is not None:
                self.values[":method"] = [method]
            self.values[":path"] = [path]
        self.path = path
        self.source = ip(source)
        self.remote = ip(remote) if remote is not None else self.source
        self.destination = ip(destination)
        self.port = port
        self.sni = sni
        self.peer = peer

    def header(self, name: str) -> str | None:
        values = self.values.get(name)
        return None if values is None else ",".join(values)

    def header_values(self, name: str) -> list[str] | None:
        return self.values.get(name)

    def request_path(self) -> str | None:
        return self.path

    def source_address(self) -> IpAddress | None:
        return self.source

    def remote_address(self) -> IpAddress | None:
        return self.remote

    def destination_address(self) -> IpAddress | None:
        return self.destination

    def destination_port(self) -> int | None:
        return self.port

    def server_name(self) -> str:
        return self.sni

    def peer_identity(self) -> PeerIdentity | None:
        return self.peer


SPIFFE_SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
SPIFFE_OTHER = "spiffe://cluster.local/ns/other/sa/client"

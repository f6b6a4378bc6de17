"""A whole configuration version: what the data path reads through `SnapshotStore.current`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.model.cluster import Cluster
from sidecar.model.endpoint import SocketAddress
from sidecar.model.listener import Listener
from sidecar.model.secret import Secret
from sidecar.model.tracing import Zipkin


@dataclass(frozen=True, slots=True)
class Node:
    id: str = ""
    cluster: str = ""
    zone: str = ""
    metadata: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Admin:
    address: SocketAddress | None = None
    access_log_path: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    listeners: tuple[Listener, ...] = ()
    clusters: Mapping[str, Cluster] = field(default_factory=dict)
    admin: Admin = Admin()
    node: Node = Node()
    version: str = ""
    # The bootstrap as JSON-able dict (for /config_dump's BootstrapConfigDump).
    bootstrap_json: Mapping[str, object] = field(default_factory=dict, compare=False)
    # static_resources.secrets by name: what SdsSecretConfigs without sds_config name (the
    # SecretStore of sidecar.tls.wiring holds them, next to SDS-delivered ones).
    secrets: Mapping[str, Secret] = field(default_factory=dict)
    # Bootstrap tracing.http when it is envoy.tracers.zipkin: the provider of traced connection
    # managers without their own (translate_bootstrap applies it to static listeners).
    zipkin: Zipkin | None = None

"""The Node this sidecar announces to control planes (envoy.config.core.v3.Node).

Built as Envoy's LocalInfoImpl builds it: the bootstrap's `node`, then the --service-node,
--service-cluster and --service-zone flags over it (a non-empty flag wins), then the user agent.
We announce ourselves as Envoy (user_agent_name "envoy", the Envoy release whose behaviour we copy)
because control planes gate features on it; the build metadata says what is really running.

ADS and other gRPC subscriptions need a node id and cluster (Config::Utility::checkLocalInfo):
`check_local_info` refuses a missing one with Envoy's message."""

from __future__ import annotations

from typing import Protocol

from envoy.config.core.v3 import base_pb2

from sidecar import __version__
from sidecar.translate.errors import ConfigError

USER_AGENT_NAME = "envoy"
ENVOY_VERSION = (1, 40, 0)  # the Envoy release our behaviour is checked against


class NodeOptions(Protocol):
    """The command-line values that shape the node (cli.Options has them)."""

    @property
    def service_cluster(self) -> str: ...

    @property
    def service_node(self) -> str: ...

    @property
    def service_zone(self) -> str: ...


def build_node(bootstrap_node: base_pb2.Node | None, options: NodeOptions | None = None) -> base_pb2.Node:
    """The node sent on xDS streams.  `bootstrap_node` is Bootstrap.node (None when absent)."""
    node = base_pb2.Node()
    if bootstrap_node is not None:
        node.CopyFrom(bootstrap_node)
    if options is not None:
        if options.service_node:
            node.id = options.service_node
        if options.service_cluster:
            node.cluster = options.service_cluster
        if options.service_zone:
            node.locality.zone = options.service_zone
    # Envoy always overwrites the user agent with its own, whatever the bootstrap says.
    node.user_agent_name = USER_AGENT_NAME
    build = node.user_agent_build_version
    build.Clear()
    major, minor, patch = ENVOY_VERSION
    build.version.major_number = major
    build.version.minor_number = minor
    build.version.patch = patch
    meta = build.metadata.fields
    meta["revision.status"].string_value = "Clean"
    meta["build.type"].string_value = "RELEASE"
    meta["ssl.version"].string_value = "OpenSSL"
    meta["sidecar.version"].string_value = __version__
    return node


def check_local_info(node: base_pb2.Node, who: str) -> None:
    """Refuse a subscription that needs a node id and cluster when either is missing."""
    if not node.id or not node.cluster:
        raise ConfigError(
            "node",
            f"{who}: node 'id' and 'cluster' are required. Set it either in 'node' config or via "
            "--service-node and --service-cluster options.",
        )

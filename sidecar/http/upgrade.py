"""HTTP/1.1 Upgrade (RFC 9110 section 7.8) as Envoy's connection manager does it for upgrade_configs
(Istio enables `websocket` on every HTTP connection manager).

The decision (`allowed`): the route's RouteAction.upgrade_configs entry for the type wins, enabled
or not; else the connection manager's upgrade_configs; no route at all leaves it to the router (its
404), as Envoy's createUpgradeFilterChain / "upgrade_rejected only with a cached route".  A refused
upgrade is a 403 with an empty body and the connection closed.

An allowed upgrade is proxied as a request that never ends: the head goes upstream with its
Connection and Upgrade headers kept verbatim, the route timeout is not armed (Envoy arms it when the
request is complete, and it never is) and no retry is attempted.  The bytes after the head are the
request body, written raw (http/protocol.py feeds them through `Stream.on_body`, unparsed).  The
upstream's answer:

- 101: its head goes back with its own Connection/Upgrade headers, no framing headers and no
  x-envoy-upstream-service-time (Envoy sets it only once the request is complete); then the upstream
  connection's bytes are relayed raw (pools/http1.py `Tunnel`), with the router's flow control both
  ways, until either side closes: a downstream FIN or close closes the upstream connection, an
  upstream close ends the response and closes the downstream one.
- anything else: a normal response with `connection: close`; the connection then closes.

Observed with Envoy 1.40 (tests/differential/test_upgrade.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.http.codec_h1 import HOP_BY_HOP_RESPONSE
from sidecar.model.route import RouteAction

if TYPE_CHECKING:
    from sidecar.http.events import Headers
    from sidecar.model.route import Route

# Response headers dropped from a 101 (the Connection/Upgrade pair is what the client needs).
_DROP_101 = frozenset({b"keep-alive", b"proxy-connection", b"transfer-encoding"})
# _raw_left of http/protocol.py for an upgraded stream: "the body never ends".
TUNNEL = 1 << 62


def allowed(kind: bytes, hcm_types: tuple[str, ...], route: Route | None) -> bool:
    """Whether an upgrade of `kind` (lowercased Upgrade header) may go ahead on `route`."""
    if route is None:
        return True  # no route: the router answers (Envoy checks upgrades only with a route)
    name = kind.decode("latin-1")
    action = route.action
    if isinstance(action, RouteAction):
        for k, enabled in action.upgrade_configs:
            if k == name:
                return enabled
    return name in hcm_types


def request_headers(original: Headers, forwarded: Headers) -> Headers:
    """The upstream request's headers: what `edge.forwardable` kept plus the Connection and Upgrade
    headers as the client sent them (Envoy forwards both verbatim for an upgrade)."""
    return [*forwarded, *[h for h in original if h[0] == b"connection" or h[0] == b"upgrade"]]


def response_headers(status: int, headers: Headers) -> Headers:
    """A response to an upgrade request: a 101 keeps Connection/Upgrade, any other is a normal
    response without hop-by-hop headers."""
    drop = _DROP_101 if status == 101 else HOP_BY_HOP_RESPONSE
    return [h for h in headers if h[0] not in drop]

"""Role based access control shared by envoy.filters.http.rbac (http/filters/rbac.py) and
envoy.filters.network.rbac (l4/rbac.py): the pure engine (engine.py) and the peer identity of a TLS
connection (peer.py).  The policy model is sidecar/model/rbac.py; translation is translate/rbac.py."""

from sidecar.rbac.engine import (
    ConnectionView,
    RequestView,
    evaluate,
    log_hint,
    matched_policy,
    matches,
    parse_ip,
    policy_matches,
    response_detail,
)

__all__ = [
    "ConnectionView",
    "RequestView",
    "evaluate",
    "log_hint",
    "matched_policy",
    "matches",
    "parse_ip",
    "policy_matches",
    "response_detail",
]

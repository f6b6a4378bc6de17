"""STRICT_DNS and LOGICAL_DNS clusters: a hostname resolved off the request path, then proxied to.
(`localhost` keeps the test on loopback; no DNS server is involved.)"""

from __future__ import annotations

import pytest

from tests.differential.harness import Differential
from tests.support.http1 import request

pytestmark = pytest.mark.differential
BOOTSTRAP = "dns.yaml"
UPSTREAMS = ("service1",)


def test_v4_only_dns_cluster_reaches_the_resolved_endpoint(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/v4", host="dns.test"))
    assert obs.status == 200
    assert obs.only_upstream.target == "/v4"


@pytest.mark.parametrize("path", ["/strict", "/logical"])
def test_auto_family_prefers_ipv6(diff: Differential, path: str) -> None:
    """dns_lookup_family AUTO (the default) takes the IPv6 answer for `localhost` (::1), where the
    upstream (127.0.0.1 only) is not listening: Envoy's connection-failure 503."""
    obs = diff.exchange(request("GET", path, host="dns.test"))
    assert (obs.status, obs.body) == (
        503,
        b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
    )
    assert obs.upstream == []

"""translate/rbac.py: RBAC protos -> model, and every unsupported or invalid field refused by path."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from google.protobuf import json_format

from sidecar.http.filters.rbac import RBAC_TYPE_URL
from sidecar.model.rbac import (
    ANY,
    Action,
    AndNode,
    AuthenticatedNode,
    Cidr,
    DestinationPortRangeNode,
    EnforcementType,
    HeaderNode,
    NotNode,
    OrNode,
    RbacPerRoute,
    RemoteIpNode,
    UrlPathNode,
)
from sidecar.routing.matchers import ExactMatcher, HeaderMatcher, PrefixMatcher
from sidecar.translate.errors import ConfigError
from sidecar.translate.rbac import rbac_http_filter, translate_rbac_per_route
from tests.unit.rbac.support import http_rbac, ip, network_rbac, rules

ANYONE = [{"any": True}]


def one_policy(
    permission: dict[str, Any] | None = None, principal: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "action": "ALLOW",
        "policies": {
            "p": {
                "permissions": [{"any": True} if permission is None else permission],
                "principals": [{"any": True} if principal is None else principal],
            }
        },
    }


def test_istio_style_allow_policy() -> None:
    r = rules(
        {
            "action": "ALLOW",
            "policies": {
                "ns[foo]-policy[httpbin]-rule[0]": {
                    "permissions": [
                        {
                            "and_rules": {
                                "rules": [
                                    {
                                        "or_rules": {
                                            "rules": [
                                                {
                                                    "header": {
                                                        "name": ":method",
                                                        "string_match": {"exact": "GET"},
                                                    }
                                                }
                                            ]
                                        }
                                    },
                                    {"or_rules": {"rules": [{"url_path": {"path": {"prefix": "/info"}}}]}},
                                ]
                            }
                        }
                    ],
                    "principals": [
                        {
                            "and_ids": {
                                "ids": [
                                    {
                                        "or_ids": {
                                            "ids": [
                                                {
                                                    "authenticated": {
                                                        "principal_name": {
                                                            "exact": "spiffe://cluster.local/ns/foo/sa/sleep"
                                                        }
                                                    }
                                                }
                                            ]
                                        }
                                    }
                                ]
                            }
                        }
                    ],
                }
            },
        }
    )
    assert r.action is Action.ALLOW
    ((name, policy),) = r.policies
    assert name == "ns[foo]-policy[httpbin]-rule[0]"
    perm = policy.permissions[0]
    assert isinstance(perm, AndNode) and all(isinstance(x, OrNode) for x in perm.items)
    method = perm.items[0].items[0]  # type: ignore[union-attr]
    assert method == HeaderNode(HeaderMatcher(":method", ExactMatcher("GET")))
    assert perm.items[1].items[0] == UrlPathNode(PrefixMatcher("/info"))  # type: ignore[union-attr]
    auth = policy.principals[0].items[0].items[0]  # type: ignore[union-attr]
    assert auth == AuthenticatedNode(ExactMatcher("spiffe://cluster.local/ns/foo/sa/sleep"))


def test_nodes() -> None:
    assert rules(one_policy({"any": True})).policies[0][1].permissions == (ANY,)
    assert rules(one_policy({"not_rule": {"any": True}})).policies[0][1].permissions == (NotNode(ANY),)
    pr = rules(one_policy({"destination_port_range": {"start": 1, "end": 65536}})).policies[0][1]
    assert pr.permissions == (DestinationPortRangeNode(1, 65536),)
    rp = rules(one_policy(None, {"remote_ip": {"address_prefix": "10.1.2.3", "prefix_len": 16}})).policies[0][
        1
    ]
    assert rp.principals == (RemoteIpNode(Cidr.of(ip("10.1.0.0"), 16)),)  # type: ignore[arg-type]
    assert rules(one_policy(None, {"authenticated": {}})).policies[0][1].principals == (
        AuthenticatedNode(None),
    )
    # "host" is looked up as :authority (Envoy's header map keeps Host there).
    host = rules(one_policy({"header": {"name": "Host", "exact_match": "a"}})).policies[0][1].permissions[0]
    assert isinstance(host, HeaderNode) and host.matcher.name == ":authority"  # type: ignore[attr-defined]


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "metadata permission",
        one_policy({"metadata": {"filter": "f", "path": [{"key": "k"}], "value": {"present_match": True}}}),
        "rules.policies[p].permissions[0].metadata",
        "dynamic metadata",
    ),
    (
        "metadata principal",
        one_policy(
            None, {"metadata": {"filter": "f", "path": [{"key": "k"}], "value": {"present_match": True}}}
        ),
        "rules.policies[p].principals[0].metadata",
        "dynamic metadata",
    ),
    (
        "filter_state",
        one_policy(None, {"filter_state": {"key": "k", "string_match": {"exact": "v"}}}),
        "rules.policies[p].principals[0].filter_state",
        "not supported",
    ),
    ("empty permission", one_policy({}), "rules.policies[p].permissions[0]", '"rule", reason: is required'),
    (
        "empty principal",
        one_policy(None, {}),
        "rules.policies[p].principals[0]",
        '"identifier", reason: is required',
    ),
    ("any false", one_policy({"any": False}), "rules.policies[p].permissions[0].any", "must equal true"),
    (
        "empty and_rules",
        one_policy({"and_rules": {}}),
        "rules.policies[p].permissions[0].and_rules.rules",
        "at least 1 item",
    ),
    (
        "empty or_ids",
        one_policy(None, {"or_ids": {}}),
        "rules.policies[p].principals[0].or_ids.ids",
        "at least 1 item",
    ),
    (
        "nested bad",
        one_policy({"not_rule": {"or_rules": {"rules": [{"any": True}, {"metadata": {}}]}}}),
        "rules.policies[p].permissions[0].not_rule.or_rules.rules[1].metadata",
        "dynamic metadata",
    ),
    (
        "port",
        one_policy({"destination_port": 70000}),
        "rules.policies[p].permissions[0].destination_port",
        "65535",
    ),
    (
        "port range order",
        one_policy({"destination_port_range": {"start": 10, "end": 10}}),
        "rules.policies[p].permissions[0].destination_port_range",
        "cannot be greater or equal",
    ),
    (
        "port range bound",
        one_policy({"destination_port_range": {"start": -1, "end": 10}}),
        "rules.policies[p].permissions[0].destination_port_range",
        "out of bounds",
    ),
    (
        "bad ip",
        one_policy(None, {"source_ip": {"address_prefix": "not-an-ip", "prefix_len": 8}}),
        "rules.policies[p].principals[0].source_ip.address_prefix",
        "malformed IP address",
    ),
    (
        "empty ip",
        one_policy(None, {"direct_remote_ip": {"prefix_len": 8}}),
        "rules.policies[p].principals[0].direct_remote_ip.address_prefix",
        "at least 1",
    ),
    (
        "prefix_len",
        one_policy(None, {"remote_ip": {"address_prefix": "::", "prefix_len": 129}}),
        "rules.policies[p].principals[0].remote_ip.prefix_len",
        "128",
    ),
    (
        "url_path without path",
        one_policy({"url_path": {}}),
        "rules.policies[p].permissions[0].url_path.path",
        "required",
    ),
    (
        "bad regex",
        one_policy({"url_path": {"path": {"safe_regex": {"regex": "("}}}}),
        "rules.policies[p].permissions[0].url_path.path.safe_regex.regex",
        "missing",
    ),
    (
        "empty principal_name",
        one_policy(None, {"authenticated": {"principal_name": {}}}),
        "rules.policies[p].principals[0].authenticated.principal_name",
        "is required",
    ),
    (
        "no permissions",
        {"policies": {"p": {"principals": ANYONE}}},
        "rules.policies[p].permissions",
        "at least 1 item",
    ),
    (
        "no principals",
        {"policies": {"p": {"permissions": ANYONE}}},
        "rules.policies[p].principals",
        "at least 1 item",
    ),
    (
        "condition",
        {
            "policies": {
                "p": {
                    "permissions": ANYONE,
                    "principals": ANYONE,
                    "condition": {"const_expr": {"bool_value": True}},
                }
            }
        },
        "rules.policies[p].condition",
        "CEL",
    ),
    (
        "audit logging",
        {"audit_logging_options": {"audit_condition": "ON_DENY"}},
        "rules.audit_logging_options",
        "audit logging",
    ),
]


@pytest.mark.parametrize(("data", "path", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_refusals(data: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        rules(data)
    assert e.value.path == path
    assert reason in e.value.reason


def test_http_filter_config() -> None:
    cfg = http_rbac(
        {
            "rules": {"action": "DENY"},
            "shadow_rules": one_policy(),
            "rules_stat_prefix": "r_",
            "shadow_rules_stat_prefix": "istio_dry_run_allow_",
            "track_per_rule_stats": True,
        }
    )
    assert cfg.rules is not None and cfg.rules.action is Action.DENY and cfg.rules.policies == ()
    assert cfg.shadow_rules is not None and cfg.shadow_rules.policies[0][0] == "p"
    assert (cfg.rules_stat_prefix, cfg.shadow_rules_stat_prefix, cfg.track_per_rule_stats) == (
        "r_",
        "istio_dry_run_allow_",
        True,
    )
    empty = http_rbac({})
    assert empty.rules is None and empty.shadow_rules is None
    with pytest.raises(ConfigError) as e:
        http_rbac(
            {
                "matcher": {
                    "on_no_match": {
                        "action": {
                            "name": "a",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.config.rbac.v3.Action",
                                "name": "x",
                            },
                        }
                    }
                }
            }
        )
    assert e.value.path == "rbac.matcher"


def test_per_route() -> None:
    off = translate_rbac_per_route(http_rbac_pb2.RBACPerRoute(), "r")
    assert off == RbacPerRoute(None)
    pb = json_format.ParseDict({"rbac": {"rules": {"action": "DENY"}}}, http_rbac_pb2.RBACPerRoute())
    on = translate_rbac_per_route(pb, "r")
    assert on.rbac is not None and on.rbac.rules is not None and on.rbac.rules.action is Action.DENY
    bad = json_format.ParseDict(
        {"rbac": {"rules": one_policy({"metadata": {}})}}, http_rbac_pb2.RBACPerRoute()
    )
    with pytest.raises(ConfigError) as e:
        translate_rbac_per_route(bad, "route.typed_per_filter_config[envoy.filters.http.rbac]")
    assert (
        e.value.path
        == "route.typed_per_filter_config[envoy.filters.http.rbac].rbac.rules.policies[p].permissions[0].metadata"
    )


class _Filter:
    def __init__(self, name: str = "envoy.filters.http.rbac", disabled: bool = False) -> None:
        self.name = name
        self.disabled = disabled


def test_http_filter_entry() -> None:
    msg = json_format.ParseDict({"rules": {}}, http_rbac_pb2.RBAC())
    entry = rbac_http_filter(_Filter(), msg, "hcm.http_filters[0]", last=False)
    assert entry.type_url == RBAC_TYPE_URL and entry.name == "envoy.filters.http.rbac"
    with pytest.raises(ConfigError, match="is the last filter"):
        rbac_http_filter(_Filter(), msg, "hcm.http_filters[1]", last=True)
    with pytest.raises(ConfigError) as e:
        rbac_http_filter(_Filter(disabled=True), msg, "hcm.http_filters[0]", last=False)
    assert e.value.path == "hcm.http_filters[0].disabled"
    bad = json_format.ParseDict({"rules": {"policies": {"p": {"permissions": ANYONE}}}}, http_rbac_pb2.RBAC())
    with pytest.raises(ConfigError) as e:
        rbac_http_filter(_Filter(), bad, "hcm.http_filters[0]", last=False)
    assert e.value.path == "hcm.http_filters[0].typed_config.rules.policies[p].principals"


def test_network_filter_config() -> None:
    cfg = network_rbac({"stat_prefix": "tcp.", "rules": one_policy()})
    assert cfg.stat_prefix == "tcp." and cfg.enforcement_type is EnforcementType.ONE_TIME_ON_FIRST_BYTE
    assert cfg.delay_deny == 0.0 and cfg.shadow_rules is None
    c2 = network_rbac(
        {"stat_prefix": "x", "enforcement_type": "CONTINUOUS", "delay_deny": "1.5s", "shadow_rules": {}}
    )
    assert c2.enforcement_type is EnforcementType.CONTINUOUS and c2.delay_deny == 1.5 and c2.rules is None
    with pytest.raises(ConfigError) as e:
        network_rbac({"rules": {}})
    assert e.value.path == "rbac.stat_prefix"
    with pytest.raises(ConfigError) as e:
        network_rbac({"stat_prefix": "x", "rules": one_policy(None, {"custom": {"name": "c"}})})
    assert e.value.path == "rbac.rules.policies[p].principals[0].custom"

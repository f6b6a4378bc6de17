"""The RBAC engine: each permission and principal kind on a case table, ALLOW / DENY / LOG,
policy order, and algebraic laws checked with hypothesis (not, and, or, De Morgan, DENY then ALLOW)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.model.rbac import (
    ANY,
    Action,
    AndNode,
    Cidr,
    DestinationPortNode,
    HeaderNode,
    Node,
    NotNode,
    OrNode,
    PeerIdentity,
    Policy,
    Rbac,
    RemoteIpNode,
    SourceIpNode,
    UrlPathNode,
)
from sidecar.rbac import ConnectionView, evaluate, log_hint, matched_policy, matches, response_detail
from sidecar.routing.matchers import ExactMatcher, HeaderMatcher, PrefixMatcher
from tests.unit.rbac.support import SPIFFE_OTHER, SPIFFE_SLEEP, FakeRequest, ip, rules


def allow_if(permission: dict[str, Any], principal: dict[str, Any] | None = None) -> Rbac:
    return rules(
        {
            "action": "ALLOW",
            "policies": {"p": {"permissions": [permission], "principals": [principal or {"any": True}]}},
        }
    )


def allowed(rbac: Rbac, **request: Any) -> bool:
    return evaluate(rbac, FakeRequest(**request))[0]


# -- permissions --------------------------------------------------------------------------------

PERMISSION_CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("any", {"any": True}, {}, True),
    ("method exact", {"header": {"name": ":method", "string_match": {"exact": "GET"}}}, {}, True),
    (
        "method other",
        {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
        {"method": "POST"},
        False,
    ),
    ("header present", {"header": {"name": "x-a", "present_match": True}}, {"headers": {"x-a": ""}}, True),
    ("header missing", {"header": {"name": "x-a", "present_match": True}}, {}, False),
    # A repeated header matches when any value does (as route header matching).
    (
        "header repeated",
        {"header": {"name": "x-a", "string_match": {"exact": "b"}}},
        {"headers": {"x-a": ["a", "b"]}},
        True,
    ),
    # A missing header fails a value matcher even inverted (HeaderUtility::matchHeaders).
    (
        "header inverted missing",
        {"header": {"name": "x-a", "string_match": {"exact": "v"}, "invert_match": True}},
        {},
        False,
    ),
    (
        "header :path has query",
        {"header": {"name": ":path", "string_match": {"exact": "/a"}}},
        {"path": "/a?x=1"},
        False,
    ),
    ("url_path exact", {"url_path": {"path": {"exact": "/a"}}}, {"path": "/a"}, True),
    # url_path compares the path without query and fragment.
    ("url_path drops query", {"url_path": {"path": {"exact": "/a"}}}, {"path": "/a?x=1"}, True),
    ("url_path drops fragment", {"url_path": {"path": {"exact": "/a"}}}, {"path": "/a#f"}, True),
    ("url_path prefix", {"url_path": {"path": {"prefix": "/api/"}}}, {"path": "/api/v1"}, True),
    (
        "url_path ignore_case",
        {"url_path": {"path": {"exact": "/A", "ignore_case": True}}},
        {"path": "/a"},
        True,
    ),
    (
        "url_path regex",
        {"url_path": {"path": {"safe_regex": {"regex": "/v[0-9]+/.*"}}}},
        {"path": "/v2/x?q"},
        True,
    ),
    ("url_path no path", {"url_path": {"path": {"prefix": "/"}}}, {"path": None}, False),
    ("destination_port", {"destination_port": 8080}, {}, True),
    ("destination_port other", {"destination_port": 80}, {}, False),
    ("port range in", {"destination_port_range": {"start": 8000, "end": 8081}}, {}, True),
    ("port range end excluded", {"destination_port_range": {"start": 8000, "end": 8080}}, {}, False),
    ("destination_ip", {"destination_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}}, {}, True),
    ("destination_ip other", {"destination_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}, {}, False),
    ("sni", {"requested_server_name": {"suffix": ".local"}}, {"sni": "a.svc.local"}, True),
    ("sni empty", {"requested_server_name": {"exact": ""}}, {}, True),
    ("not_rule", {"not_rule": {"destination_port": 80}}, {}, True),
    (
        "and_rules",
        {"and_rules": {"rules": [{"destination_port": 8080}, {"url_path": {"path": {"prefix": "/x"}}}]}},
        {"path": "/y"},
        False,
    ),
    (
        "or_rules",
        {"or_rules": {"rules": [{"destination_port": 80}, {"url_path": {"path": {"prefix": "/y"}}}]}},
        {"path": "/y"},
        True,
    ),
]


@pytest.mark.parametrize(
    ("perm", "request_kw", "expected"),
    [c[1:] for c in PERMISSION_CASES],
    ids=[c[0] for c in PERMISSION_CASES],
)
def test_permissions(perm: dict[str, Any], request_kw: dict[str, Any], expected: bool) -> None:
    assert allowed(allow_if(perm), **request_kw) is expected


# -- principals --------------------------------------------------------------------------------

TLS_SLEEP = PeerIdentity(uri_sans=(SPIFFE_SLEEP,), subject="")
PRINCIPAL_CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("any", {"any": True}, {}, True),
    (
        "source_ip /32",
        {"source_ip": {"address_prefix": "127.0.0.5", "prefix_len": 32}},
        {"source": "127.0.0.5"},
        True,
    ),
    (
        "source_ip other",
        {"source_ip": {"address_prefix": "127.0.0.5", "prefix_len": 32}},
        {"source": "127.0.0.6"},
        False,
    ),
    # prefix_len over the family's width means all bits (CidrRange::create).
    (
        "prefix_len 128 on v4",
        {"direct_remote_ip": {"address_prefix": "127.0.0.5", "prefix_len": 128}},
        {"source": "127.0.0.5"},
        True,
    ),
    (
        "no prefix_len: everything",
        {"direct_remote_ip": {"address_prefix": "10.9.9.9"}},
        {"source": "127.0.0.1"},
        True,
    ),
    (
        "v4 range, v6 peer",
        {"direct_remote_ip": {"address_prefix": "0.0.0.0", "prefix_len": 0}},
        {"source": "::1"},
        False,
    ),
    ("v6 range", {"direct_remote_ip": {"address_prefix": "::", "prefix_len": 0}}, {"source": "::1"}, True),
    (
        "remote_ip reads remote",
        {"remote_ip": {"address_prefix": "10.1.0.0", "prefix_len": 16}},
        {"remote": "10.1.2.3"},
        True,
    ),
    (
        "remote_ip not source",
        {"remote_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}},
        {"remote": "10.1.2.3"},
        False,
    ),
    (
        "header",
        {"header": {"name": "x-user", "string_match": {"exact": "jason"}}},
        {"headers": {"x-user": "jason"}},
        True,
    ),
    ("url_path", {"url_path": {"path": {"exact": "/p"}}}, {"path": "/p?q"}, True),
    ("authenticated plaintext", {"authenticated": {}}, {}, False),
    ("authenticated any tls", {"authenticated": {}}, {"peer": PeerIdentity()}, True),
    (
        "authenticated uri",
        {"authenticated": {"principal_name": {"exact": SPIFFE_SLEEP}}},
        {"peer": TLS_SLEEP},
        True,
    ),
    (
        "authenticated namespace regex",
        {"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/default/.*"}}}},
        {"peer": TLS_SLEEP},
        True,
    ),
    (
        "authenticated wrong uri",
        {"authenticated": {"principal_name": {"exact": SPIFFE_OTHER}}},
        {"peer": TLS_SLEEP},
        False,
    ),
    # Any URI SAN may match, then any DNS SAN, then the subject.
    (
        "authenticated second uri",
        {"authenticated": {"principal_name": {"exact": SPIFFE_OTHER}}},
        {"peer": PeerIdentity(uri_sans=(SPIFFE_SLEEP, SPIFFE_OTHER))},
        True,
    ),
    (
        "authenticated dns",
        {"authenticated": {"principal_name": {"exact": "db.example.com"}}},
        {"peer": PeerIdentity(dns_sans=("db.example.com",), subject="CN=x")},
        True,
    ),
    (
        "authenticated subject",
        {"authenticated": {"principal_name": {"exact": "CN=client,O=acme"}}},
        {"peer": PeerIdentity(subject="CN=client,O=acme")},
        True,
    ),
    # No certificate: the empty subject is what is matched (so exact "" matches).
    (
        "authenticated no cert vs empty",
        {"authenticated": {"principal_name": {"exact": ""}}},
        {"peer": PeerIdentity()},
        True,
    ),
    ("not_id", {"not_id": {"source_ip": {"address_prefix": "127.0.0.5", "prefix_len": 32}}}, {}, True),
    (
        "and_ids",
        {
            "and_ids": {
                "ids": [
                    {"authenticated": {}},
                    {"source_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}},
                ]
            }
        },
        {"peer": TLS_SLEEP},
        True,
    ),
    (
        "or_ids",
        {"or_ids": {"ids": [{"authenticated": {}}, {"header": {"name": "x", "present_match": True}}]}},
        {},
        False,
    ),
]


@pytest.mark.parametrize(
    ("principal", "request_kw", "expected"),
    [c[1:] for c in PRINCIPAL_CASES],
    ids=[c[0] for c in PRINCIPAL_CASES],
)
def test_principals(principal: dict[str, Any], request_kw: dict[str, Any], expected: bool) -> None:
    assert allowed(allow_if({"any": True}, principal), **request_kw) is expected


def test_connection_view_has_no_headers_or_path() -> None:
    conn = ConnectionView(source=ip("127.0.0.9"), destination=ip("127.0.0.1"), port=9000)
    assert matches(allow_if({"any": True}).policies[0][1].permissions[0], conn)
    method = rules(
        {
            "action": "ALLOW",
            "policies": {
                "p": {
                    "permissions": [{"header": {"name": ":method", "present_match": True}}],
                    "principals": [{"any": True}],
                }
            },
        }
    )
    assert evaluate(method, conn) == (False, None)
    absent = rules(
        {
            "action": "ALLOW",
            "policies": {
                "p": {
                    "permissions": [{"header": {"name": "x", "present_match": False}}],
                    "principals": [{"any": True}],
                }
            },
        }
    )
    assert evaluate(absent, conn) == (True, "p")
    # remote_ip of a connection is its peer.
    remote = allow_if({"any": True}, {"remote_ip": {"address_prefix": "127.0.0.9", "prefix_len": 32}})
    assert evaluate(remote, conn) == (True, "p")


# -- actions and policy order ---------------------------------------------------------------------


def test_empty_policies_allow_denies_everything_deny_allows_everything() -> None:
    assert evaluate(rules({"action": "ALLOW"}), FakeRequest()) == (False, None)
    assert evaluate(rules({"action": "DENY"}), FakeRequest()) == (True, None)
    assert evaluate(rules({"action": "LOG"}), FakeRequest()) == (True, None)
    assert evaluate(rules({}), FakeRequest()) == (False, None)  # ALLOW is the default action


def test_first_policy_in_name_order_is_the_effective_one() -> None:
    both = {"permissions": [{"any": True}], "principals": [{"any": True}]}
    r = rules({"action": "DENY", "policies": {"zeta": both, "Alpha": both, "beta": both}})
    assert [name for name, _ in r.policies] == ["Alpha", "beta", "zeta"]
    assert evaluate(r, FakeRequest()) == (False, "Alpha")


def test_a_policy_needs_a_permission_and_a_principal() -> None:
    r = rules(
        {
            "action": "ALLOW",
            "policies": {
                "p": {
                    "permissions": [{"destination_port": 1}, {"destination_port": 8080}],
                    "principals": [{"source_ip": {"address_prefix": "10.0.0.1", "prefix_len": 32}}],
                }
            },
        }
    )
    assert evaluate(r, FakeRequest()) == (False, None)
    assert evaluate(r, FakeRequest(source="10.0.0.1")) == (True, "p")
    assert evaluate(r, FakeRequest(source="10.0.0.1", port=9)) == (False, None)


def test_log_action_allows_and_hints() -> None:
    r = allow_if({"url_path": {"path": {"prefix": "/audit"}}})
    log = Rbac(Action.LOG, r.policies)
    assert evaluate(log, FakeRequest(path="/audit/x")) == (True, "p")
    assert evaluate(log, FakeRequest(path="/other")) == (True, None)
    assert log_hint(log, "p") is True and log_hint(log, None) is False
    assert log_hint(r, "p") is None


def test_response_detail() -> None:
    assert response_detail(None) == "rbac_access_denied_matched_policy[none]"
    assert response_detail("ns[foo] policy\tx") == "rbac_access_denied_matched_policy[ns[foo]_policy_x]"


def test_cidr_truncates_the_address() -> None:
    c = Cidr.of(ip("10.255.255.255"), 8)  # type: ignore[arg-type]
    assert (c.network, c.prefix_len) == (10 << 24, 8)
    assert c.contains(ip("10.0.0.1")) and not c.contains(ip("11.0.0.1")) and not c.contains(None)
    assert Cidr.of(ip("1.2.3.4"), 999).prefix_len == 32  # type: ignore[arg-type]


# -- laws (hypothesis) -----------------------------------------------------------------------------

METHODS = ("GET", "POST", "DELETE")
PATHS = ("/", "/a", "/a/b", "/b?x=1")
SOURCES = ("127.0.0.1", "127.0.0.2", "10.0.0.1")
PORTS = (80, 8080)

leaves: st.SearchStrategy[Node] = st.one_of(
    st.just(ANY),
    st.sampled_from(METHODS).map(lambda m: HeaderNode(HeaderMatcher(":method", ExactMatcher(m)))),
    st.sampled_from(("/a", "/b", "/")).map(lambda p: UrlPathNode(PrefixMatcher(p))),
    st.sampled_from(SOURCES).map(lambda s: SourceIpNode(Cidr.of(ip(s), 32))),  # type: ignore[arg-type]
    st.sampled_from(SOURCES).map(lambda s: RemoteIpNode(Cidr.of(ip(s), 24))),  # type: ignore[arg-type]
    st.sampled_from(PORTS).map(DestinationPortNode),
)
trees: st.SearchStrategy[Node] = st.recursive(
    leaves,
    lambda kids: st.one_of(
        kids.map(NotNode),
        st.lists(kids, min_size=1, max_size=3).map(lambda xs: AndNode(tuple(xs))),
        st.lists(kids, min_size=1, max_size=3).map(lambda xs: OrNode(tuple(xs))),
    ),
    max_leaves=8,
)
requests = st.builds(
    FakeRequest,
    method=st.sampled_from(METHODS),
    path=st.sampled_from(PATHS),
    source=st.sampled_from(SOURCES),
    port=st.sampled_from(PORTS),
)


@given(trees, requests)
def test_not_negates(x: Node, req: FakeRequest) -> None:
    assert matches(NotNode(x), req) == (not matches(x, req))
    assert matches(NotNode(NotNode(x)), req) == matches(x, req)


@given(st.lists(trees, min_size=1, max_size=4), requests)
def test_and_or_are_all_and_any(xs: list[Node], req: FakeRequest) -> None:
    each = [matches(x, req) for x in xs]
    assert matches(AndNode(tuple(xs)), req) == all(each)
    assert matches(OrNode(tuple(xs)), req) == any(each)
    # De Morgan
    assert matches(NotNode(AndNode(tuple(xs))), req) == matches(OrNode(tuple(NotNode(x) for x in xs)), req)


@given(trees, requests)
def test_identities(x: Node, req: FakeRequest) -> None:
    assert matches(OrNode((x, ANY)), req)
    assert not matches(AndNode((x, NotNode(x))), req)
    assert matches(AndNode((x, ANY)), req) == matches(x, req)


policies_st = st.dictionaries(
    st.sampled_from(("a", "b", "c", "d")),
    st.builds(lambda p, q: Policy((p,), (q,)), trees, trees),
    max_size=3,
).map(lambda d: tuple(sorted(d.items())))


@settings(max_examples=200)
@given(policies_st, requests)
def test_actions_agree(policies: tuple[tuple[str, Policy], ...], req: FakeRequest) -> None:
    matched = matched_policy(Rbac(Action.ALLOW, policies), req)
    expected = next(
        (n for n, p in policies if matches(p.permissions[0], req) and matches(p.principals[0], req)), None
    )
    assert matched == expected
    assert evaluate(Rbac(Action.ALLOW, policies), req) == (matched is not None, matched)
    assert evaluate(Rbac(Action.DENY, policies), req) == (matched is None, matched)
    assert evaluate(Rbac(Action.LOG, policies), req) == (True, matched)
    if not policies:  # a policy set with no match under ALLOW denies
        assert evaluate(Rbac(Action.ALLOW, policies), req)[0] is False


@settings(max_examples=200)
@given(policies_st, policies_st, requests)
def test_deny_overrides_allow(
    deny: tuple[tuple[str, Policy], ...], allow: tuple[tuple[str, Policy], ...], req: FakeRequest
) -> None:
    """Istio's layering: a DENY filter, then an ALLOW filter; a request passes only both."""
    passed = evaluate(Rbac(Action.DENY, deny), req)[0] and evaluate(Rbac(Action.ALLOW, allow), req)[0]
    if matched_policy(Rbac(Action.DENY, deny), req) is not None:
        assert not passed  # whatever the ALLOW policies say
    else:
        assert passed == (matched_policy(Rbac(Action.ALLOW, allow), req) is not None)

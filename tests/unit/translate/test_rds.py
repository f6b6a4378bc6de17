"""translate_route_configuration: YAML route configs to the model, selection through the built table,
and refusals (Envoy's own and our unimplemented fields) with their field paths."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from sidecar.model.route import (
    NO_MUTATIONS,
    AppendAction,
    DirectResponseAction,
    RedirectAction,
    RequireTls,
    RouteAction,
    RouteConfiguration,
)
from sidecar.routing import matchers as m
from sidecar.routing.rewrite import redirect_location, rewrite_path
from sidecar.routing.weighted import pick
from sidecar.translate.common import preload_types
from sidecar.translate.errors import ConfigError
from sidecar.translate.rds import translate_route_configuration
from tests.unit.routing.request import Req

P = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
V = f"{P}.virtual_hosts[0]"
R = f"{V}.routes[0]"


def rc_pb(data: str | dict[str, Any]) -> route_pb2.RouteConfiguration:
    d = yaml.safe_load(data) if isinstance(data, str) else data
    preload_types(d)
    return json_format.ParseDict(d, route_pb2.RouteConfiguration())


def translate(data: str | dict[str, Any]) -> RouteConfiguration:
    return translate_route_configuration(rc_pb(data), P)


def one_route(route: dict[str, Any], vhost: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    r = {"match": {"prefix": "/"}, "route": {"cluster": "c1"}}
    r.update(route)
    for k in [k for k, v in r.items() if v is None]:
        del r[k]
    v = {"name": "v", "domains": ["*"], "routes": [r]}
    v.update(vhost or {})
    return {"name": "rc", "virtual_hosts": [v], **top}


def refused(config: dict[str, Any] | str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        translate(config)
    return info.value


def chosen(
    rc: RouteConfiguration, authority: str, path: str, headers: dict[str, str] | None = None
) -> str | None:
    assert rc.table is not None
    got = rc.table.select(authority, path, Req(headers))
    return None if got is None else f"{got[0].name}/{got[1].name}"


BOOKINFO = """
name: "9080"
virtual_hosts:
- name: reviews.default.svc.cluster.local:9080
  domains: [reviews.default.svc.cluster.local, "reviews.default.svc.cluster.local:9080", reviews, "reviews:9080"]
  routes:
  - name: jason
    match:
      prefix: /
      case_sensitive: true
      headers: [{name: end-user, string_match: {exact: jason}}]
    route: {cluster: "outbound|9080|v2|reviews.default.svc.cluster.local", timeout: 0s}
  - name: split
    match: {prefix: /}
    route:
      weighted_clusters:
        clusters:
        - {name: "outbound|9080|v1|reviews.default.svc.cluster.local", weight: 80}
        - {name: "outbound|9080|v3|reviews.default.svc.cluster.local", weight: 20}
      timeout: 0s
- name: allow_any
  domains: ["*"]
  routes:
  - name: allow_any
    match: {prefix: /}
    route: {cluster: PassthroughCluster, timeout: 0s}
"""


def test_bookinfo_reviews() -> None:
    rc = translate(BOOKINFO)
    assert rc.name == "9080"
    assert (
        chosen(rc, "reviews:9080", "/reviews/0", {"end-user": "jason"})
        == "reviews.default.svc.cluster.local:9080/jason"
    )
    assert chosen(rc, "Reviews:9080", "/reviews/0") == "reviews.default.svc.cluster.local:9080/split"
    assert chosen(rc, "ratings:9080", "/") == "allow_any/allow_any"
    jason, split = rc.virtual_hosts[0].routes
    assert jason.action == RouteAction(
        cluster="outbound|9080|v2|reviews.default.svc.cluster.local", timeout=0.0
    )
    assert isinstance(split.action, RouteAction)
    assert split.action.total_weight == 100
    picks = [pick(split.action.weighted_clusters, 100, r).name.split("|")[2] for r in range(100)]
    assert picks.count("v1") == 80 and picks.count("v3") == 20
    assert rc.virtual_hosts[0].mutations is NO_MUTATIONS and jason.mutations is NO_MUTATIONS


def test_matchers_translated() -> None:
    rc = translate(
        """
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - name: all
    match:
      path: /Exact
      case_sensitive: false
      headers:
      - {name: X-User, string_match: {prefix: ad, ignore_case: true}}
      - {name: Host, present_match: true}
      - {name: x-n, range_match: {start: 1, end: 5}, invert_match: true, treat_missing_header_as_empty: true}
      - {name: x-d, exact_match: ""}
      - {name: x-nospec}
      query_parameters:
      - {name: q, string_match: {safe_regex: {regex: "[0-9]+"}}}
      - {name: p, present_match: false}
      grpc: {}
    direct_response: {status: 200}
  - name: psp
    match: {path_separated_prefix: /api}
    direct_response: {status: 200}
"""
    )
    route = rc.virtual_hosts[0].routes[0]
    assert route.match.path == m.ExactPathMatcher("/Exact", case_sensitive=False)
    assert route.match_prefix == "/Exact"
    assert route.match.requirements == (
        m.HeaderMatcher("x-user", m.PrefixMatcher("ad", ignore_case=True)),
        m.HeaderMatcher(":authority", None, present=True),
        m.HeaderMatcher("x-n", m.RangeMatcher(1, 5), invert=True, treat_missing_as_empty=True),
        m.HeaderMatcher("x-d", m.AnyValueMatcher()),
        m.HeaderMatcher("x-nospec", None),
        m.QueryParameterMatcher("q", m.RegexMatcher("[0-9]+")),
        m.QueryParameterMatcher("p", present_match=False),
        m.GrpcMatcher(),
    )
    headers = {"x-user": "ADmin", "x-d": "", "x-nospec": "1", "content-type": "application/grpc"}
    assert chosen(rc, "h", "/exact?q=12", {":authority": "h", **headers}) == "v/all"
    assert chosen(rc, "h", "/exact?q=12&p", {":authority": "h", **headers}) is None
    assert chosen(rc, "h", "/api/x", {}) == "v/psp"


def test_route_action_fields() -> None:
    rc = translate(
        one_route(
            {
                "route": {
                    "cluster_header": "X-Cluster",
                    "cluster_not_found_response_code": "NOT_FOUND",
                    "regex_rewrite": {"pattern": {"regex": "^/v1/(.*)"}, "substitution": "/v2/\\1"},
                    "host_rewrite_header": "X-Host",
                    "append_x_forwarded_host": True,
                    "timeout": "1.5009s",
                }
            }
        )
    )
    route = rc.virtual_hosts[0].routes[0]
    action = route.action
    assert isinstance(action, RouteAction)
    assert (action.cluster_header, action.cluster_not_found_response_code) == ("x-cluster", 404)
    assert (action.host_rewrite_header, action.append_x_forwarded_host) == ("x-host", True)
    assert action.timeout == 1.5  # Envoy keeps milliseconds
    assert rewrite_path(route, action, "/v1/a/b?x=1") == "/v2/a/b?x=1"
    extras: list[tuple[dict[str, Any], str, object]] = [
        ({"host_rewrite_literal": "new.host"}, "host_rewrite_literal", "new.host"),
        ({"auto_host_rewrite": True}, "auto_host_rewrite", True),
        ({"prefix_rewrite": "/p"}, "prefix_rewrite", "/p"),
    ]
    for extra, field, value in extras:
        a = translate(one_route({"route": {"cluster": "c", **extra}})).virtual_hosts[0].routes[0].action
        assert getattr(a, field) == value
    a = translate(one_route({})).virtual_hosts[0].routes[0].action
    assert isinstance(a, RouteAction) and (a.timeout, a.cluster_not_found_response_code) == (15.0, 503)


def test_weighted_clusters_with_mutations() -> None:
    rc = translate(
        one_route(
            {
                "route": {
                    "weighted_clusters": {
                        "total_weight": 1000,  # deprecated; Envoy 1.40 divides by the sum of weights
                        "clusters": [
                            {"name": "a", "weight": 0},
                            {
                                "name": "b",
                                "weight": 3,
                                "host_rewrite_literal": "b.host",
                                "request_headers_to_add": [{"header": {"key": "x-w", "value": "b"}}],
                                "response_headers_to_remove": ["x-secret"],
                            },
                        ],
                    }
                }
            }
        )
    )
    action = rc.virtual_hosts[0].routes[0].action
    assert isinstance(action, RouteAction)
    assert action.total_weight == 3
    a, b = action.weighted_clusters
    assert (a.weight, a.mutations) == (0, NO_MUTATIONS)
    assert b.host_rewrite_literal == "b.host"
    assert b.mutations.request_headers_to_add[0].value == b"b"
    assert b.mutations.response_headers_to_remove == (b"x-secret",)


def test_redirect_and_direct_response(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    body_file = tmp_path / "body.txt"
    body_file.write_bytes(b"from file")
    monkeypatch.setenv("SIDECAR_TEST_BODY", "from env")
    rc = translate(
        f"""
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {{prefix: /old/}}
    redirect: {{https_redirect: true, prefix_rewrite: /new/, response_code: PERMANENT_REDIRECT, port_redirect: 8443}}
  - match: {{prefix: /s}}
    redirect: {{scheme_redirect: HTTP, host_redirect: h2, path_redirect: "/p?x=1", strip_query: true, response_code: SEE_OTHER}}
  - match: {{prefix: /f}}
    direct_response: {{status: 503, body: {{filename: "{body_file}"}}}}
  - match: {{prefix: /e}}
    direct_response: {{status: 200, body: {{environment_variable: SIDECAR_TEST_BODY}}}}
  - match: {{prefix: /b}}
    direct_response: {{status: 200, body: {{inline_bytes: "AAE="}}}}
  - match: {{prefix: /n}}
    direct_response: {{status: 204}}
"""
    )
    old, s, f, e, b, n = rc.virtual_hosts[0].routes
    assert old.action == RedirectAction(scheme="https", port=8443, prefix_rewrite="/new/", response_code=308)
    assert isinstance(old.action, RedirectAction)
    assert redirect_location(old.action, "http", "h:80", "/old/x?y", route=old) == "https://h:8443/new/x?y"
    assert s.action == RedirectAction(
        scheme="HTTP", host="h2", path="/p?x=1", response_code=303, strip_query=True
    )
    assert f.action == DirectResponseAction(503, b"from file")
    assert e.action == DirectResponseAction(200, b"from env")
    assert b.action == DirectResponseAction(200, b"\x00\x01")
    assert n.action == DirectResponseAction(204, None)
    codes = ["MOVED_PERMANENTLY", "FOUND", "SEE_OTHER", "TEMPORARY_REDIRECT", "PERMANENT_REDIRECT"]
    for code, number in zip(codes, [301, 302, 303, 307, 308], strict=True):
        action = (
            translate(one_route({"route": None, "redirect": {"response_code": code}}))
            .virtual_hosts[0]
            .routes[0]
            .action
        )
        assert isinstance(action, RedirectAction) and action.response_code == number


def test_direct_response_body_size_limit() -> None:
    big = {"route": None, "direct_response": {"status": 200, "body": {"inline_string": "x" * 5000}}}
    err = refused(one_route(big))
    assert (err.path, err.reason) == (
        f"{R}.direct_response.body",
        "response body size is 5000 bytes; maximum is 4096",
    )
    rc = translate(one_route(big, max_direct_response_body_size_bytes=6000))
    assert rc.virtual_hosts[0].routes[0].action == DirectResponseAction(200, b"x" * 5000)


def test_header_mutations_at_every_level() -> None:
    rc = translate(
        """
name: rc
internal_only_headers: [X-Internal]
most_specific_header_mutations_wins: true
ignore_port_in_host_matching: true
request_headers_to_add:
- header: {key: X-Rc, value: "100%%"}
  append_action: OVERWRITE_IF_EXISTS
response_headers_to_remove: [X-Powered-By]
virtual_hosts:
- name: v
  domains: ["*"]
  require_tls: EXTERNAL_ONLY
  include_request_attempt_count: true
  include_attempt_count_in_response: true
  response_headers_to_add:
  - {header: {key: x-v, value: "%DOWNSTREAM_REMOTE_ADDRESS% %%"}, append: false}
  - {header: {key: x-empty, value: ""}, keep_empty_value: true, append: true}
  - {header: {key: x-raw, raw_value: "cmF3"}, append_action: ADD_IF_ABSENT}
  - {header: {key: x-req, value: "%REQ(:path)%"}}
  routes:
  - match: {prefix: /}
    route: {cluster: c}
    request_headers_to_remove: [x-drop]
"""
    )
    assert rc.internal_only_headers == (b"x-internal",)
    assert rc.most_specific_header_mutations_wins and rc.ignore_port_in_host_matching
    (rc_add,) = rc.mutations.request_headers_to_add
    assert (rc_add.name, rc_add.value, rc_add.dynamic) == (b"x-rc", b"100%", False)
    assert rc_add.append_action is AppendAction.OVERWRITE_IF_EXISTS
    assert rc.mutations.response_headers_to_remove == (b"x-powered-by",)
    vh = rc.virtual_hosts[0]
    assert vh.require_tls is RequireTls.EXTERNAL_ONLY
    assert vh.include_request_attempt_count and vh.include_attempt_count_in_response
    v, empty, raw, req = vh.mutations.response_headers_to_add
    assert (v.value, v.dynamic, v.append_action) == (
        b"%DOWNSTREAM_REMOTE_ADDRESS% %%",
        True,
        AppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    assert (empty.value, empty.keep_empty_value, empty.append_action) == (
        b"",
        True,
        AppendAction.APPEND_IF_EXISTS_OR_ADD,
    )
    assert (raw.value, raw.append_action) == (b"raw", AppendAction.ADD_IF_ABSENT)
    assert req.dynamic
    assert vh.routes[0].mutations.request_headers_to_remove == (b"x-drop",)


def test_typed_per_filter_config_kept() -> None:
    fault = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "abort": {"http_status": 500},
    }
    rc = translate(one_route({"typed_per_filter_config": {"envoy.filters.http.fault": fault}, "name": "r"}))
    ((name, config),) = rc.virtual_hosts[0].routes[0].typed_per_filter_config
    assert name == "envoy.filters.http.fault"
    assert getattr(config, "type_url", "").endswith("HTTPFault")


# --- refusals: (config, error path, reason fragment) ------------------------------------------------
def _vh(*domains: str, name: str = "v") -> dict[str, Any]:
    return {"name": name, "domains": list(domains), "routes": []}


REFUSALS = [
    # Envoy's own refusals (all checked against Envoy 1.40 --mode validate).
    (one_route({"route": None}), R, 'field: "action", reason: is required'),
    (one_route({"match": {}}), f"{R}.match", '"path_specifier"'),
    (one_route({"match": {"safe_regex": {"regex": "("}}}), f"{R}.match.safe_regex.regex", "missing ): ("),
    (
        one_route({"match": {"safe_regex": {"regex": "a{1000}"}}}),
        f"{R}.match.safe_regex.regex",
        "RE2 program size of 1004 > max program size of 100",
    ),
    (
        one_route(
            {
                "match": {
                    "prefix": "/",
                    "headers": [
                        {"name": "x", "string_match": {"safe_regex": {"regex": "a"}, "ignore_case": True}}
                    ],
                }
            }
        ),
        f"{R}.match.headers[0].string_match.ignore_case",
        "ignore_case has no effect for safe_regex.",
    ),
    (
        one_route({"request_headers_to_add": [{"header": {"key": ":path", "value": "x"}}]}),
        f"{R}.request_headers_to_add[0].header.key",
        ":-prefixed or host headers may not be modified",
    ),
    (
        one_route({"response_headers_to_add": [{"header": {"key": "Host", "value": "x"}}]}),
        f"{R}.response_headers_to_add[0].header.key",
        ":-prefixed or host headers may not be modified",
    ),
    (
        one_route({"request_headers_to_remove": ["HOST"]}),
        f"{R}.request_headers_to_remove[0]",
        ":-prefixed or host headers may not be removed",
    ),
    (
        one_route({"route": None, "direct_response": {"status": 199}}),
        f"{R}.direct_response.status",
        "[200, 600)",
    ),
    (
        one_route({"route": None, "direct_response": {"status": 600}}),
        f"{R}.direct_response.status",
        "[200, 600)",
    ),
    (
        {"name": "rc", "virtual_hosts": [_vh("Foo.com"), _vh("x", "foo.com", name="b")]},
        f"{P}.virtual_hosts[1].domains[1]",
        "Duplicate entry of domain foo.com in route rc",
    ),
    (
        {"virtual_hosts": [_vh("*"), _vh("*", name="b")]},
        f"{P}.virtual_hosts[1].domains[0]",
        "single wildcard",
    ),
    ({"virtual_hosts": [_vh()]}, f"{V}.domains", "at least 1 item"),
    ({"virtual_hosts": [_vh("x", name="")]}, f"{V}.name", "at least 1 characters"),
    (
        one_route(
            {
                "route": {
                    "cluster": "c",
                    "prefix_rewrite": "/a",
                    "regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "b"},
                }
            }
        ),
        f"{R}.route",
        "Specify only one of prefix_rewrite, regex_rewrite",
    ),
    (
        one_route({"match": {"path_separated_prefix": "/a/"}}),
        f"{R}.match.path_separated_prefix",
        "^[^?#]+[^?#/]$",
    ),
    (
        one_route({"match": {"path_separated_prefix": "/a?b"}}),
        f"{R}.match.path_separated_prefix",
        "regex pattern",
    ),
    (
        one_route({"route": {"cluster": "c", "host_rewrite_literal": "a\nb"}}),
        f"{R}.route.host_rewrite_literal",
        "NUL, CR or LF",
    ),
    (
        one_route({"request_headers_to_add": [{"header": {"key": "x", "value": "50%"}}]}),
        f"{R}.request_headers_to_add[0].header.value",
        "Couldn't find valid command at position 2",
    ),
    (
        one_route({"request_headers_to_add": [{"header": {"key": "x", "value": "%abc%"}}]}),
        f"{R}.request_headers_to_add[0].header.value",
        "Couldn't find valid command at position 0",
    ),
    (
        one_route(
            {
                "request_headers_to_add": [
                    {
                        "header": {"key": "x", "value": "v"},
                        "append": True,
                        "append_action": "OVERWRITE_IF_EXISTS",
                    }
                ]
            }
        ),
        f"{R}.request_headers_to_add[0]",
        "Both append and append_action are set",
    ),
    (
        one_route(
            {
                "route": {
                    "weighted_clusters": {
                        "clusters": [{"name": "a", "weight": 0}, {"name": "b", "weight": 0}]
                    }
                }
            }
        ),
        f"{R}.route.weighted_clusters",
        "Sum of weights in the weighted_cluster must be greater than 0.",
    ),
    (
        one_route({"route": {"weighted_clusters": {"clusters": [{"name": "a"}]}}}),
        f"{R}.route.weighted_clusters.clusters[0].weight",
        "Field 'weight' is missing",
    ),
    (one_route({"route": {"cluster": ""}}), f"{R}.route.cluster", "at least 1 characters"),
    (one_route({"route": {"cluster": "c", "timeout": "-1s"}}), f"{R}.route.timeout", "Duration out-of-range"),
    (
        one_route({"match": {"prefix": "/", "headers": [{"name": "", "present_match": True}]}}),
        f"{R}.match.headers[0].name",
        "at least 1 characters",
    ),
    (
        one_route({"match": {"prefix": "/", "query_parameters": [{"name": "", "present_match": True}]}}),
        f"{R}.match.query_parameters[0].name",
        "at least 1 characters",
    ),
    (
        one_route({"match": {"prefix": "/", "headers": [{"name": "x", "string_match": {"prefix": ""}}]}}),
        f"{R}.match.headers[0].string_match.prefix",
        "at least 1 characters",
    ),
    (
        one_route({"match": {"prefix": "/", "headers": [{"name": "x", "string_match": {}}]}}),
        f"{R}.match.headers[0].string_match",
        '"match_pattern", reason: is required',
    ),
    # Fields sidecar does not implement (yet): refused with their path.
    (
        one_route({"route": {"cluster": "c", "retry_policy": {"retry_on": "5xx", "retry_priority": {"name": "p"}}}}),
        f"{R}.route.retry_policy.retry_priority",
        "not supported",
    ),
    (one_route({"tracing": {"client_sampling": {"numerator": 1}}}), f"{R}.tracing", "not supported"),
    (
        one_route({"match": {"prefix": "/", "runtime_fraction": {"default_value": {"numerator": 1}}}}),
        f"{R}.match.runtime_fraction",
        "not supported",
    ),
    (
        one_route({}, {"retry_policy": {"retry_on": "http3-post-connect-failure"}}),
        f"{V}.retry_policy.retry_on",
        "not supported",
    ),
    (one_route({}, vhds={"config_source": {"ads": {}}}), f"{P}.vhds", "not supported"),
    (
        one_route({"route": {"weighted_clusters": {"clusters": [{"cluster_header": "x", "weight": 1}]}}}),
        f"{R}.route.weighted_clusters.clusters[0].cluster_header",
        "not supported",
    ),
    (
        one_route(
            {"match": {"prefix": "/", "headers": [{"name": "x", "string_match": {"custom": {"name": "n"}}}]}}
        ),
        f"{R}.match.headers[0].string_match.custom",
        "not supported",
    ),
    (
        one_route({"request_headers_to_add": [{"header": {"key": "x", "value": "%START_TIME%"}}]}),
        f"{R}.request_headers_to_add[0].header.value",
        "%START_TIME% is not supported by sidecar yet",
    ),
    (
        one_route(
            {
                "route": None,
                "direct_response": {"status": 200, "body": {"environment_variable": "SIDECAR_NO_SUCH_VAR"}},
            }
        ),
        f"{R}.direct_response.body.environment_variable",
        "Environment variable doesn't exist",
    ),
]


@pytest.mark.parametrize(("config", "path", "reason"), REFUSALS)
def test_refused_with_field_path(config: dict[str, Any], path: str, reason: str) -> None:
    err = refused(config)
    assert err.path == path
    assert reason in err.reason


ACCEPTED = [
    # Envoy 1.40 accepts these; so must we.
    one_route(
        {
            "route": {
                "weighted_clusters": {
                    "total_weight": 10,
                    "clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 2}],
                }
            }
        }
    ),
    one_route({"match": {"safe_regex": {"regex": "a{30}b{30}c{30}"}}}),
    one_route({"route": {"cluster": "c", "host_rewrite_header": ":path"}}),
    one_route({"route": {"cluster_header": ":authority"}}),
    one_route({"request_headers_to_add": [{"header": {"key": "X-Up", "value": "%%"}}]}),
    one_route({"match": {"prefix": "/", "headers": [{"name": "x", "range_match": {"start": 5, "end": 1}}]}}),
    one_route({"match": {"prefix": "", "query_parameters": [{"name": "a"}]}}),
    one_route({"match": {"path": ""}}),
    one_route(
        {
            "route": {
                "weighted_clusters": {"clusters": [{"name": "c", "weight": 1}, {"name": "c", "weight": 1}]}
            }
        }
    ),
    {"virtual_hosts": [_vh("a.*.com"), _vh("", name="b"), _vh("*foo*", name="c"), _vh("a", name="a")]},
    one_route({}, validate_clusters=False),
]


@pytest.mark.parametrize("config", ACCEPTED)
def test_accepted_like_envoy(config: dict[str, Any]) -> None:
    assert translate(config).table is not None

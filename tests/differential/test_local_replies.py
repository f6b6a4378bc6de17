"""Local replies (exact status, body and headers: people grep logs and alert on them) and the headers
the HTTP connection manager adds or sanitises: server / server_name / server_header_transformation,
x-forwarded-proto, x-request-id, use_remote_address with x-forwarded-for."""

from __future__ import annotations

import re

import pytest

from tests.differential.harness import Differential, Target
from tests.support.http1 import request
from tests.support.ports import first_non_loopback_ipv4
from tests.support.upstream import Behaviour

pytestmark = pytest.mark.differential
BOOTSTRAP = "local.yaml"
UPSTREAMS = ("service1",)
HOST = "local.test"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RESET = "upstream connect error or disconnect/reset before headers. reset reason: "


@pytest.mark.parametrize(("host", "path"), [("other.test", "/s1"), (HOST, "/unrouted")])
def test_no_route_is_404_with_empty_body(diff: Differential, host: str, path: str) -> None:
    obs = diff.exchange(request("GET", path, host=host))
    assert (obs.status, obs.body) == (404, b"")
    assert [k for k, _ in obs.response.headers] == ["date", "server", "content-length"]
    assert obs.header("content-length") == "0"


def test_cluster_without_endpoints_is_503_no_healthy_upstream(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/empty", host=HOST))
    assert (obs.status, obs.body) == (503, b"no healthy upstream")
    assert [k for k, _ in obs.response.headers] == ["content-length", "content-type", "date", "server"]
    assert obs.header("content-type") == "text/plain"


def test_connection_refused_is_503_connection_failure(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/closed", host=HOST))
    assert (obs.status, obs.body) == (503, (RESET + "remote connection failure").encode())
    assert obs.header("content-type") == "text/plain"


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (Behaviour(before_headers="close"), "connection termination"),
        (Behaviour(before_headers="reset"), "connection termination"),
    ],
    ids=["fin", "rst"],
)
def test_upstream_failure_before_headers_is_503(
    diff: Differential, behaviour: Behaviour, reason: str
) -> None:
    diff.ups["service1"].behave(behaviour)
    obs = diff.exchange(request("GET", "/s1", host=HOST))
    assert (obs.status, obs.body) == (503, (RESET + reason).encode())
    assert obs.header("content-type") == "text/plain"
    assert obs.only_upstream.target == "/s1"


def test_unparseable_upstream_response_is_502_protocol_error(diff: Differential) -> None:
    diff.ups["service1"].behave(Behaviour(raw=b"NOT HTTP AT ALL\r\n\r\n", close=True))
    obs = diff.exchange(request("GET", "/s1", host=HOST))
    assert (obs.status, obs.body) == (502, (RESET + "protocol error").encode())
    assert obs.header("content-type") == "text/plain"
    assert obs.only_upstream.target == "/s1"


def test_upstream_5xx_is_passed_through(diff: Differential) -> None:
    diff.ups["service1"].behave(
        Behaviour(status=503, body=b"app says no", headers=(("content-type", "x/y"),))
    )
    obs = diff.exchange(request("GET", "/s1", host=HOST))
    assert (obs.status, obs.body, obs.header("content-type")) == (503, b"app says no", "x/y")


def test_upstream_closing_mid_body_truncates_and_closes(diff: Differential) -> None:
    diff.ups["service1"].behave(
        Behaviour(raw=b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial", close=True)
    )

    def scenario(t: Target) -> tuple[bytes, bytes]:
        with t.client() as c:
            c.send(request("GET", "/s1", host=HOST))
            head, _, body = c.read_until_close(5.0).partition(b"\r\n\r\n")
            return head.split(b"\r\n", 1)[0], body  # the proxy closed: read_until_close returned

    assert diff.run(scenario) == (b"HTTP/1.1 200 OK", b"partial")


@pytest.mark.parametrize(
    ("listener", "upstream_server", "expected"),
    [
        ("listener_port", "app/1.0", "envoy"),
        ("listener_port", None, "envoy"),
        ("named_port", "app/1.0", "my-proxy"),
        ("passthrough_port", "app/1.0", "app/1.0"),
        ("passthrough_port", None, None),
        ("ifabsent_port", "app/1.0", "app/1.0"),
        ("ifabsent_port", None, "my-proxy"),
    ],
)
def test_server_header(
    diff: Differential, listener: str, upstream_server: str | None, expected: str | None
) -> None:
    headers = (("server", upstream_server),) if upstream_server else ()
    diff.ups["service1"].behave(Behaviour(headers=headers))
    obs = diff.exchange(request("GET", "/s1", host=HOST), listener=listener)
    assert obs.status == 200
    assert obs.response.header_all("server") == ([expected] if expected else [])


@pytest.mark.parametrize(
    ("listener", "expected"),
    [
        ("listener_port", ["envoy"]),
        ("named_port", ["my-proxy"]),
        ("passthrough_port", []),
        ("ifabsent_port", ["my-proxy"]),
    ],
)
def test_server_header_on_local_reply(diff: Differential, listener: str, expected: list[str]) -> None:
    obs = diff.exchange(request("GET", "/nowhere", host=HOST), listener=listener)
    assert obs.status == 404
    assert obs.response.header_all("server") == expected


@pytest.mark.parametrize(
    ("listener", "sent", "seen"),
    [
        ("listener_port", None, "http"),
        ("listener_port", "https", "https"),
        ("edge_port", "https", "http"),
        ("edge_port", None, "http"),
    ],
)
def test_x_forwarded_proto(diff: Differential, listener: str, sent: str | None, seen: str) -> None:
    headers = [("x-forwarded-proto", sent)] if sent else []
    obs = diff.exchange(request("GET", "/s1", host=HOST, headers=headers), listener=listener)
    assert obs.only_upstream.header_all("x-forwarded-proto") == [seen]


def test_request_id_generated_when_absent(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/s1", host=HOST))
    ids = obs.only_upstream.header_all("x-request-id")
    assert len(ids) == 1 and UUID4.match(ids[0]), ids
    assert obs.header("x-request-id") is None  # not echoed unless always_set_request_id_in_response


def test_request_id_kept_when_present(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/s1", host=HOST, headers=[("x-request-id", "my-id")]))
    assert obs.only_upstream.header_all("x-request-id") == ["my-id"]


def test_edge_replaces_external_request_id(diff: Differential) -> None:
    """With use_remote_address, a loopback client is external (Envoy 1.40 trusts no address range by
    default: internal_address_config is empty), so its x-request-id is replaced."""
    obs = diff.exchange(
        request("GET", "/s1", host=HOST, headers=[("x-request-id", "my-id")]), listener="edge_port"
    )
    ids = obs.only_upstream.header_all("x-request-id")
    assert len(ids) == 1 and UUID4.match(ids[0]), ids


def test_request_id_in_response_when_asked(diff: Differential) -> None:
    obs = diff.exchange(request("GET", "/s1", host=HOST), listener="reqid_port")
    assert obs.header("x-request-id") == obs.only_upstream.header("x-request-id")
    assert UUID4.match(obs.header("x-request-id") or "")


@pytest.mark.parametrize(
    ("listener", "sent", "seen"),
    [
        ("listener_port", None, []),
        ("listener_port", "1.2.3.4", ["1.2.3.4"]),
        # For a client on loopback Envoy appends its own local address (the host's first non-loopback
        # IPv4 address), not 127.0.0.1; LOCAL stands for it.
        ("edge_port", None, ["LOCAL"]),
        ("edge_port", "1.2.3.4", ["1.2.3.4,LOCAL"]),
    ],
)
def test_x_forwarded_for(diff: Differential, listener: str, sent: str | None, seen: list[str]) -> None:
    headers = [("x-forwarded-for", sent)] if sent else []
    obs = diff.exchange(request("GET", "/s1", host=HOST, headers=headers), listener=listener)
    up = obs.only_upstream
    assert up.header_all("x-forwarded-for") == [v.replace("LOCAL", first_non_loopback_ipv4()) for v in seen]
    edge = listener == "edge_port"
    # An external request (see above) also gets x-envoy-external-address, the client's address.
    assert up.header_all("x-envoy-external-address") == (["127.0.0.1"] if edge else [])


def test_edge_sanitises_control_headers(diff: Differential) -> None:
    headers = [
        ("x-envoy-internal", "true"),
        ("x-envoy-external-address", "9.9.9.9"),
        ("x-envoy-upstream-rq-timeout-ms", "5"),
        ("x-envoy-retry-on", "5xx"),
        ("x-envoy-foo", "kept?"),
    ]
    obs = diff.exchange(request("GET", "/s1", host=HOST, headers=headers), listener="edge_port")
    up = obs.only_upstream
    names = {k for k, _ in up.headers if k.startswith("x-envoy")}
    assert names == {"x-envoy-external-address", "x-envoy-expected-rq-timeout-ms", "x-envoy-foo"}
    assert up.header_all("x-envoy-external-address") == ["127.0.0.1"]

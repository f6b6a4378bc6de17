"""Filter chain selection, sidecar against envoy: destination port, source prefix and port, source
type, SNI (exact, wildcard) and transport protocol from the tls_inspector, application protocol from
the tls_inspector's ALPN or the http_inspector, and no matching chain.  Every chain is a tcp_proxy to
its own recording upstream; a scenario reports which upstream got each connection (or "closed")."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from tests.differential.harness import Differential, Target

pytestmark = pytest.mark.differential

NAMES = ("dport", "any", "src2", "src24", "srcport", "local", "external", "anytype", "default")
TLS_NAMES = ("exact", "wild", "tls", "plain", "h2", "h11", "h2c", "other")
UPSTREAMS = ()
TCP_UPSTREAMS = NAMES + TLS_NAMES
LF = "type.googleapis.com/envoy.extensions.filters.listener."


def _chain(name: str, match: str = "") -> str:
    m = f"\n      filter_chain_match: {match}" if match else ""
    return f"""
    - name: {name}{m}
      filters:
      - name: tcp
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {name}, cluster: {name}}}"""


def _listener(name: str, chains: str, extra: str = "") -> str:
    return f"""
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {{{name}_port}}}}}}{extra}
    filter_chains:{chains}"""


def _cluster(name: str) -> str:
    return f"""
  - name: {name}
    connect_timeout: 2s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {{{name}_port}}}}}}}}}}]}}]"""


DEFAULT_CHAIN = """
    default_filter_chain:
      name: default
      filters:
      - name: tcp
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: default, cluster: default}"""

INSPECTORS = f"""
    listener_filters_timeout: 1s
    listener_filters:
    - {{name: tls, typed_config: {{"@type": {LF}tls_inspector.v3.TlsInspector}}}}
    - {{name: http, typed_config: {{"@type": {LF}http_inspector.v3.HttpInspector}}}}"""

BOOTSTRAP = (
    "admin: {address: {socket_address: {address: 127.0.0.1, port_value: {admin_port}}}}\n"
    "static_resources:\n  listeners:"
    + _listener("by_port", _chain("dport", "{destination_port: {by_port_port}}") + _chain("any"))
    + _listener(
        "by_source",
        _chain("src2", "{source_prefix_ranges: [{address_prefix: 127.0.0.2, prefix_len: 32}]}")
        + _chain("src24", "{source_prefix_ranges: [{address_prefix: 127.0.0.0, prefix_len: 24}]}")
        + _chain(
            "srcport",
            "{source_prefix_ranges: [{address_prefix: 127.0.0.0, prefix_len: 24}], source_ports: [{fixed_port}]}",
        ),
        DEFAULT_CHAIN,
    )
    + _listener(
        "by_type",
        _chain("local", "{source_type: SAME_IP_OR_LOOPBACK}")
        + _chain("external", "{source_type: EXTERNAL, source_prefix_ranges: [{address_prefix: 127.0.0.4, prefix_len: 32}]}")
        + _chain("anytype"),
    )
    + _listener(
        "by_tls",
        _chain("exact", "{server_names: [a.example.com]}")
        + _chain("wild", "{server_names: ['*.example.com']}")
        + _chain("h2", "{transport_protocol: tls, application_protocols: [h2]}")
        + _chain("tls", "{transport_protocol: tls}")
        + _chain("h11", "{transport_protocol: raw_buffer, application_protocols: [http/1.1]}")
        + _chain("h2c", "{application_protocols: [h2c]}")
        + _chain("plain", "{transport_protocol: raw_buffer}"),
        INSPECTORS,
    )
    + "\n  clusters:"
    + "".join(_cluster(n) for n in TCP_UPSTREAMS)
    + "\n"
)


def client_hello(sni: str | None, alpn: list[str] | None = None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def which(t: Target, listener: str, payload: bytes, src: tuple[str, int] = ("127.0.0.1", 0)) -> str:
    """The upstream whose connection received `payload`, or "closed" when the proxy closed ours."""
    for up in t.tcp.values():
        up.reset()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(5)
    try:
        s.bind(src)
        s.connect(("127.0.0.1", t.port(f"{listener}_port")))
        s.sendall(payload)
        deadline = time.monotonic() + 5
        for _ in range(500):  # bounded: ~5 s of 10 ms polls
            for name, up in t.tcp.items():
                if any(bytes(c.received).startswith(payload) for c in up.connections):
                    return name
            s.settimeout(0.01)
            try:
                if s.recv(65536) == b"":
                    return "closed"
            except TimeoutError:
                pass
            except ConnectionResetError:
                return "closed"
            if time.monotonic() > deadline:
                break
        return "nothing"
    finally:
        s.close()


def test_destination_port_first(diff: Differential) -> None:
    assert diff.run(lambda t: which(t, "by_port", b"hello-port")) == "dport"


def test_source_prefix_and_port(diff: Differential) -> None:
    def scenario(t: Target) -> list[str]:
        fixed = int(str(t.values["fixed_port"]))
        return [
            which(t, "by_source", b"from-2", ("127.0.0.2", 0)),
            which(t, "by_source", b"from-3", ("127.0.0.3", 0)),
            which(t, "by_source", b"from-3-fixed", ("127.0.0.3", fixed)),
            which(t, "by_source", b"from-2-fixed", ("127.0.0.2", fixed)),  # the /32 wins before ports
            which(t, "by_source", b"from-other-net", ("127.0.1.1", 0)),
        ]

    assert diff.run(scenario) == ["src2", "src24", "srcport", "src2", "default"]


def test_source_type(diff: Differential) -> None:
    def scenario(t: Target) -> list[str]:
        return [
            which(t, "by_type", b"from-1", ("127.0.0.1", 0)),
            # Only 127.0.0.1 itself is "loopback" (Utility::isLoopbackAddress): 127.0.0.4 is EXTERNAL.
            which(t, "by_type", b"from-4", ("127.0.0.4", 0)),
            # EXTERNAL, and EXTERNAL chains exist but none for this source: no fallback to ANY.
            which(t, "by_type", b"from-5", ("127.0.0.5", 0)),
        ]

    assert diff.run(scenario) == ["local", "external", "closed"]


def test_sni_transport_and_alpn(diff: Differential) -> None:
    def scenario(t: Target) -> list[str]:
        return [
            which(t, "by_tls", client_hello("a.example.com", ["h2"])),
            which(t, "by_tls", client_hello("B.Example.com")),
            which(t, "by_tls", client_hello("example.com", ["http/1.1", "h2"])),
            which(t, "by_tls", client_hello("example.com", ["http/1.1"])),
            which(t, "by_tls", client_hello(None)),
            which(t, "by_tls", b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"),
            # h2c: the raw_buffer branch is taken first and has no h2c chain; no going back to the
            # chain that names h2c without a transport protocol.
            which(t, "by_tls", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            which(t, "by_tls", b"\x00\x01 not http\n"),
        ]

    assert diff.run(scenario) == ["exact", "wild", "h2", "tls", "tls", "h11", "plain", "plain"]


def test_listener_filter_timeout_closes(diff: Differential) -> None:
    # Half a request line: neither inspector can decide; after 1 s the connection is closed.
    assert diff.run(lambda t: which(t, "by_tls", b"GET / HT")) == "closed"

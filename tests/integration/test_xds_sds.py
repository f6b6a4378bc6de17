"""SDS end to end with a real sidecar process: secrets `default` (the workload certificate) and
`ROOTCA` (the trust bundle) referenced by dynamic listeners and clusters, delivered over ADS or over
their own SecretDiscoveryService stream on a Unix socket (Istio's sds-grpc cluster, pilot-agent's
./var/run/secrets/workload-spiffe-uds/socket), CDS/LDS coming from ADS on TCP.

One sidecar plays both ends of the mesh hop: `outbound` (plaintext HTTP from the app) routes to
cluster `server`, whose UpstreamTlsContext takes `default`/`ROOTCA` from SDS, on the sidecar's own
`inbound` listener, whose DownstreamTlsContext takes them too and requires a client certificate;
`inbound` routes to the app.  So every request through `outbound` is an mTLS hop whose both
certificates come from SDS.

Covered: a listener stays warming until its secrets arrive, then traffic flows; a bad secret is
NACKed (error_detail names it) and the old certificate keeps serving; rotation under load (a new
`default` pushed every second, continuous requests, zero failures, new handshakes see the new
certificate, a connection opened before the first rotation still works after the last)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from google.protobuf.message import Message

from tests.support.ca import Issued, TestCA
from tests.support.fake_xds import CLUSTER, LISTENER, SECRET, FakeStream, FakeXds, Received
from tests.support.ports import free_port
from tests.support.proxy import ProxyProcess
from tests.support.upstream import Behaviour, Upstreams

pytestmark = pytest.mark.timeout(90)
KIND = os.environ.get("SDS_PROXY", "sidecar")

BOOTSTRAP = """
node: {{id: "sidecar~127.0.0.1~app.ns~ns.svc.cluster.local", cluster: app.ns}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints:
      - lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds}}}}}}}}}]
{sds_cluster}"""

SDS_CLUSTER = """
  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: sds-grpc
      endpoints:
      - lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: {sock}}}}}}}}}]
"""


# -- resources ----------------------------------------------------------------------------------------
def _sds_ref(ref: Any, name: str, uds: bool) -> None:
    ref.name = name
    cs = ref.sds_config
    cs.resource_api_version = 2  # V3
    if uds:
        api = cs.api_config_source
        api.api_type = api.GRPC
        api.transport_api_version = 2
        api.grpc_services.add().envoy_grpc.cluster_name = "sds-grpc"
    else:
        cs.ads.SetInParent()


def _common(common: Any, uds: bool) -> None:
    _sds_ref(common.tls_certificate_sds_secret_configs.add(), "default", uds)
    _sds_ref(common.combined_validation_context.validation_context_sds_secret_config, "ROOTCA", uds)
    common.combined_validation_context.default_validation_context.SetInParent()


def _hcm(cluster: str) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=cluster)
    vh = hcm.route_config.virtual_hosts.add(name="all", domains=["*"])
    r = vh.routes.add()
    r.match.prefix = "/"
    r.route.cluster = cluster
    hcm.http_filters.add(name="envoy.filters.http.router").typed_config.Pack(router_pb2.Router())
    return hcm


def _listener(name: str, port: int, cluster: str, tls: tls_pb2.DownstreamTlsContext | None) -> listener_pb2.Listener:
    lst = listener_pb2.Listener(name=name)
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = port
    chain = lst.filter_chains.add()
    chain.filters.add(name="envoy.filters.network.http_connection_manager").typed_config.Pack(_hcm(cluster))
    if tls is not None:
        chain.transport_socket.name = "envoy.transport_sockets.tls"
        chain.transport_socket.typed_config.Pack(tls)
    return lst


def inbound(port: int, uds: bool) -> listener_pb2.Listener:
    tls = tls_pb2.DownstreamTlsContext()
    tls.require_client_certificate.value = True
    _common(tls.common_tls_context, uds)
    return _listener("inbound", port, "app", tls)


def outbound(port: int) -> listener_pb2.Listener:
    return _listener("outbound", port, "server", None)


def static_cluster(name: str, port: int, uds: bool | None = None) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    c.connect_timeout.seconds = 2
    c.load_assignment.cluster_name = name
    sa = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    sa.address, sa.port_value = "127.0.0.1", port
    if uds is not None:
        tls = tls_pb2.UpstreamTlsContext(sni="server.default.svc.cluster.local")
        _common(tls.common_tls_context, uds)
        c.transport_socket.name = "envoy.transport_sockets.tls"
        c.transport_socket.typed_config.Pack(tls)
    return c


def cert_secret(issued: Issued) -> secret_pb2.Secret:
    s = secret_pb2.Secret(name="default")
    s.tls_certificate.certificate_chain.inline_bytes = issued.cert_pem
    s.tls_certificate.private_key.inline_bytes = issued.key_pem
    return s


def root_secret(ca: TestCA) -> secret_pb2.Secret:
    s = secret_pb2.Secret(name="ROOTCA")
    s.validation_context.trusted_ca.inline_bytes = ca.root_pem
    return s


# -- the scenario ---------------------------------------------------------------------------------------
@dataclass
class Env:
    ads: FakeXds
    sds: FakeXds | None
    proxy: ProxyProcess
    app: Upstreams
    ca: TestCA
    inbound_port: int
    outbound_port: int
    ads_stream: FakeStream | None = None
    sds_streams: dict[str, FakeStream] = field(default_factory=dict)
    version: int = 0

    @property
    def uds(self) -> bool:
        return self.sds is not None

    async def push(self, stream: FakeStream, type_url: str, resources: list[Message]) -> str:
        self.version += 1
        return await stream.send(type_url, resources, str(self.version))

    async def until(self, stream: FakeStream, pred: Callable[[Received], bool], timeout: float = 15.0) -> Received:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    r = await stream.next_request(timeout)
                    if pred(r):
                        return r
        except TimeoutError:
            seen = [(r.type_url.rsplit(".", 1)[-1], r.names, r.version, r.error) for r in stream.requests]
            raise AssertionError(f"no such request; got {seen}\n{self.proxy.stderr(4000)}") from None

    async def asked(self, stream: FakeStream, pred: Callable[[Received], bool]) -> Received:
        """A request already received (even if `until` skipped it) or the next one, matching `pred`."""
        for r in stream.requests:
            if pred(r):
                return r
        return await self.until(stream, pred)

    async def secret_streams(self) -> dict[str, FakeStream]:
        """Which stream asked for `default` and `ROOTCA`: ADS, or (Envoy opens one SDS stream per
        secret from an api_config_source) one stream each on the SDS socket."""
        if self.sds is None:
            assert self.ads_stream is not None
            await self.asked(self.ads_stream, lambda r: r.type_url == SECRET and {"default", "ROOTCA"} <= set(r.names))
            return {"default": self.ads_stream, "ROOTCA": self.ads_stream}
        while len(self.sds_streams) < 2:
            stream = await self.sds.next_stream(20)
            req = await self.asked(stream, lambda r: r.type_url == SECRET and bool(r.names))
            for name in req.names:
                self.sds_streams[name] = stream
        return self.sds_streams

    async def push_secrets(self, *secrets: secret_pb2.Secret) -> list[Received]:
        """Push each secret on the stream that asked for it; returns the (N)ACKs."""
        streams = await self.secret_streams()
        by_stream: dict[int, tuple[FakeStream, list[Message]]] = {}
        for secret in secrets:
            stream = streams[secret.name]
            by_stream.setdefault(stream.id, (stream, []))[1].append(secret)
        out = []
        for stream, resources in by_stream.values():
            nonce = await self.push(stream, SECRET, resources)
            out.append(await self.until(stream, lambda r, n=nonce: r.type_url == SECRET and r.nonce == n))  # type: ignore[misc]
        return out

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.proxy.admin_port}{path}", timeout=5) as r:
            return str(r.read().decode())

    def dump(self, kind: str) -> dict[str, Any]:
        for c in json.loads(self.admin("/config_dump"))["configs"]:
            if c["@type"].endswith("." + kind):
                return dict(c)
        return {}


def get(port: int, path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


async def poll_get(port: int, want: tuple[int, bytes], within: float = 10.0) -> tuple[int, bytes] | str:
    deadline = time.monotonic() + within
    last: tuple[int, bytes] | str = "never"
    while time.monotonic() < deadline:
        try:
            last = await asyncio.to_thread(get, port)
        except OSError as e:
            last = repr(e)
        if last == want:
            return last
        await asyncio.sleep(0.05)
    return last


def client_ctx(ca: TestCA, cert: Issued) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca.root_path))
    ctx.load_cert_chain(str(cert.cert_path), str(cert.key_path))
    return ctx


def fresh_tls_get(ctx: ssl.SSLContext, port: int) -> tuple[int, int]:
    """(status, serial of the certificate the inbound listener presented) on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        der = s.getpeercert(binary_form=True) or b""
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = b""
        for _ in range(100):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
        return status, x509.load_der_x509_certificate(der).serial_number


@contextlib.asynccontextmanager
async def start_env(tmp_path: Path, uds: bool, workers: int = 1) -> AsyncIterator[Env]:
    """The sidecar up with clusters app and server, listeners outbound and inbound, warming or not
    as the test drives it: this only starts the process and answers the first CDS."""
    ads = FakeXds()
    await ads.start("127.0.0.1:0")
    sds = None
    sds_cluster = ""
    if uds:
        sds = FakeXds()
        sock = tmp_path / "workload-spiffe-uds" / "socket"
        sock.parent.mkdir()
        await sds.start(f"unix:{sock}")
        sds_cluster = SDS_CLUSTER.format(sock=sock)
    app = Upstreams(["app"])
    app["app"].behave(Behaviour(body=b"app"))
    text = BOOTSTRAP.format(admin=free_port(), xds=ads.port, sds_cluster=sds_cluster)
    workdir = tmp_path / "proxy"
    workdir.mkdir()
    # SDS_PROXY=envoy runs the same scenario on the real envoy (the oracle these tests were checked on;
    # envoy refuses a second --concurrency, so it runs one worker).
    extra = ("--concurrency", str(workers)) if workers != 1 and KIND == "sidecar" else ()
    proxy = ProxyProcess(KIND, text, workdir=workdir, extra_args=extra)
    env = Env(ads, sds, proxy, app, TestCA(tmp_path / "ca"), free_port(), free_port())
    starting = asyncio.ensure_future(asyncio.to_thread(proxy.start, 40.0))
    try:
        env.ads_stream = await ads.next_stream(20)
        yield env
        await starting
    finally:
        if not starting.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(starting, 45)
        proxy.close()
        app.close()
        await ads.stop(0)
        if sds is not None:
            await sds.stop(0)


async def bring_up(env: Env, client: Issued) -> None:
    """CDS (app), then LDS (inbound, warming until its secrets), then the secrets, then CDS+LDS
    with the mTLS client side (cluster server, listener outbound)."""
    s = env.ads_stream
    assert s is not None
    await env.until(s, lambda r: r.type_url == CLUSTER)
    await env.push(s, CLUSTER, [static_cluster("app", env.app["app"].port)])
    await env.until(s, lambda r: r.type_url == LISTENER)
    nonce = await env.push(s, LISTENER, [inbound(env.inbound_port, env.uds)])
    await env.until(s, lambda r: r.type_url == LISTENER and r.nonce == nonce)
    # Warming: the secrets are asked for, the listener is not serving yet.
    await env.secret_streams()
    listeners = await asyncio.to_thread(env.dump, "ListenersConfigDump")
    states = {x["name"]: sorted(k for k in x if k.endswith("_state")) for x in listeners["dynamic_listeners"]}
    assert states == {"inbound": ["warming_state"]}
    secrets = await asyncio.to_thread(env.dump, "SecretsConfigDump")
    assert sorted(x["name"] for x in secrets.get("dynamic_warming_secrets", [])) == ["ROOTCA", "default"]
    acks = await env.push_secrets(cert_secret(client), root_secret(env.ca))
    assert [(a.error, a.version) for a in acks] == [(None, str(env.version - len(acks) + 1 + i)) for i in range(len(acks))]
    nonce = await env.push(
        s,
        CLUSTER,
        [static_cluster("app", env.app["app"].port), static_cluster("server", env.inbound_port, env.uds)],
    )
    await env.until(s, lambda r: r.type_url == CLUSTER and r.nonce == nonce)
    nonce = await env.push(s, LISTENER, [inbound(env.inbound_port, env.uds), outbound(env.outbound_port)])
    ack = await env.until(s, lambda r: r.type_url == LISTENER and r.nonce == nonce)
    assert ack.error is None


# -- tests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("uds", [False, True], ids=["ads", "uds"])
async def test_listener_warms_until_sds_secrets_then_mtls_flows(tmp_path: Path, uds: bool) -> None:
    async with start_env(tmp_path, uds) as env:
        workload = env.ca.workload("default", "app")
        await bring_up(env, workload)
        assert await poll_get(env.outbound_port, (200, b"app")) == (200, b"app")
        # The inbound listener presents the SDS certificate and asks for a client one.
        peer = env.ca.workload("default", "peer")
        status, serial = await asyncio.to_thread(fresh_tls_get, client_ctx(env.ca, peer), env.inbound_port)
        assert (status, serial) == (200, workload.serial)
        secrets = await asyncio.to_thread(env.dump, "SecretsConfigDump")
        active = {x["name"]: x for x in secrets["dynamic_active_secrets"]}
        assert sorted(active) == ["ROOTCA", "default"] and "dynamic_warming_secrets" not in secrets
        key = active["default"]["secret"]["tls_certificate"]["private_key"]
        assert list(key.values()) in (["[redacted]"], ["W3JlZGFjdGVkXQ=="])
        assert active["default"]["version_info"] and active["default"]["last_updated"]
        if uds:
            services = {s.service for s in env.sds_streams.values()}
            assert services == {"envoy.service.secret.v3.SecretDiscoveryService"}
            # Envoy's per-secret subscription stats.
            text = await asyncio.to_thread(env.admin, "/stats?filter=^sds")
            got = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
            assert int(got["sds.default.update_success"]) >= 1 and int(got["sds.ROOTCA.update_success"]) >= 1
            assert got["sds.default.update_rejected"] == "0"
            assert not any(r.type_url == SECRET for r in env.ads_stream.requests)  # type: ignore[union-attr]


async def test_bad_secret_is_nacked_and_the_old_certificate_keeps_serving(tmp_path: Path) -> None:
    async with start_env(tmp_path, uds=True) as env:
        workload = env.ca.workload("default", "app")
        await bring_up(env, workload)
        assert await poll_get(env.outbound_port, (200, b"app")) == (200, b"app")
        good_version = str(env.version - 3)  # the `default` response (ROOTCA, CDS, LDS came after)
        other = env.ca.workload("default", "other")
        garbage = secret_pb2.Secret(name="default")
        garbage.tls_certificate.certificate_chain.inline_bytes = b"-----BEGIN CERTIFICATE-----\nnot base64"
        garbage.tls_certificate.private_key.inline_bytes = other.key_pem
        mismatch = secret_pb2.Secret(name="default")
        mismatch.tls_certificate.certificate_chain.inline_bytes = workload.cert_pem
        mismatch.tls_certificate.private_key.inline_bytes = other.key_pem  # not this certificate's key
        ctx = client_ctx(env.ca, env.ca.workload("default", "peer"))
        for bad in (garbage, mismatch):
            (nack,) = await env.push_secrets(bad)
            assert nack.error is not None
            if KIND == "sidecar":  # envoy's message does not name it (its stream carries only it)
                assert "default" in nack.error
            assert nack.version == good_version
            assert await asyncio.to_thread(fresh_tls_get, ctx, env.inbound_port) == (200, workload.serial)
            assert await asyncio.to_thread(get, env.outbound_port) == (200, b"app")


ROTATIONS = 4


async def test_rotation_under_load_through_sds(tmp_path: Path) -> None:
    """`default` pushed anew every second (new certificate each time) while requests run through
    outbound -> (mTLS) -> inbound and straight to inbound on fresh handshakes and on one long-lived
    connection.  Two workers: the secrets reach the second one through the relay."""
    async with start_env(tmp_path, uds=True, workers=2) as env:
        first = env.ca.workload("default", "app", name="rot-0")
        await bring_up(env, first)
        assert await poll_get(env.outbound_port, (200, b"app")) == (200, b"app")
        ctx = client_ctx(env.ca, env.ca.workload("default", "peer"))
        failures: list[str] = []
        counts = {"proxied": 0, "fresh": 0, "long": 0}
        serials: set[int] = set()
        stop = threading.Event()

        def through_outbound() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", env.outbound_port, timeout=10)
            for _ in range(100_000):
                if stop.is_set():
                    break
                try:
                    conn.request("GET", "/")
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 200:
                        failures.append(f"proxied: {resp.status}")
                    counts["proxied"] += 1
                except (OSError, http.client.HTTPException) as exc:
                    failures.append(f"proxied: {exc!r}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", env.outbound_port, timeout=10)
            conn.close()

        def fresh_handshakes() -> None:
            for _ in range(100_000):
                if stop.is_set():
                    break
                try:
                    status, serial = fresh_tls_get(ctx, env.inbound_port)
                    serials.add(serial)
                    counts["fresh"] += 1
                    if status != 200:
                        failures.append(f"fresh: {status}")
                except (OSError, ssl.SSLError) as exc:
                    failures.append(f"fresh: {exc!r}")
                time.sleep(0.01)

        long_raw = socket.create_connection(("127.0.0.1", env.inbound_port), timeout=5)
        long_tls = ctx.wrap_socket(long_raw)
        long_serial = x509.load_der_x509_certificate(long_tls.getpeercert(binary_form=True) or b"").serial_number

        def long_request() -> None:
            long_tls.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            data = long_tls.recv(65536)
            if not data.startswith(b"HTTP/1.1 200"):
                failures.append(f"long-lived: {data[:40]!r}")
            counts["long"] += 1

        threads = [threading.Thread(target=through_outbound), threading.Thread(target=fresh_handshakes)]
        issued = [first.serial]
        try:
            for t in threads:
                t.start()
            for i in range(1, ROTATIONS + 1):
                await asyncio.sleep(1.0)
                await asyncio.to_thread(long_request)
                new = env.ca.workload("default", "app", name=f"rot-{i}")
                issued.append(new.serial)
                (ack,) = await env.push_secrets(cert_secret(new))
                if ack.error is not None:
                    failures.append(f"rotation {i} NACKed: {ack.error}")
            deadline = time.monotonic() + 10
            while issued[-1] not in serials and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.to_thread(long_request)
        finally:
            stop.set()
            for t in threads:
                await asyncio.to_thread(t.join, 15)
            long_tls.close()
        assert failures == []
        assert counts["proxied"] > 20 and counts["fresh"] > 20 and counts["long"] == ROTATIONS + 1
        assert long_serial == first.serial
        assert issued[-1] in serials
        assert len(serials & set(issued)) >= 3


STATIC_ONLY = """
node: {{id: "sidecar~127.0.0.1~app.ns~ns.svc.cluster.local", cluster: app.ns}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {inbound}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          route_config:
            virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: app}}}}]}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: default
              sds_config: {sds_default}
            validation_context_sds_secret_config:
              name: ROOTCA
              sds_config: {sds_rootca}
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app}}}}}}}}}]
{sds_cluster}"""


GRPC_SDS = (
    "{api_config_source: {api_type: GRPC, transport_api_version: V3,"
    " grpc_services: [{envoy_grpc: {cluster_name: sds-grpc}}]}, resource_api_version: V3}"
)


async def test_static_bootstrap_with_sds_only(tmp_path: Path) -> None:
    """No dynamic_resources: a static listener's secrets come from the sds-grpc Unix socket; the
    proxy is not ready (Envoy's server init waits on them) until they arrive, then serves mTLS."""
    sds = FakeXds()
    sock = tmp_path / "socket"
    await sds.start(f"unix:{sock}")
    ca = TestCA(tmp_path / "ca")
    workload, peer = ca.workload("default", "app"), ca.workload("default", "peer")
    with Upstreams(["app"]) as app:
        app["app"].behave(Behaviour(body=b"app"))
        inbound_port = free_port()
        text = STATIC_ONLY.format(
            admin=free_port(),
            inbound=inbound_port,
            app=app["app"].port,
            sds_cluster=SDS_CLUSTER.format(sock=sock),
            sds_default=GRPC_SDS,
            sds_rootca=GRPC_SDS,
        )
        workdir = tmp_path / "proxy"
        workdir.mkdir()
        proxy = ProxyProcess(KIND, text, workdir=workdir)
        starting = asyncio.ensure_future(asyncio.to_thread(proxy.start, 40.0))
        try:
            streams: dict[str, FakeStream] = {}
            for _ in range(2):
                stream = await sds.next_stream(20)
                req = await stream.next_request(20)
                assert req.type_url == SECRET
                streams.update((n, stream) for n in req.names)
            assert sorted(streams) == ["ROOTCA", "default"]
            assert not starting.done()  # not ready without its secrets
            await streams["default"].send(SECRET, [cert_secret(workload)], "1")
            await streams["ROOTCA"].send(SECRET, [root_secret(ca)], "1")
            await asyncio.wait_for(starting, 30)
            got = await asyncio.to_thread(fresh_tls_get, client_ctx(ca, peer), inbound_port)
            assert got == (200, workload.serial)
        finally:
            if not starting.done():
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(starting, 45)
            proxy.close()
            await sds.stop(0)


def write_secret_file(path: Path, secret: secret_pb2.Secret) -> None:
    """A DiscoveryResponse with one secret (Envoy's file-based SDS wants exactly one), as JSON,
    moved into place (what Envoy's file watch reacts to)."""
    from google.protobuf import json_format

    from tests.support.ca import write_atomically

    body = json_format.MessageToDict(secret)
    body["@type"] = SECRET
    write_atomically(path, json.dumps({"resources": [body]}).encode())


async def test_sds_from_files_rotates_and_keeps_the_old_on_a_bad_one(tmp_path: Path) -> None:
    """sds_config.path_config_source: each secret in a file holding a DiscoveryResponse; a new file
    moved into place rotates the certificate for new handshakes; a bad one is rejected (counted)
    and the previous certificate keeps serving."""
    ca = TestCA(tmp_path / "ca")
    first, second, peer = ca.workload("default", "app"), ca.workload("default", "app2"), ca.workload()
    default_file, root_file = tmp_path / "default.json", tmp_path / "rootca.json"
    write_secret_file(default_file, cert_secret(first))
    write_secret_file(root_file, root_secret(ca))
    with Upstreams(["app"]) as app:
        app["app"].behave(Behaviour(body=b"app"))
        inbound_port = free_port()
        text = STATIC_ONLY.format(
            admin=free_port(),
            inbound=inbound_port,
            app=app["app"].port,
            sds_cluster="",
            sds_default=f"{{path_config_source: {{path: {default_file}}}, resource_api_version: V3}}",
            sds_rootca=f"{{path_config_source: {{path: {root_file}}}, resource_api_version: V3}}",
        )
        workdir = tmp_path / "proxy"
        workdir.mkdir()
        proxy = ProxyProcess(KIND, text, workdir=workdir)
        try:
            await asyncio.to_thread(proxy.start, 30.0)
            ctx = client_ctx(ca, peer)
            assert await asyncio.to_thread(fresh_tls_get, ctx, inbound_port) == (200, first.serial)
            write_secret_file(default_file, cert_secret(second))
            got = None
            for _ in range(200):
                got = await asyncio.to_thread(fresh_tls_get, ctx, inbound_port)
                if got == (200, second.serial):
                    break
                await asyncio.sleep(0.05)
            assert got == (200, second.serial)
            bad = cert_secret(second)
            bad.tls_certificate.private_key.inline_bytes = first.key_pem  # not this certificate's key
            write_secret_file(default_file, bad)
            rejected = 0
            for _ in range(200):
                text = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(
                        f"http://127.0.0.1:{proxy.admin_port}/stats?filter=^sds", timeout=5
                    ).read().decode()
                )
                counts = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
                rejected = int(counts.get("sds.default.update_rejected", "0"))
                if rejected:
                    break
                await asyncio.sleep(0.05)
            assert rejected >= 1
            assert await asyncio.to_thread(fresh_tls_get, ctx, inbound_port) == (200, second.serial)
        finally:
            proxy.close()

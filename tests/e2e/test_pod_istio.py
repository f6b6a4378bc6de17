"""Two bookinfo pods configured exactly as Istio configures them: capture rules from istio-init's
flags, the sidecar started like pilot-agent starts Envoy (its bootstrap, flags and working directory,
uid 1337), and each pod's control plane serving istiod-shaped xDS over the pod's XDS socket and the
workload certificates over its SDS socket.

Pod A "productpage" (10.201.0.1) and pod B "reviews" (10.201.0.2) are joined by a veth pair.  Both
get the resources of tests/support/istio_config.py (virtualOutbound 15001, virtualInbound 15006
PERMISSIVE, 0.0.0.0_9080 from RDS "9080", the bookinfo clusters with transport_socket_matches and SDS
`default`/`ROOTCA`), adapted to these pods:
- route "9080": reviews' default route goes to outbound|9080||reviews (a VirtualService without a
  subset), the end-user=jason route to outbound|9080|v2|reviews;
- EDS: outbound|9080||reviews -> B:9080 and outbound|9080|v2|reviews -> B:9081, both with
  `tlsMode: istio` (so mTLS: A's SPIFFE certificate, ROOTCA, SAN bookinfo-reviews, Istio's SNI);
  the other clusters have no endpoints;
- B's 9080 is a declared port (its own TLS / plaintext chains); 9081 is not, so B picks between the
  catch-all chains by ALPN: the HTTP one only when A offered istio-http/1.1 (istio.alpn);
- the bootstrap's node names each pod, and its stats inclusion list has the prefixes the
  assertions read (what the proxyStatsMatcher annotation adds in Istio).

Checked: every xDS and SDS response to both sidecars is ACKed; A's app (uid 1000) reaches reviews'
VIP and B's app answers over mTLS from 127.0.0.6 with XFCC naming A's identity; the ALPN-picked HTTP
chain on an undeclared port; a plaintext client bypassing A's sidecar (uid 1337) lands on B's
plaintext chain (PERMISSIVE) without XFCC.  Which chain served a request is read from the cluster
it routed to (inbound|9080|| or InboundPassthroughCluster) and from XFCC; the last test checks the
HCM's own http.inbound_* counters add up over the two chains sharing a stat_prefix (Istio's always
do), as Envoy's counters shared by name do.

The same configuration cannot run on the stock envoy binary as a reference: Istio's private filters
(istio.alpn, istio.stats, istio.metadata_exchange) are not in it."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from tests.support import istio_config, netns
from tests.support.ca import Issued, TestCA
from tests.support.fake_xds import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.support.istio_bootstrap import PILOT_AGENT_ARGS, istio_bootstrap
from tests.support.loop_thread import LoopThread
from tests.support.pod_xds import PodControlPlane

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
SIDECAR = Path(sys.executable).parent / "sidecar"
PROXY_UID = 1337
APP_UID = 1000
ADMIN = 15000
REVIEWS_VIP = "10.96.10.2"  # istio_config's reviews ClusterIP (a domain of route "9080")
REVIEWS = istio_config.host("reviews")
A_ID = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
B_ID = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
INIT_FLAGS = ["-p", "15001", "-z", "15006", "-u", str(PROXY_UID), "-m", "REDIRECT", "-i", "*", "-x", ""]
INIT_FLAGS += ["-b", "*", "-d", "15090,15021,15020"]

# B's app: HTTP on 9080 (reviews' port) and 9081 (a port B's sidecar does not declare); answers
# GET with what it saw (peer, port, path, headers) as JSON.
APP = r"""
import json, threading, http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"peer": self.client_address[0], "port": self.server.server_address[1],
                           "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
for port in (9080, 9081):
    srv = http.server.ThreadingHTTPServer(("0.0.0.0", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait(120)
"""

# One HTTP/1.1 call (argv: host port Host-header extra-headers-json); prints {"status", "body"} or
# {"error"} as JSON.  It always sends a forged XFCC: no sidecar may pass it on.
CLIENT = r"""
import json, socket, sys
host, port, authority, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
head = f"GET /reviews/0 HTTP/1.1\r\nHost: {authority}\r\n"
head += "x-forwarded-client-cert: By=spiffe://forged;Hash=00\r\n"
head += "".join(f"{k}: {v}\r\n" for k, v in extra.items()) + "Connection: close\r\n\r\n"
try:
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(head.encode())
    data = b""
    for _ in range(1000):
        d = s.recv(65536)
        if not d: break
        data += d
except OSError as exc:
    print(json.dumps({"error": repr(exc)})); sys.exit(0)
if not data:
    print(json.dumps({"error": "closed without a response"})); sys.exit(0)
head, _, body = data.partition(b"\r\n\r\n")
status = int(head.split()[1])
print(json.dumps({"status": status, "body": json.loads(body) if status == 200 else body.decode()}))
"""


# -- configuration ----------------------------------------------------------------------------------


def bootstrap(pod: str, ip: str, sa: str) -> dict[str, Any]:
    """pilot-agent's bootstrap for this pod (ports are the pod's own: each pod is a namespace)."""
    b = istio_bootstrap(admin_port=ADMIN, prometheus_port=15090, status_port=15021, agent_port=15020)
    name = f"{pod}-v1-6b746f74dc-9stvs"
    node = b["node"]
    node["id"] = f"sidecar~{ip}~{name}.default~default.svc.cluster.local"
    node["cluster"] = f"{pod}.default"
    node["metadata"].update(
        NAME=name, LABELS={"app": pod, "version": "v1"}, WORKLOAD_NAME=f"{pod}-v1", SERVICE_ACCOUNT=sa
    )
    # proxyStatsMatcher.inclusionPrefixes: the stats the assertions read.
    patterns = b["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
    prefixes = ("listener.", "cluster.outbound|", "cluster.inbound|", "cluster.InboundPassthroughCluster.")
    patterns += [{"prefix": p} for p in (*prefixes, "http.", "tls_inspector.")]
    return b


def routes() -> list[route_pb2.RouteConfiguration]:
    """Route "9080" with reviews' default route sent to the subset-less cluster."""
    out = istio_config.rds()
    for vh in out[0].virtual_hosts:
        for r in vh.routes:
            if r.name == REVIEWS:
                r.route.cluster = f"outbound|9080||{REVIEWS}"
    return out


def endpoints(clusters: list[Any], b_ip: str) -> list[endpoint_pb2.ClusterLoadAssignment]:
    """One CLA per EDS cluster: reviews (no subset) -> B:9080, reviews v2 -> B:9081, others empty."""
    targets = {f"outbound|9080||{REVIEWS}": 9080, f"outbound|9080|v2|{REVIEWS}": 9081}
    out = []
    for c in clusters:
        if c.type != c.EDS:
            continue
        name = c.eds_cluster_config.service_name or c.name
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        if name in targets:
            group = cla.endpoints.add()
            group.locality.SetInParent()
            lbe = group.lb_endpoints.add()
            sa = lbe.endpoint.address.socket_address
            sa.address, sa.port_value = b_ip, targets[name]
            lbe.load_balancing_weight.value = 1
            # istiod's endpoint metadata: the transport socket match key and the workload.
            lbe.metadata.filter_metadata["envoy.transport_socket_match"].update({"tlsMode": "istio"})
            lbe.metadata.filter_metadata["istio"].update(
                {"workload": "reviews-v1;default;reviews;v1;Kubernetes"}
            )
        out.append(cla)
    return out


def secrets(ca: TestCA, cert: Issued) -> dict[str, secret_pb2.Secret]:
    default = secret_pb2.Secret(name="default")
    default.tls_certificate.certificate_chain.inline_bytes = cert.cert_pem
    default.tls_certificate.private_key.inline_bytes = cert.key_pem
    root = secret_pb2.Secret(name="ROOTCA")
    root.validation_context.trusted_ca.inline_bytes = ca.root_pem
    return {"default": default, "ROOTCA": root}


def pod_resources(pod: str, b_ip: str) -> dict[str, list[Any]]:
    clusters = istio_config.cds()
    if pod == "reviews":  # B's inbound cluster belongs to reviews
        for c in clusters:
            if c.name == "inbound|9080||":
                fields = c.metadata.filter_metadata["istio"].fields["services"].list_value.values[0]
                fields.struct_value.update({"host": REVIEWS, "name": "reviews"})
    return {
        LISTENER: istio_config.lds(),
        CLUSTER: clusters,
        ENDPOINT: endpoints(clusters, b_ip),
        ROUTE: routes(),
    }


# -- the two pods -----------------------------------------------------------------------------------


@dataclass
class Pod:
    ns: netns.NetNS
    ip: str
    workdir: Path
    control: PodControlPlane

    def log(self) -> str:
        try:
            return (self.workdir / "sidecar.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def admin(self, path: str) -> str:
        def get() -> str:
            conn = http.client.HTTPConnection("127.0.0.1", ADMIN, timeout=3)
            try:
                conn.request("GET", path)
                return conn.getresponse().read().decode()
            finally:
                conn.close()  # also when refused: no socket left for the garbage collector

        return self.ns.call(get)

    def stat(self, name: str) -> int:
        for line in self.admin("/stats").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0


@dataclass
class Mesh:
    a: Pod
    b: Pod
    loop: LoopThread


_OPEN: list[IO[str]] = []


def _start_sidecar(pod: Pod, config: dict[str, Any]) -> None:
    """As pilot-agent does: bootstrap in etc/istio/proxy/envoy-rev.json, cwd the pod's directory."""
    path = pod.workdir / "etc/istio/proxy/envoy-rev.json"
    path.write_text(json.dumps(config, indent=1))
    path.chmod(0o644)
    log = open(pod.workdir / "sidecar.log", "w")  # noqa: SIM115 - closed at teardown (_OPEN)
    _OPEN.append(log)
    argv = [str(SIDECAR), "-c", str(path), "--concurrency", "1", *PILOT_AGENT_ARGS]
    pod.ns.popen(*argv, user=PROXY_UID, read_all=True, stdout=log, stderr=log, cwd=str(pod.workdir))


def _wait_ready(pod: Pod, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pod.admin("/ready").strip() == "LIVE":
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(
        f"sidecar in {pod.ns.name} not ready; not ACKed {pod.control.not_acked()}, "
        f"NACKs {pod.control.nacks()}\n{pod.log()}"
    )


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    # The proxies run as 1337 and read their directories (mkdtemp is 0700); Unix socket paths must
    # stay under 108 bytes, hence a short directory in /tmp.
    tmp = Path(tempfile.mkdtemp(prefix="pod-istio-", dir="/tmp"))
    tmp.chmod(0o755)
    loop = LoopThread("pod-istio-xds")
    planes: list[PodControlPlane] = []
    try:
        ca = TestCA(tmp / "ca")
        with netns.pod_and_remote(ipv6=False) as pair:
            # The service VIP is routed off-pod (as a ClusterIP is): only capture makes it answer.
            pair.pod.run("ip", "route", "add", "default", "dev", "eth0")
            pods = []
            for ns, ip, name, sa in (
                (pair.pod, pair.pod_ip, "productpage", "bookinfo-productpage"),
                (pair.remote, pair.remote_ip, "reviews", "bookinfo-reviews"),
            ):
                workdir = tmp / name
                for rel in ("etc/istio/proxy", "var/run/secrets/workload-spiffe-uds"):
                    (workdir / rel).mkdir(parents=True)
                for d in (workdir, *workdir.rglob("*")):
                    d.chmod(0o755)
                control = PodControlPlane(
                    workdir,
                    pod_resources(name, pair.remote_ip),
                    secrets(ca, ca.workload("default", sa)),
                )
                planes.append(control)
                loop.call(control.start())
                ns.run(sys.executable, "-m", "init", *INIT_FLAGS, env={**os.environ, "PYTHONPATH": str(REPO)})
                pod = Pod(ns, ip, workdir, control)
                _start_sidecar(pod, bootstrap(name, ip, sa))
                pods.append(pod)
            a, b = pods
            app = b.ns.popen(
                sys.executable, "-I", "-c", APP, user=APP_UID, read_all=True, stdout=-1, stderr=-1, text=True
            )
            assert app.stdout is not None and app.stderr is not None
            _OPEN.extend((app.stdout, app.stderr))
            assert app.stdout.readline().strip() == "ready"
            for pod in pods:
                _wait_ready(pod)
            yield Mesh(a, b, loop)
    finally:
        try:
            for plane in planes:
                loop.call(plane.stop())
        finally:
            loop.close()
        for f in _OPEN:
            f.close()
        _OPEN.clear()
        shutil.rmtree(tmp, ignore_errors=True)


def _call(ns: netns.NetNS, host: str, port: int, uid: int, **headers: str) -> dict[str, Any]:
    args = (host, str(port), f"{REVIEWS}:9080", json.dumps(headers))
    done = ns.python(CLIENT, *args, user=uid, timeout=20, read_all=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _seen(mesh: Mesh, r: dict[str, Any]) -> dict[str, Any]:
    assert r.get("status") == 200, (r, mesh.a.log(), mesh.b.log())
    body = r["body"]
    assert isinstance(body, dict)
    return body


# -- tests ------------------------------------------------------------------------------------------


def test_every_xds_and_sds_response_is_acked(mesh: Mesh) -> None:
    for pod in (mesh.a, mesh.b):
        cp = pod.control
        assert cp.nacks() == [], (pod.ns.name, cp.nacks())
        assert cp.not_acked() == [], (pod.ns.name, cp.not_acked())
        assert cp.acked_types() == {
            "Listener",
            "Cluster",
            "ClusterLoadAssignment",
            "RouteConfiguration",
            "Secret",
        }
        sds = sorted(s.names for s in cp.sent if s.stream == "sds")
        assert sds == [("ROOTCA",), ("default",)], sds  # one stream per secret, as Envoy
        assert [s.names for s in cp.sent if s.type_url.endswith("RouteConfiguration")] == [("9080",)]


INBOUND_RQ = "cluster.inbound|9080||.upstream_rq_total"  # B's declared port's chains route here
PASSTHROUGH_RQ = "cluster.InboundPassthroughCluster.upstream_rq_total"  # B's catch-all HTTP chains


def test_app_reaches_reviews_over_mtls(mesh: Mesh) -> None:
    a, b = mesh.a, mesh.b
    inbound, passthrough = b.stat(INBOUND_RQ), b.stat(PASSTHROUGH_RQ)
    seen = _seen(mesh, _call(a.ns, REVIEWS_VIP, 9080, APP_UID))
    assert seen["path"] == "/reviews/0"
    assert seen["port"] == 9080
    assert seen["peer"] == "127.0.0.6"  # inbound|9080||'s upstream_bind_config
    # Istio's inbound HCM: APPEND_FORWARD with subject/dns/uri; A's outbound one sanitized the forgery.
    xfcc = seen["headers"]["x-forwarded-client-cert"]
    assert xfcc.startswith(f"By={B_ID};Hash="), xfcc
    assert xfcc.endswith(f';Subject="";URI={A_ID}'), xfcc
    assert "forged" not in xfcc
    assert b.stat("listener.0.0.0.0_15006.ssl.handshake") >= 1
    assert a.stat(f"cluster.outbound|9080||{REVIEWS}.ssl.handshake") >= 1
    assert a.stat("listener.0.0.0.0_9080.downstream_cx_total") >= 1  # handed over by virtualOutbound
    # The declared port's TLS chain (0.0.0.0_9080's HCM and route), not the catch-all one.
    assert (b.stat(INBOUND_RQ), b.stat(PASSTHROUGH_RQ)) == (inbound + 1, passthrough)


def test_undeclared_port_picks_the_http_chain_by_istio_alpn(mesh: Mesh) -> None:
    """end-user: jason -> outbound|9080|v2|reviews -> B:9081, a port B's sidecar does not declare.
    B's catch-all TLS chains differ only by application_protocols: the HTTP one (HCM, XFCC) wants
    istio-http/1.0|1.1|h2, which only istio.alpn's override puts in A's ClientHello; without it B
    would take the TCP chain (tcp_proxy: no XFCC, no HTTP request counted on the cluster)."""
    a, b = mesh.a, mesh.b
    inbound, passthrough = b.stat(INBOUND_RQ), b.stat(PASSTHROUGH_RQ)
    seen = _seen(mesh, _call(a.ns, REVIEWS_VIP, 9080, APP_UID, **{"end-user": "jason"}))
    assert seen["port"] == 9081
    assert seen["peer"] == "127.0.0.6"  # InboundPassthroughCluster's bind
    xfcc = seen["headers"]["x-forwarded-client-cert"]
    assert xfcc.startswith(f"By={B_ID};Hash="), xfcc
    assert xfcc.endswith(f';Subject="";URI={A_ID}'), xfcc
    assert (b.stat(INBOUND_RQ), b.stat(PASSTHROUGH_RQ)) == (inbound, passthrough + 1)
    assert b.stat("tls_inspector.alpn_found") >= 1
    assert a.stat(f"cluster.outbound|9080|v2|{REVIEWS}.ssl.handshake") >= 1


def test_plaintext_bypassing_a_sidecar_lands_on_b_plaintext_chain(mesh: Mesh) -> None:
    a, b = mesh.a, mesh.b
    handshakes = b.stat("listener.0.0.0.0_15006.ssl.handshake")
    no_match = b.stat("listener.0.0.0.0_15006.no_filter_chain_match")
    inbound = b.stat(INBOUND_RQ)
    # uid 1337 is not captured: straight to B's pod IP, where B's capture hands it to 15006.
    seen = _seen(mesh, _call(a.ns, b.ip, 9080, PROXY_UID))
    assert seen["port"] == 9080
    assert seen["peer"] == "127.0.0.6"
    assert "x-forwarded-client-cert" not in seen["headers"]  # not mTLS: APPEND_FORWARD removes it
    assert b.stat("listener.0.0.0.0_15006.ssl.handshake") == handshakes  # no TLS chain
    assert b.stat("listener.0.0.0.0_15006.no_filter_chain_match") == no_match
    assert b.stat(INBOUND_RQ) == inbound + 1  # 0.0.0.0_9080's plaintext chain (PERMISSIVE)


def test_hcm_stats_add_up_over_chains_sharing_a_stat_prefix(mesh: Mesh) -> None:
    a, b = mesh.a, mesh.b
    _seen(mesh, _call(a.ns, REVIEWS_VIP, 9080, APP_UID))  # the TLS chain
    _seen(mesh, _call(a.ns, b.ip, 9080, PROXY_UID))  # the plaintext chain
    # Every request through either chain reached inbound|9080|| exactly once (no retries).
    assert b.stat("http.inbound_0.0.0.0_9080.downstream_rq_total") == b.stat(INBOUND_RQ)

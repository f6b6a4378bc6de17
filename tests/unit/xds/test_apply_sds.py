"""DynamicConfig with SDS (sidecar/xds/apply.py, sidecar/xds/sds.py), no sockets: which secrets are
watched on which stream, clusters and listeners warming until their secrets arrive (or time out),
a bad secret NACKed with the old one kept, and the per-resource acceptance of CDS and LDS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

from sidecar.tls.secrets import SecretStore
from sidecar.xds.ads import CLUSTER, LISTENER, SECRET, Partial, Rejected, XdsState
from sidecar.xds.apply import DynamicConfig, Prepared
from sidecar.xds.config import ApiType
from tests.support.ca import TestCA
from tests.unit.xds.test_apply import FakeCm, FakeLm


def _sds(ref: Any, name: str, grpc_cluster: str = "") -> None:
    ref.name = name
    if grpc_cluster:
        api = ref.sds_config.api_config_source
        api.api_type = api.GRPC
        api.grpc_services.add().envoy_grpc.cluster_name = grpc_cluster
    else:
        ref.sds_config.ads.SetInParent()


def tls_cluster(name: str, grpc_cluster: str = "") -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    c.load_assignment.cluster_name = name
    sa = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    sa.address, sa.port_value = "127.0.0.1", 9
    ctx = tls_pb2.UpstreamTlsContext()
    _sds(ctx.common_tls_context.tls_certificate_sds_secret_configs.add(), "default", grpc_cluster)
    _sds(ctx.common_tls_context.validation_context_sds_secret_config, "ROOTCA", grpc_cluster)
    c.transport_socket.name = "envoy.transport_sockets.tls"
    c.transport_socket.typed_config.Pack(ctx)
    return c


def tls_listener(name: str, port: int = 0) -> listener_pb2.Listener:
    lst = listener_pb2.Listener(name=name)
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = port
    chain = lst.filter_chains.add()
    chain.filters.add(name="tcp").typed_config.Pack(tcp_proxy_pb2.TcpProxy(stat_prefix="t", cluster="c"))
    ctx = tls_pb2.DownstreamTlsContext()
    _sds(ctx.common_tls_context.tls_certificate_sds_secret_configs.add(), "default")
    chain.transport_socket.name = "envoy.transport_sockets.tls"
    chain.transport_socket.typed_config.Pack(ctx)
    return lst


def cert_secret(name: str, cert: bytes, key: bytes) -> secret_pb2.Secret:
    s = secret_pb2.Secret(name=name)
    s.tls_certificate.certificate_chain.inline_bytes = cert
    s.tls_certificate.private_key.inline_bytes = key
    return s


def ca_secret(name: str, root: bytes) -> secret_pb2.Secret:
    s = secret_pb2.Secret(name=name)
    s.validation_context.trusted_ca.inline_bytes = root
    return s


def make() -> tuple[DynamicConfig, FakeCm, FakeLm, SecretStore]:
    cm, lm, store = FakeCm(), FakeLm(), SecretStore()
    return DynamicConfig({}, (), cm, lm, bind=lambda lst, port=None: None, drain_time=0.0, secrets=store), cm, lm, store


async def apply(dc: DynamicConfig, type_url: str, resources: dict[str, Any], version: str = "1") -> Any:
    p = dc.prepare(type_url, version, resources, frozenset(), bind_sockets=False)
    if isinstance(p, Prepared):
        await dc.commit(p, now=0.0)
    return p


async def test_cluster_warms_until_its_sds_secrets_arrive(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    leaf = ca.workload()
    dc, cm, _, store = make()
    await apply(dc, CLUSTER, {"c": tls_cluster("c")})
    assert dc.warming_clusters == {"c"} and cm.get("c") is None
    (source, names), = dc.sds_interest().items()
    assert source.ads and names == {"default", "ROOTCA"}
    await apply(dc, SECRET, {"default": cert_secret("default", leaf.cert_pem, leaf.key_pem)})
    assert dc.warming_clusters == {"c"}  # ROOTCA still missing
    await apply(dc, SECRET, {"ROOTCA": ca_secret("ROOTCA", ca.root_pem)})
    assert dc.warming_clusters == set() and cm.get("c") is not None
    assert store.get("default") is not None and store.get("default").version == "1"  # type: ignore[union-attr]
    assert [(n, w) for n, _, w in dc.resources(SECRET)] == [("ROOTCA", False), ("default", False)]


async def test_grpc_sds_source_is_its_own_stream_and_timeout_ends_warming() -> None:
    dc, cm, _, _ = make()
    await apply(dc, CLUSTER, {"c": tls_cluster("c", grpc_cluster="sds-grpc")})
    # As Envoy: one stream (subscription) per secret from an api_config_source.
    interest = dc.sds_interest()
    assert sorted(map(sorted, interest.values())) == [["ROOTCA"], ["default"]]
    for source, (name,) in interest.items():
        assert not source.ads and source.api is not None and source.api.api_type is ApiType.GRPC
        assert source.api.grpc is not None and source.api.grpc.cluster_name == "sds-grpc"
        assert source.api.stream_key == name and source.initial_fetch_timeout == 15.0
    assert [(n, w) for n, _, w in dc.resources(SECRET)] == [("ROOTCA", True), ("default", True)]
    await dc.timed_out(SECRET, "default")
    assert dc.warming_clusters == {"c"}
    await dc.timed_out(SECRET, "ROOTCA")
    assert dc.warming_clusters == set() and cm.get("c") is not None
    # Nobody references the secrets any more: the interest is empty (the driver unsubscribes).
    await dc.commit(dc.prepare(CLUSTER, "2", {}, frozenset({"c"}), bind_sockets=False), now=0.0)  # type: ignore[arg-type]
    assert dc.sds_interest() == {}


async def test_listener_warms_until_its_secret_then_serves(tmp_path: Path) -> None:
    leaf = TestCA(tmp_path).workload()
    dc, _, lm, _ = make()
    await apply(dc, LISTENER, {"l": tls_listener("l")})
    assert list(dc.warming_listeners) == ["l"] and lm.active == []
    await apply(dc, SECRET, {"default": cert_secret("default", leaf.cert_pem, leaf.key_pem)})
    assert dc.warming_listeners == {} and [a.config.name for a in lm.active] == ["l"]


async def test_bad_secret_is_rejected_and_the_old_one_kept(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    leaf, other = ca.workload(), ca.workload(sa="other")
    dc, _, _, store = make()
    await apply(dc, SECRET, {"default": cert_secret("default", leaf.cert_pem, leaf.key_pem)})
    before = store.get("default")
    garbage = await apply(dc, SECRET, {"default": cert_secret("default", b"-----BEGIN CERTIFICATE-----\nxx", b"x")}, "2")
    mismatch = await apply(dc, SECRET, {"default": cert_secret("default", leaf.cert_pem, other.key_pem)}, "3")
    for got in (garbage, mismatch):
        assert isinstance(got, list) and len(got) == 1
        assert got[0].resource == "default" and got[0].path == "tls_certificate"
    assert store.get("default") is before
    bad_ca = await apply(dc, SECRET, {"ROOTCA": ca_secret("ROOTCA", b"not a pem")})
    assert isinstance(bad_ca, list) and bad_ca[0].path == "validation_context"


async def test_cds_applies_the_good_clusters_and_reports_the_bad() -> None:
    dc, cm, _, _ = make()
    good = cluster_pb2.Cluster(name="good", type=cluster_pb2.Cluster.STATIC)
    good.load_assignment.cluster_name = "good"
    bad = cluster_pb2.Cluster(name="bad", type=cluster_pb2.Cluster.EDS)  # no eds_cluster_config
    p = dc.prepare(CLUSTER, "1", {"good": good, "bad": bad}, frozenset(), bind_sockets=False)
    assert isinstance(p, Prepared) and set(p.models) == {"good"} and set(p.protos) == {"good"}
    assert p.rejected == [Rejected("bad", "eds_cluster_config.eds_config", "value is required")]
    await dc.commit(p, now=0.0)
    assert cm.get("good") is not None and cm.get("bad") is None and set(dc.accepted[CLUSTER]) == {"good"}
    # Only bad ones: a plain NACK, nothing to commit.
    assert isinstance(dc.prepare(CLUSTER, "2", {"bad": bad}, frozenset(), bind_sockets=False), list)


def test_partial_settle_commits_the_good_resources_and_nacks() -> None:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    st = XdsState(base_pb2.Node(id="n"))
    st.watch(CLUSTER)
    st.connected()
    st.take_requests()

    def response(version: str, *clusters: cluster_pb2.Cluster) -> Any:
        r = discovery_pb2.DiscoveryResponse(type_url=CLUSTER, version_info=version, nonce=version)
        for c in clusters:
            r.resources.add().Pack(c)
        return r

    good, bad = cluster_pb2.Cluster(name="good"), cluster_pb2.Cluster(name="bad", connect_timeout={"seconds": 1})
    upd = st.receive(response("1", good, bad))
    assert upd is not None and set(upd.updated) == {"good", "bad"}
    st.settle(upd, Partial([Rejected("bad", "", "no")]))
    (req,) = st.take_requests()
    assert req.version_info == "" and req.response_nonce == "1" and "bad: no" in req.error_detail.message
    # The same response again: only the refused one is new; `good` is held.
    upd = st.receive(response("2", good, bad))
    assert upd is not None and set(upd.updated) == {"bad"} and upd.removed == frozenset()


async def test_a_refused_update_keeps_the_old_cluster() -> None:
    dc, cm, _, _ = make()
    good = cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.STATIC)
    good.load_assignment.cluster_name = "c"
    await apply(dc, CLUSTER, {"c": good})
    before = dc.clusters["c"]
    bad = cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS)
    p = dc.prepare(CLUSTER, "2", {"c": bad}, frozenset(), bind_sockets=False)
    assert isinstance(p, list) and p[0].resource == "c"
    assert dc.clusters["c"] is before and cm.get("c") is not None


class FakeClient:
    def __init__(self) -> None:
        self.watches: list[tuple[str, frozenset[str], Any]] = []

    def watch(self, type_url: str, names: Any = None, source: Any = None) -> None:
        self.watches.append((type_url, frozenset(names or ()), source))

    def stats(self, type_url: str, source: Any = None) -> None:
        return None

    def pause(self, type_url: str, source: Any = None) -> None:
        pass

    def resume(self, type_url: str, source: Any = None) -> None:
        pass


class FakeStats:
    def gauge(self, name: str) -> Any:
        class G:
            def set(self, v: int) -> None:
                pass

        return G()


async def test_driver_watches_referenced_secrets_and_drops_the_others(tmp_path: Path) -> None:
    from envoy.config.core.v3 import base_pb2

    from sidecar.xds.ads import Update
    from sidecar.xds.config import ApiSource, ConfigSource, DynamicResources, GrpcTarget
    from sidecar.xds.driver import XdsDriver

    dc, _, _, _ = make()
    ads = DynamicResources(ads=ApiSource(ApiType.GRPC, grpc=GrpcTarget("xds")), cds=ConfigSource(ads=True))
    driver = XdsDriver(ads, base_pb2.Node(), dc, resolve=lambda n: n, stats=FakeStats())
    fake = FakeClient()
    driver.client = fake  # type: ignore[assignment]  # no stream: what it is asked to watch
    errors = await driver.apply(Update(CLUSTER, "1", "n1", {"c": tls_cluster("c")}, frozenset()))
    assert list(errors) == []
    secret_watches = [(names, src.ads) for t, names, src in fake.watches if t == SECRET]
    assert secret_watches[-1] == (frozenset({"default", "ROOTCA"}), True)
    assert not driver.ready.is_set()  # cluster c warms: LDS not started
    await driver.apply(Update(CLUSTER, "2", "n2", {}, frozenset({"c"})))
    assert [(n, s.ads) for t, n, s in fake.watches if t == SECRET][-1] == (frozenset(), True)

"""DynamicConfig (sidecar/xds/apply.py) with a recording cluster manager and listener manager:
per-resource CDS acceptance, EDS warming and its initial fetch timeout, endpoint-only updates keeping the
ClusterState, listeners warming until their routes arrive, removal."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from sidecar.xds.ads import CLUSTER, ENDPOINT, LISTENER, ROUTE, Rejected
from sidecar.xds.apply import DynamicConfig, Prepared
from tests.unit.xds.helpers import cla, route


def eds(name: str, service: str = "") -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.eds_cluster_config.eds_config.ads.SetInParent()
    c.eds_cluster_config.service_name = service
    return c


def rds_listener(name: str, rds: str, port: int = 0) -> listener_pb2.Listener:
    lst = listener_pb2.Listener(name=name)
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = port
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="in")
    hcm.rds.route_config_name = rds
    hcm.rds.config_source.ads.SetInParent()
    hcm.http_filters.add(name="router").typed_config.Pack(router_pb2.Router())
    lst.filter_chains.add().filters.add(name="hcm").typed_config.Pack(hcm)
    return lst


class State:
    def __init__(self) -> None:
        self.endpoints: list[Any] = []

    def set_endpoints(self, eps: Any) -> None:
        self.endpoints.append(tuple(eps))


class FakeCm:
    def __init__(self) -> None:
        self.clusters: dict[str, State] = {}
        self.updates = 0

    def update(self, configs: dict[str, Any]) -> None:
        self.updates += 1
        self.clusters = {n: self.clusters.get(n) or State() for n in configs}

    def get(self, name: str) -> State | None:
        return self.clusters.get(name)

    def start_dns(self) -> None:
        pass


class Active:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.sock = None


class FakeLm:
    def __init__(self) -> None:
        self.active: list[Active] = []
        self.retired: list[Active] = []
        self.routes: dict[str, Any] = {}

    def find(self, name: str) -> Active | None:
        return next((a for a in self.active if a.config.name == name), None)

    async def serve(self, cfg: Any, sock: Any) -> Active:
        a = Active(cfg)
        self.active.append(a)
        return a

    def retire(self, al: Active, drain_time: float) -> None:
        self.active.remove(al)
        self.retired.append(al)

    def set_route_configs(self, configs: dict[str, Any], changed: Any) -> None:
        self.routes = configs


def make() -> tuple[DynamicConfig, FakeCm, FakeLm]:
    cm, lm = FakeCm(), FakeLm()
    return DynamicConfig({}, (), cm, lm, bind=lambda lst, port=None: None, drain_time=0.0), cm, lm


async def apply(dc: DynamicConfig, type_url: str, resources: dict[str, Any], removed: frozenset[str] = frozenset()) -> Any:
    p = dc.prepare(type_url, "1", resources, removed, bind_sockets=False)
    if isinstance(p, Prepared):
        await dc.commit(p, now=0.0)
    return p


async def test_eds_cluster_warms_until_its_endpoints() -> None:
    dc, cm, _ = make()
    await apply(dc, CLUSTER, {"c1": eds("c1", "svc")})
    assert dc.warming_clusters == {"c1"} and cm.get("c1") is None
    assert dc.eds_interest() == {dc.clusters["c1"].eds_source: {"svc"}}
    await apply(dc, ENDPOINT, {"svc": cla("svc", 9000)})
    assert dc.warming_clusters == set()
    state = cm.get("c1")
    assert state is not None and state.endpoints[-1][0].address.port == 9000
    # An endpoint-only update: the same ClusterState gets the new hosts, no cluster manager update.
    updates = cm.updates
    await apply(dc, ENDPOINT, {"svc": cla("svc", 9001)})
    assert cm.get("c1") is state and cm.updates == updates
    assert state.endpoints[-1][0].address.port == 9001


async def test_initial_fetch_timeout_ends_warming() -> None:
    dc, cm, _ = make()
    await apply(dc, CLUSTER, {"c1": eds("c1")})
    assert cm.get("c1") is None
    await dc.timed_out(ENDPOINT, "c1")
    state = cm.get("c1")
    assert state is not None and state.endpoints == [()]
    assert dc.warming_clusters == set()


async def test_a_bad_cluster_is_refused_alone() -> None:
    # Envoy's CdsApiHelper: the valid clusters of a response are added, the bad ones NACK it.
    dc, _, _ = make()
    bad = cluster_pb2.Cluster(name="bad", type=cluster_pb2.Cluster.EDS)  # no eds_cluster_config
    got = await apply(dc, CLUSTER, {"good": eds("good"), "bad": bad})
    assert isinstance(got, Prepared)
    assert got.rejected == [Rejected("bad", "eds_cluster_config.eds_config", "value is required")]
    assert set(dc.clusters) == {"good"} and set(dc.accepted[CLUSTER]) == {"good"}


async def test_listener_warms_until_its_route_then_replaces_and_removes() -> None:
    dc, _, lm = make()
    await apply(dc, LISTENER, {"l1": rds_listener("l1", "r1")})
    assert list(dc.warming_listeners) == ["l1"] and lm.active == []
    assert list(dc.rds_interest().values()) == [{"r1"}]
    await apply(dc, ROUTE, {"r1": route("r1")})
    assert [a.config.name for a in lm.active] == ["l1"] and dc.warming_listeners == {}
    first = lm.active[0]
    await apply(dc, LISTENER, {"l1": rds_listener("l1", "r1", port=1)})
    assert lm.retired == [first] and lm.active[0].config.address.port == 1
    await apply(dc, LISTENER, {}, removed=frozenset({"l1"}))
    assert lm.active == [] and dc.rds_interest() == {}
    assert [n for n, _, _ in dc.resources(LISTENER)] == []
    assert [n for n, _, _ in dc.resources(ROUTE)] == ["r1"]

"""Load N clusters with endpoints through CDS and EDS (ADS, State of the World) into envoy and into the
sidecar, and print, for each, the time from the CDS push until every cluster is warm (the proxy asks
for listeners, as Envoy does once CDS initialization is done) and the proxy's RSS then.

    .venv/bin/python -m benchmarks.xds_scale [--clusters 10000] [--proxies envoy,sidecar]

Not part of the test run (it takes tens of seconds and a few hundred MB); the numbers go in the
closing note of the xDS issue."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from envoy.config.endpoint.v3 import endpoint_pb2

from tests.support.fake_xds import CLUSTER, ENDPOINT, LISTENER, FakeXds
from tests.support.ports import free_port
from tests.support.proxy import ProxyProcess
from tests.support.xds_scenario import BOOTSTRAP, eds_cluster


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cla(name: str, i: int) -> endpoint_pb2.ClusterLoadAssignment:
    pb = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    loc = pb.endpoints.add()
    for k in range(2):  # two endpoints per cluster
        sa = loc.lb_endpoints.add().endpoint.address.socket_address
        sa.address, sa.port_value = f"10.{(i >> 8) & 255}.{i & 255}.{k + 1}", 8080
    return pb


async def run(kind: str, n: int) -> tuple[float, int, float]:
    fake = FakeXds()
    await fake.start("127.0.0.1:0")
    with tempfile.TemporaryDirectory() as tmp:
        text = BOOTSTRAP.format(api_type="GRPC", admin=free_port(), xds=fake.port)
        proxy = ProxyProcess(kind, text, workdir=Path(tmp))
        starting = asyncio.ensure_future(asyncio.to_thread(proxy.start, 600.0))
        try:
            stream = await fake.next_stream(30)
            while (await stream.next_request(30)).type_url != CLUSTER:
                pass
            names = [f"outbound|8080||svc-{i}.ns.svc.cluster.local" for i in range(n)]
            clusters = [eds_cluster(name) for name in names]
            loads = [_cla(name, i) for i, name in enumerate(names)]
            t0 = time.monotonic()
            await stream.send(CLUSTER, clusters, "1")
            while True:
                r = await stream.next_request(600)
                if r.type_url == ENDPOINT and len(r.names) == n:
                    break
            await stream.send(ENDPOINT, loads, "1")
            while (await stream.next_request(600)).type_url != LISTENER:
                pass
            elapsed = time.monotonic() - t0
            await stream.send(LISTENER, [], "1")
            await starting
            await asyncio.sleep(1.0)  # let the allocator settle
            assert proxy.proc is not None
            pid = proxy.proc.pid
            cpu0 = _cpu_s(pid)
            await asyncio.sleep(3.0)
            idle = (_cpu_s(pid) - cpu0) / 3.0
            return elapsed, _rss_kb(pid), idle
        finally:
            if not starting.done():
                starting.cancel()
            proxy.close()
            await fake.stop(0)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clusters", type=int, default=10000)
    ap.add_argument("--proxies", default="envoy,sidecar")
    args = ap.parse_args()
    for kind in args.proxies.split(","):
        elapsed, rss, idle = await run(kind, args.clusters)
        print(
            f"{kind}: {args.clusters} clusters warm in {elapsed:.2f} s, RSS {rss / 1024:.1f} MiB, "
            f"idle CPU {idle * 100:.1f}% of a core",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())

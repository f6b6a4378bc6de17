"""The xDS acceptance numbers, measured side by side for envoy and the sidecar (same --concurrency):

a) load: N EDS clusters with two endpoints each over ADS (State of the World, tests/support/fake_xds.py);
   seconds from the CDS push until the proxy asks for listeners (Envoy does that once every cluster is
   warm, i.e. has its EDS), then cluster_manager.active_clusters read from /stats; memory after the
   load (RSS summed over the proxy's processes, main + workers, and PSS, which counts the pages the
   forked workers share once); CPU used over an idle window after the load (all processes).
b) update latency: listener l1 routes to cluster "a" through RDS route r1; each round pushes r1 to the
   other upstream ("a" <-> "b") and polls with fresh connections every few ms until a response shows
   the new upstream: the time from just before the control plane's send to that response.
c) memory over U route updates (each sent after the previous one is ACKed): RSS/PSS before and after.

    .venv/bin/python -m benchmarks.xds_scale [--clusters 10000] [--proxies envoy,sidecar]
        [--concurrency 2] [--rounds 20] [--updates 1000] [--idle 20]

Loopback only; every wait is bounded.  Not part of the test run (a few minutes, a few hundred MB);
`make bench-xds` runs it and the table goes in benchmarks/RESULTS.md ("xDS scale")."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from envoy.config.endpoint.v3 import endpoint_pb2

from tests.support.fake_xds import CLUSTER, ENDPOINT, LISTENER, ROUTE, FakeStream, FakeXds
from tests.support.ports import free_port
from tests.support.proxy import ProxyProcess
from tests.support.upstream import Behaviour, Upstreams
from tests.support.xds_scenario import BOOTSTRAP, cla, eds_cluster, http_listener, route


# -- process measurements (/proc) -------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (the sidecar's forked workers)."""
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 64:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS summed over the process tree, PSS summed over it) in MiB."""
    pids = _tree(pid)
    rss = sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids)
    pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
    return rss / 1024, pss / 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process tree (threads included)."""
    total = 0.0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# -- traffic ------------------------------------------------------------------------------------------
def get_body(port: int, timeout: float = 2.0) -> bytes:
    """One GET / on a fresh connection; the response body ("a" or "b"), b"" on any failure."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while len(data) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return b""
    head, _, body = data.partition(b"\r\n\r\n")
    return body if head.startswith(b"HTTP/1.1 200") else b""


def poll_until(port: int, want: bytes, within: float, every: float = 0.003) -> float | None:
    """Fresh requests until one answers `want`: the monotonic time of that response (None: timed out)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if get_body(port) == want:
            return time.monotonic()
        time.sleep(every)
    return None


def poll_settled(port: int, want: bytes, within: float, streak: int = 10) -> tuple[float | None, float | None]:
    """(time of the first response answering `want`, time of the first of `streak` consecutive ones):
    with several workers the second is when every worker a new connection may land on has it."""
    deadline = time.monotonic() + within
    first = run_start = None
    run = 0
    while time.monotonic() < deadline:
        ok = get_body(port) == want
        now = time.monotonic()
        if ok:
            first = first or now
            run_start = run_start or now
            run += 1
            if run >= streak:
                return first, run_start
        else:
            run, run_start = 0, None
        time.sleep(0.003)
    return first, None


def admin_stat(port: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats?filter=^{name}$", timeout=30) as r:
        for line in r.read().decode().splitlines():
            k, _, v = line.partition(": ")
            if k == name:
                return int(v)
    return -1


# -- the scenario ---------------------------------------------------------------------------------
class _Proxy(ProxyProcess):
    """ProxyProcess with its --concurrency replaced (envoy refuses the flag twice)."""

    def __init__(self, kind: str, text: str, workdir: Path, concurrency: int) -> None:
        super().__init__(kind, text, workdir=workdir)
        self.concurrency = concurrency

    @property
    def argv(self) -> list[str]:
        argv = super().argv
        argv[argv.index("--concurrency") + 1] = str(self.concurrency)
        return argv


def _svc_cla(name: str, i: int) -> endpoint_pb2.ClusterLoadAssignment:
    pb = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    loc = pb.endpoints.add()
    for k in range(2):  # two endpoints per cluster (not dialled: no traffic goes to these)
        sa = loc.lb_endpoints.add().endpoint.address.socket_address
        sa.address, sa.port_value = f"10.{(i >> 8) & 255}.{i & 255}.{k + 1}", 8080
    return pb


@dataclass
class Result:
    kind: str
    load_s: float = 0.0
    active: int = 0
    rss: float = 0.0
    pss: float = 0.0
    idle_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    settled: list[float] = field(default_factory=list)
    updates_s: float = 0.0
    missed: int = 0
    before: tuple[float, float] = (0.0, 0.0)
    after: tuple[float, float] = (0.0, 0.0)
    mid: tuple[float, float] = (0.0, 0.0)


async def _acked(stream: FakeStream, type_url: str, version: str, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            r = await stream.next_request(timeout)
            if r.type_url == type_url and r.version == version and r.error is None:
                return


async def run(kind: str, n: int, concurrency: int, rounds: int, updates: int, idle: float) -> Result:
    res = Result(kind)
    fake = FakeXds()
    await fake.start("127.0.0.1:0")
    ups = Upstreams(["a", "b"])
    ups["a"].behave(Behaviour(body=b"a"))
    ups["b"].behave(Behaviour(body=b"b"))
    port = free_port()
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        text = BOOTSTRAP.format(api_type="GRPC", admin=free_port(), xds=fake.port)
        proxy = _Proxy(kind, text, Path(tmp), concurrency)
        starting = asyncio.ensure_future(asyncio.to_thread(proxy.start, 600.0))
        try:
            stream = await fake.next_stream(30)
            while (await stream.next_request(30)).type_url != CLUSTER:
                pass
            names = [f"outbound|8080||svc-{i}.ns.svc.cluster.local" for i in range(n)]
            clusters = [eds_cluster("a"), eds_cluster("b"), *(eds_cluster(x) for x in names)]
            loads = [cla("a", ups["a"].port), cla("b", ups["b"].port)]
            loads += [_svc_cla(x, i) for i, x in enumerate(names)]
            t0 = time.monotonic()
            await stream.send(CLUSTER, clusters, "1")
            while True:
                r = await stream.next_request(600)
                if r.type_url == ENDPOINT and len(r.names) == n + 2:
                    break
            await stream.send(ENDPOINT, loads, "1")
            while (await stream.next_request(600)).type_url != LISTENER:
                pass
            res.load_s = time.monotonic() - t0
            del clusters, loads
            await stream.send(LISTENER, [http_listener("l1", port, "r1")], "1")
            while (r := await stream.next_request(60)).type_url != ROUTE:
                pass
            current = b"a"
            await stream.send(ROUTE, [route("r1", "a")], "1")
            await starting
            assert proxy.proc is not None and proxy.admin_port is not None
            pid = proxy.proc.pid
            if await asyncio.to_thread(poll_until, port, b"a", 30.0) is None:
                raise RuntimeError(f"{kind}: no traffic through l1\n{proxy.stderr()}")
            res.active = await asyncio.to_thread(admin_stat, proxy.admin_port, "cluster_manager.active_clusters")
            await asyncio.sleep(3.0)  # let the allocator and the stats settle
            res.rss, res.pss = memory_mib(pid)
            c0 = cpu_s(pid)
            await asyncio.sleep(idle)
            res.idle_cpu = (cpu_s(pid) - c0) / idle

            # b) update latency: the new route shows in traffic.
            version = 1
            for _ in range(rounds):
                want = b"b" if current == b"a" else b"a"
                version += 1
                poller = loop.run_in_executor(None, poll_settled, port, want, 10.0)
                await asyncio.sleep(0.05)  # the poller is running (it sees the old upstream)
                t_send = time.monotonic()
                await stream.send(ROUTE, [route("r1", want.decode())], str(version))
                seen, settled = await poller
                await _acked(stream, ROUTE, str(version))
                if seen is None or settled is None:
                    res.missed += 1
                else:
                    res.latencies.append(seen - t_send)
                    res.settled.append(settled - t_send)
                current = want
                await asyncio.sleep(0.2)  # every worker has it before the next round

            # c) memory over `updates` route updates, each after the previous ACK.
            await asyncio.sleep(2.0)
            res.before = memory_mib(pid)
            t_updates = time.monotonic()
            for k in range(updates):
                version += 1
                current = b"b" if current == b"a" else b"a"
                await stream.send(ROUTE, [route("r1", current.decode())], str(version))
                await _acked(stream, ROUTE, str(version))
                if k == updates // 2:
                    res.mid = memory_mib(pid)
            res.updates_s = time.monotonic() - t_updates
            if await asyncio.to_thread(poll_until, port, current, 10.0) is None:
                res.missed += 1
            await asyncio.sleep(2.0)
            res.after = memory_mib(pid)
            return res
        finally:
            if not starting.done():
                starting.cancel()
            proxy.close()
            ups.close()
            await fake.stop(0)


def table(results: list[Result], n: int, concurrency: int, updates: int, idle: float) -> str:
    def ms(xs: list[float], q: float) -> str:
        if not xs:
            return "-"
        xs = sorted(xs)
        return f"{xs[min(len(xs) - 1, int(q * len(xs)))] * 1000:.0f}"

    rows = [
        "| proxy | load N clusters (s) | active_clusters | RSS after load (MiB, sum) | PSS after load (MiB) "
        f"| idle CPU ({idle:.0f} s, % of a core) | update, first response p50 / max (ms) "
        "| update, every worker p50 / max (ms) "
        f"| {updates} updates took (s) | RSS before -> {updates // 2} -> {updates} updates (MiB) "
        "| PSS the same (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        miss = f" ({r.missed} missed)" if r.missed else ""
        rows.append(
            f"| {r.kind} | {r.load_s:.2f} | {r.active} | {r.rss:.0f} | {r.pss:.0f} | {r.idle_cpu * 100:.2f} "
            f"| {ms(r.latencies, 0.5)} / {ms(r.latencies, 1.0)}{miss} | {ms(r.settled, 0.5)} / {ms(r.settled, 1.0)} "
            f"| {r.updates_s:.1f} | {r.before[0]:.0f} -> {r.mid[0]:.0f} -> {r.after[0]:.0f} "
            f"| {r.before[1]:.0f} -> {r.mid[1]:.0f} -> {r.after[1]:.0f} |"
        )
    head = f"N = {n} EDS clusters (+2 served), --concurrency {concurrency} for both"
    return head + "\n\n" + "\n".join(rows)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clusters", type=int, default=10000)
    ap.add_argument("--proxies", default="envoy,sidecar")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--updates", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=20.0)
    args = ap.parse_args()
    results = []
    for kind in args.proxies.split(","):
        r = await run(kind, args.clusters, args.concurrency, args.rounds, args.updates, args.idle)
        print(f"{kind}: {r}", flush=True)
        results.append(r)
    print(table(results, args.clusters, args.concurrency, args.updates, args.idle), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

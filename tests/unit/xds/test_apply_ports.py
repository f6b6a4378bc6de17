"""A dynamic listener on port 0: the main process binds it (the kernel picks the port) and relays that
port with the update, so every worker binds its SO_REUSEPORT socket to the same port; each worker
binding port 0 on its own would leave every worker on a different port."""

from __future__ import annotations

import pickle
import socket
from typing import Any

from sidecar.listener.manager import make_socket
from sidecar.xds.ads import LISTENER
from sidecar.xds.apply import DynamicConfig, Prepared
from sidecar.xds.driver import _HEADER, encode_update
from tests.unit.xds.test_apply import FakeCm, FakeLm, rds_listener


def _tcp_listener(name: str, port: int) -> Any:
    return rds_listener(name, "r", port)


async def test_port_zero_is_bound_once_and_relayed_to_workers() -> None:
    main_binds: list[socket.socket] = []

    def main_bind(lst: Any, port: int | None = None) -> socket.socket:
        s = make_socket(lst, port)
        main_binds.append(s)
        return s

    worker_calls: list[int | None] = []

    def worker_bind(lst: Any, port: int | None = None) -> socket.socket:
        worker_calls.append(port)
        s = make_socket(lst, port)
        main_binds.append(s)
        return s

    main = DynamicConfig({}, (), FakeCm(), FakeLm(), bind=main_bind, drain_time=0.0)
    worker = DynamicConfig({}, (), FakeCm(), FakeLm(), bind=worker_bind, drain_time=0.0)
    try:
        p = main.prepare(LISTENER, "1", {"l": _tcp_listener("l", 0)}, frozenset())
        assert isinstance(p, Prepared)
        port = p.sockets["l"].getsockname()[1]
        assert port != 0 and p.ports == {"l": port}
        # What the driver sends the workers, as the worker reads it.
        frame = encode_update(p)
        msg = pickle.loads(frame[_HEADER.size :])
        assert msg[-1] == {"l": port}
        wp = worker.prepare(LISTENER, "1", {"l": _tcp_listener("l", 0)}, frozenset(), bind_sockets=False)
        assert isinstance(wp, Prepared) and not wp.sockets
        wp.ports = msg[-1]
        await worker.commit(wp, now=0.0)
        assert worker_calls == [port]
    finally:
        for s in main_binds:
            s.close()
        p.close_sockets()

"""The admin server runs on uvloop in the sidecar: test it there."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import uvloop

from tests.integration.admin.client import Conn


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], object]]:
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
async def _close_client_connections() -> AsyncIterator[None]:
    yield
    while Conn.opened:
        await Conn.opened.pop().close()

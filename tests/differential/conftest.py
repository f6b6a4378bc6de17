"""Fixtures for the differential ring.

- `DIFF_PROXIES` (env, default "envoy,sidecar") lists the proxy kinds each test runs on; the kind is
  part of the test id, so `-k "not sidecar"` works too, but `DIFF_PROXIES=envoy` is the
  plain way to run only the oracle half.
- `stack` (module scope) builds the module's upstreams and lazily starts its proxies from the module's
  `BOOTSTRAP`; `diff` (function scope, parametrised by kind) resets the upstreams and compares with envoy.
- Each test module marks itself `pytestmark = pytest.mark.differential`.
- A failing test gets the stderr of each proxy it used appended to its report."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.differential.harness import Differential, Stack
from tests.support.proxy import PROXY_KINDS, ProxyProcess

KINDS = tuple(
    k.strip() for k in os.environ.get("DIFF_PROXIES", ",".join(PROXY_KINDS)).split(",") if k.strip()
)
_USED = pytest.StashKey[list[ProxyProcess]]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "proxy_kind" in metafunc.fixturenames:
        # Module scope groups a module's tests by kind, so a kind's proxy is up once per module.
        metafunc.parametrize("proxy_kind", KINDS, scope="module")


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    s = Stack.for_module(request.module)
    yield s
    s.close()


@pytest.fixture
def diff(stack: Stack, proxy_kind: str, request: pytest.FixtureRequest) -> Differential:
    stack.reset()
    used: list[ProxyProcess] = []
    request.node.stash[_USED] = used
    return Differential(stack, proxy_kind, used)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proc in item.stash.get(_USED, []):
            report.sections.append((f"{proc.kind} stderr (tail)", proc.stderr(6000) or "(empty)"))

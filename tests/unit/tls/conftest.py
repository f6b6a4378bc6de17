"""Shared fixtures for the TLS unit tests: one Istio-style test CA per module (keys are cheap,
but a module reuses its certificates)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ca import TestCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCA]:
    yield TestCA(Path(tmp_path_factory.mktemp("ca")))

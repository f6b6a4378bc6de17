"""The shadow host Envoy writes for request_mirror_policies."""

import pytest

from sidecar.http.filters.shadow import shadow_authority


@pytest.mark.parametrize(
    ("authority", "shadow"),
    [
        (b"m.test", b"m.test-shadow"),
        (b"m.test:8080", b"m.test-shadow:8080"),
        (b"[::1]:80", b"[::1]-shadow:80"),
        (b"10.0.0.1", b"10.0.0.1-shadow"),
    ],
)
def test_shadow_suffix_goes_before_the_port(authority: bytes, shadow: bytes) -> None:
    assert shadow_authority(authority) == shadow

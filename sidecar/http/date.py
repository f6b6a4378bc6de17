"""The `date` header value, formatted once a second rather than once a response.

Envoy's TlsCachingDateProviderImpl refreshes its cached date every 500 ms; we refresh from the
loop with the same period (runtime.py arms the timer)."""

from __future__ import annotations

from email.utils import formatdate

_value = [formatdate(usegmt=True).encode()]


def current() -> bytes:
    return _value[0]


def refresh(epoch: float) -> None:
    _value[0] = formatdate(epoch, usegmt=True).encode()

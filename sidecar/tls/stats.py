"""TLS counters with Envoy's names (source/common/tls/stats.h ALL_SSL_STATS and
ContextImpl::logHandshake): `<scope>ssl.handshake`, `ssl.fail_verify_san`, `ssl.versions.TLSv1.3` ...

The scope is the owner's: a listener's `listener.<address>.` or a cluster's `cluster.<name>.`.
Values are plain ints on a slotted object (bumped per connection, never per request), registered
with `sidecar.observe.stats.Stats.block` so that the admin sums them; the per-name families
(ciphers, versions, curves, sigalgs) live in a dict flushed by a hook.  Pure: no I/O."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

COUNTERS = (
    "connection_error",
    "handshake",
    "session_reused",
    "no_certificate",
    "fail_verify_no_cert",
    "fail_verify_error",
    "fail_verify_san",
    "fail_verify_cert_hash",
)


class _Registry(Protocol):
    def block(self, obj: object, prefix: str, counters: tuple[str, ...]) -> None: ...
    def hook(self, fn: Callable[[memoryview], None], owner: object = None) -> None: ...
    def slot(self, name: str, kind: str = "counter") -> int: ...


class TlsStats:
    """One owner's `ssl.*` counters.  Several SSL contexts of one owner share it."""

    __slots__ = (*COUNTERS, "_families", "_slots", "prefix")

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix  # e.g. "listener.0.0.0.0_15006." or "cluster.outbound|9080||reviews."
        self.connection_error = 0
        self.handshake = 0
        self.session_reused = 0
        self.no_certificate = 0
        self.fail_verify_no_cert = 0
        self.fail_verify_error = 0
        self.fail_verify_san = 0
        self.fail_verify_cert_hash = 0
        # "ciphers.TLS_AES_128_GCM_SHA256" -> count (ContextImpl::incCounter families).
        self._families: dict[str, int] = {}
        self._slots: dict[str, int] = {}

    def bump(self, name: str) -> None:
        """Increment one of COUNTERS by name (handshake failures pick theirs at run time)."""
        setattr(self, name, getattr(self, name) + 1)

    def family(self, family: str, value: str) -> None:
        key = f"{family}.{value}"
        self._families[key] = self._families.get(key, 0) + 1

    def value(self, name: str) -> int:
        """A counter by its short name: "handshake" or "versions.TLSv1.3" (tests, admin)."""
        if name in COUNTERS:
            count: int = getattr(self, name)
            return count
        return self._families.get(name, 0)

    def items(self) -> list[tuple[str, int]]:
        """(full stat name, value) for every counter, families included."""
        out = [(f"{self.prefix}ssl.{n}", int(getattr(self, n))) for n in COUNTERS]
        out += [(f"{self.prefix}ssl.{k}", v) for k, v in sorted(self._families.items())]
        return out

    def register(self, stats: _Registry) -> None:
        """Publish through the shared stats registry (sidecar.observe.stats.Stats)."""
        stats.block(self, f"{self.prefix}ssl.", COUNTERS)

        def flush(row: memoryview) -> None:
            for key, count in self._families.items():
                slot = self._slots.get(key)
                if slot is None:
                    slot = self._slots[key] = stats.slot(f"{self.prefix}ssl.{key}")
                row[slot] = count

        stats.hook(flush, self)  # runs only while this block is hot (families change with handshake)

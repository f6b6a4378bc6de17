"""RING_HASH: Envoy's RingHashLoadBalancer (ketama ring of xxHash64 points), built once per host set.

Construction follows ring_hash_lb.cc: weights are normalised to sum 1; `scale` is the smallest ring
size >= minimum_ring_size at which the lightest host gets a whole number of points, capped at
maximum_ring_size; host after host (in host-set order) gets points while a running count is below a
running target `scale * weight`, point j of a host being xxHash64("<address>_<j>", seed 0); the ring
is sorted by hash.  A request hash h lands on the first point >= h, wrapping to the first point
(the ketama search Envoy uses).  With the same host keys and order this is Envoy's ring exactly.

Pure: no randomness (a request without a hash gets a random 64-bit h from the caller, as Envoy's
ThreadAwareLoadBalancerBase does)."""

from __future__ import annotations

import bisect
import math

import xxhash

# ring_hash_lb_config defaults and bounds (cluster.proto: minimum_ring_size 1024, both <= 8M).
DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_MAX_RING_SIZE = 8 * 1024 * 1024

_xxh64 = xxhash.xxh64_intdigest


def xxhash64(data: bytes, seed: int = 0) -> int:
    """Envoy's HashUtil::xxHash64 (XXH64 of the bytes)."""
    return _xxh64(data, seed)


def host_key(host: str, port: int) -> str:
    """The string Envoy hashes for a host: its address as `ip:port` (`[ipv6]:port`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RingHash:
    __slots__ = ("_hashes", "_hosts", "_n")

    def __init__(
        self,
        keys: tuple[str, ...],
        weights: tuple[float, ...],
        minimum_ring_size: int = DEFAULT_MIN_RING_SIZE,
        maximum_ring_size: int = DEFAULT_MAX_RING_SIZE,
    ) -> None:
        total = sum(weights)
        normalized = [w / total for w in weights] if total else []
        points: list[tuple[int, int]] = []
        if normalized:
            least = min(normalized)
            scale = min(math.ceil(least * minimum_ring_size) / least, float(maximum_ring_size))
            current = 0.0
            target = 0.0
            for idx, (key, weight) in enumerate(zip(keys, normalized, strict=True)):
                prefix = f"{key}_"
                target += scale * weight
                j = 0
                # Running sums keep fractional shares stable across hosts (ring_hash_lb.cc).
                while current < target:
                    points.append((_xxh64(f"{prefix}{j}".encode()), idx))
                    j += 1
                    current += 1.0
        points.sort(key=lambda p: p[0])
        self._hashes = [h for h, _ in points]
        self._hosts = [i for _, i in points]
        self._n = len(points)

    def __len__(self) -> int:
        return self._n

    def points_per_host(self, n_hosts: int) -> list[int]:
        out = [0] * n_hosts
        for i in self._hosts:
            out[i] += 1
        return out

    def pick(self, h: int) -> int:
        """Index of the host owning 64-bit hash `h`; the ring is not empty."""
        i = bisect.bisect_left(self._hashes, h)
        return self._hosts[i if i < self._n else 0]

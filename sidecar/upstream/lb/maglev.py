"""MAGLEV: Envoy's MaglevLoadBalancer (weighted Maglev lookup table, Eisenbud et al. 2016, listing 1).

Construction follows maglev_lb.cc: hosts are sorted by their key (`ip:port`); host k starts at
offset xxHash64(key, seed 0) % M and steps by xxHash64(key, seed 1) % (M - 1) + 1 through the table
of prime size M (default 65537); the hosts take turns filling their next free preferred slot, a host
of normalised weight w taking a turn in round r only when r * w >= its running target (which grows by
the largest normalised weight per turn).  A request hash h picks table[h % M].  With the same keys
this is Envoy's table exactly (Envoy's compact table stores the same assignment).

Pure: no randomness (a request without a hash gets a random 64-bit h from the caller)."""

from __future__ import annotations

from sidecar.upstream.lb.ring_hash import xxhash64

DEFAULT_TABLE_SIZE = 65537
MAX_TABLE_SIZE = 5000011  # cluster.proto MaglevLbConfig.table_size: lte 5000011


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


class Maglev:
    __slots__ = ("_size", "table")

    def __init__(
        self, keys: tuple[str, ...], weights: tuple[float, ...], table_size: int = DEFAULT_TABLE_SIZE
    ) -> None:
        m = table_size
        self._size = m
        total = sum(weights)
        n = len(weights)
        table = [-1] * m
        self.table = table
        if not n or not total:
            return
        # Envoy sorts the build entries by key so the table does not depend on host-set order.
        order = sorted(range(n), key=lambda i: keys[i].encode())
        host = [order[e] for e in range(n)]
        weight = [weights[i] / total for i in host]
        top = max(weight)
        offset = [xxhash64(keys[i].encode()) % m for i in host]
        skip = [xxhash64(keys[i].encode(), 1) % (m - 1) + 1 for i in host]
        nxt = [0] * n
        target = [0.0] * n
        filled = 0
        rnd = 1
        while filled < m:
            for e in range(n):
                if filled >= m:
                    break
                if rnd * weight[e] < target[e]:
                    continue
                target[e] += top
                off, stp, j = offset[e], skip[e], nxt[e]
                c = (off + stp * j) % m
                while table[c] >= 0:
                    j += 1
                    c = (off + stp * j) % m
                table[c] = host[e]
                nxt[e] = j + 1
                filled += 1
            rnd += 1

    def pick(self, h: int) -> int:
        """Index of the host for 64-bit hash `h`; the table is not empty."""
        return self.table[h % self._size]

"""RING_HASH: Envoy's ring sizes, stickiness, minimal disruption when a host is added, weights."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.upstream.lb.ring_hash import RingHash, host_key, xxhash64


def keys(n: int) -> tuple[str, ...]:
    return tuple(host_key(f"10.0.0.{i + 1}", 8080) for i in range(n))


def test_host_key_is_envoys_address_string() -> None:
    assert host_key("127.0.0.1", 80) == "127.0.0.1:80"
    assert host_key("::1", 80) == "[::1]:80"


def test_ring_sizes_follow_envoys_scale() -> None:
    # 3 equal hosts: ceil(1024 / 3) = 342 points each (ring_hash_lb.cc `scale`).
    r = RingHash(keys(3), (1, 1, 1))
    assert len(r) == 1026 and r.points_per_host(3) == [342, 342, 342]
    r = RingHash(keys(3), (1, 2, 1))
    assert r.points_per_host(3) == [256, 512, 256]
    r = RingHash(keys(3), (1, 1, 1), minimum_ring_size=1024, maximum_ring_size=100)
    assert len(r) == 100


def test_points_are_xxhash_of_address_underscore_index() -> None:
    r = RingHash(("127.0.0.1:80",), (1,), minimum_ring_size=4)
    assert sorted(r._hashes) == sorted(xxhash64(b"127.0.0.1:80_%d" % j) for j in range(4))


def test_lookup_is_first_point_at_or_after_the_hash_wrapping() -> None:
    r = RingHash(keys(2), (1, 1), minimum_ring_size=8)
    hashes, hosts = r._hashes, r._hosts
    assert r.pick(hashes[3]) == hosts[3]
    assert r.pick(hashes[3] + 1) == hosts[4]
    assert r.pick(hashes[-1] + 1) == hosts[0]
    assert r.pick(0) == hosts[0]


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=8), st.integers(min_value=0, max_value=2**32))
def test_adding_a_host_moves_about_one_nth_of_keys(n: int, seed: int) -> None:
    # Envoy's ring gives each of n equal hosts ceil(1024 / n) points, so adding a host both adds its
    # points (~1/(n+1) of keys move to it) and drops each old host's last points (their keys move to
    # the next point, any host): at most ~2/(n+1) of keys move in all.  Copied as is.
    before = RingHash(keys(n), (1,) * n)
    after = RingHash(keys(n + 1), (1,) * (n + 1))
    rng = random.Random(seed)
    sample = [rng.getrandbits(64) for _ in range(2000)]
    moved = to_new = 0
    for h in sample:
        a, b = before.pick(h), after.pick(h)
        assert before.pick(h) == a  # same key, same host
        if a != b:
            moved += 1
            to_new += b == n
    assert abs(to_new / len(sample) - 1 / (n + 1)) < 0.08
    assert moved / len(sample) < 2 / (n + 1) + 0.05


def test_fixed_points_per_host_is_consistent() -> None:
    # When the old hosts keep their points (ring size grows with the host count), a key only ever
    # moves to the new host: classic consistent hashing.
    before = RingHash(keys(4), (1,) * 4, minimum_ring_size=400)
    after = RingHash(keys(5), (1,) * 5, minimum_ring_size=500)
    assert before.points_per_host(4) == [100] * 4 and after.points_per_host(5) == [100] * 5
    rng = random.Random(11)
    moved = 0
    for _ in range(5000):
        h = rng.getrandbits(64)
        a, b = before.pick(h), after.pick(h)
        if a != b:
            assert b == 4
            moved += 1
    assert 0.12 < moved / 5000 < 0.28


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5), min_size=2, max_size=5))
def test_weights_respected_over_many_keys(weights: list[int]) -> None:
    r = RingHash(keys(len(weights)), tuple(weights))
    rng = random.Random(7)
    n = 20000
    counts = Counter(r.pick(rng.getrandbits(64)) for _ in range(n))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(counts[i] / n - w / total) < 0.08

"""Jump consistent hash and the stable player key, run against both twins."""

from __future__ import annotations

import random
from collections import Counter
from types import ModuleType

import pytest

MASK = (1 << 64) - 1


def reference_jump(key: int, num_buckets: int) -> int:
    """Lamping & Veach (2014), figure 1, transcribed: int64 b, j; uint64 key; double division."""
    b, j = -1, 0
    while j < num_buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & MASK
        j = int(float(b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


# Published golden values (Guava's consistentHash tests; ClickHouse's jumpConsistentHash tests).
GOLDEN_100 = [0, 55, 62, 8, 45, 59, 86, 97, 82, 59, 73, 37, 17, 56, 86, 21, 90, 37, 38, 83]
GOLDEN = [
    (10863919174838991, 11, 6),
    (2016238256797177309, 11, 3),
    (1673758223894951030, 11, 5),
    (2, 100001, 80343),
    (2201, 100001, 22152),
    (2202, 100001, 15018),
    (1, 1, 0),
    (42, 57, 43),
    (256, 1024, 520),
    (3735883980, 666, 361),
    (16045690984833335023, 255, 237),
]


def test_jump_golden_values(shard: ModuleType) -> None:
    assert [shard.jump(k, 100) for k in range(20)] == GOLDEN_100
    for key, buckets, expected in GOLDEN:
        assert shard.jump(key, buckets) == expected


def test_jump_matches_reference(shard: ModuleType) -> None:
    rng = random.Random(7)
    for _ in range(2000):
        key = rng.getrandbits(64)
        buckets = rng.choice([1, 2, 3, 7, 16, 64, 1000, rng.randrange(1, 1 << 31)])
        assert shard.jump(key, buckets) == reference_jump(key, buckets)
    assert shard.jump(MASK, shard.MAX_BUCKETS) == reference_jump(MASK, shard.MAX_BUCKETS)


def test_fnv1a_64_vectors(shard: ModuleType) -> None:
    assert shard.fnv1a_64("") == 0xCBF29CE484222325
    assert shard.fnv1a_64("a") == 0xAF63DC4C8601EC8C
    assert shard.fnv1a_64("foobar") == 0x85944171F73967E8
    assert shard.fnv1a_64("ü") == shard.fnv1a_64("\u00fc")


def test_shard_for_is_pinned(shard: ModuleType) -> None:
    # Changing any of these moves players between ledger shards: a data migration, not a refactor.
    ids = ["player-1", "p:brand:42", "Jörg", "8f14e45f-ceea-467f-a8ae-0e5a9b0e1d3a"]
    assert [shard.shard_for(i, 16) for i in ids] == [shard.jump(shard.fnv1a_64(i), 16) for i in ids]
    assert [shard.shard_for(i, 16) for i in ids] == [11, 5, 13, 7]


def test_distribution_is_roughly_uniform(shard: ModuleType) -> None:
    shards = 16
    n = 32_000
    counts = Counter(shard.shard_for(f"player-{i}", shards) for i in range(n))
    expected = n / shards
    assert sorted(counts) == list(range(shards))
    chi2 = sum((counts[s] - expected) ** 2 / expected for s in range(shards))
    assert chi2 < 40  # 15 degrees of freedom: p < 0.001 above ~37.7
    assert max(abs(c - expected) for c in counts.values()) < 0.06 * expected


@pytest.mark.parametrize("buckets", [1, 2, 7, 16, 99])
def test_growing_moves_only_to_the_new_bucket(shard: ModuleType, buckets: int) -> None:
    n = 20_000
    keys = [shard.fnv1a_64(f"player-{i}") for i in range(n)]
    moved = 0
    for key in keys:
        before, after = shard.jump(key, buckets), shard.jump(key, buckets + 1)
        if before != after:
            assert after == buckets
            moved += 1
    share = moved / n
    assert abs(share - 1 / (buckets + 1)) < 0.02


def test_errors(shard: ModuleType) -> None:
    with pytest.raises(ValueError):
        shard.jump(1, 0)
    with pytest.raises(ValueError):
        shard.jump(1, 1 << 31)
    with pytest.raises(OverflowError):
        shard.jump(-1, 4)
    with pytest.raises(OverflowError):
        shard.jump(1 << 64, 4)
    with pytest.raises(ValueError):
        shard.shard_for("p", 0)
    with pytest.raises(UnicodeEncodeError):
        shard.shard_for("\ud800", 4)

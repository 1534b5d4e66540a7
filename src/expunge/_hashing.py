"""Keyed, position-free hashing: the single source of randomness for partitions and order.

Everything random that decides *which sample goes where* or *in which order samples are seen*
is a pure function of ``(seed, purpose, keys..., sample id)``. Because the value for one id
never depends on which other ids exist or where they sit, removing a sample cannot change
the fate of any other sample: the basis of history independence (ARCHITECTURE.md section 2).

The mixer is SplitMix64 (Steele, Lea & Flood 2014), vectorised with NumPy's wrapping
uint64 arithmetic. It is not cryptographic, and need not be: it only has to be a fixed,
well-mixed function.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

_MASK = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic, no warnings)."""
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def derive_key(seed: int, *parts: str | int) -> int:
    """A 64-bit key for one purpose, e.g. ``derive_key(seed, "order", submodel, block, epoch)``.

    Uses SHA-256 over a canonical text so that keys for different purposes never collide
    by arithmetic accident.
    """
    text = "\x1f".join(str(p) for p in (int(seed), *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def keyed_hash(key: int, ids: np.ndarray) -> np.ndarray:
    """A uint64 hash of each id under ``key`` (from :func:`derive_key`)."""
    ids64 = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    return mix(mix(ids64 ^ np.uint64(key & _MASK)) + np.uint64(key & _MASK))


def keyed_uniform(key: int, ids: np.ndarray) -> np.ndarray:
    """A float64 in [0, 1) for each id under ``key``: 53 high bits of :func:`keyed_hash`."""
    return (keyed_hash(key, ids) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def keyed_buckets(key: int, ids: np.ndarray, n_buckets: int) -> np.ndarray:
    """The bucket ``floor(u(id) * n_buckets)`` of each id for a keyed uniform ``u``."""
    uniform = keyed_uniform(key, np.asarray(ids, dtype=np.int64))
    return np.floor(uniform * n_buckets).astype(np.int64)


def keyed_order(key: int, ids: np.ndarray) -> np.ndarray:
    """Positions that sort ``ids`` by their keyed hash (ties broken by id).

    The relative order of two ids depends only on the two ids and the key, so dropping
    a third id leaves it unchanged.
    """
    ids = np.asarray(ids, dtype=np.int64)
    return np.lexsort((ids, keyed_hash(key, ids)))


def sha256_ids(ids: Iterable[int] | np.ndarray, *, prefix: str = "") -> str:
    """Hex SHA-256 of a prefix and an id array (int64, little endian, in the given order)."""
    h = hashlib.sha256(prefix.encode())
    h.update(np.ascontiguousarray(np.asarray(ids, dtype="<i8")).tobytes())
    return h.hexdigest()

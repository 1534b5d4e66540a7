"""In-place rewrites: a blob becomes a new blob by overwriting byte ranges of its file.

Forgetting a few rows of a large blob (a bucket of the stored training data) by writing a
new blob copies, syncs and keys every retained byte of it again: for a random 1 % of MNIST,
which touches every bucket, that is the whole training set per request. An in-place rewrite
overwrites only the forgotten rows' bytes (with a fill byte: zeros, or ``0xFF`` for a
marker such as a position of ``-1``) and renames the file to the new blob's name: the
bytes written are those of the forgotten rows, whatever the size of the blob.

The commit protocol is kept (:mod:`expunge.store._store`): a rewrite is *staged* before the
commit (the new content's keyed digest is computed from the old file with the patches
applied in memory, so the commit records the digest of what the file will hold), recorded
in the committed state (``"rewrites"``: source, target, patches), and *applied* after the
commit, where the purge deletes dead blobs (under the read lock held exclusively, so no
reader is mid-load). A crash after the commit leaves the target missing and the source
(maybe partly patched) in place: :meth:`Store.recover` applies the recorded patches again
(overwriting is idempotent) and renames. A crash before it leaves the source untouched.

Overwriting in place is also the stronger erasure on a plain file system: unlinking a file
frees its blocks with the old bytes still on them, whereas the patched ranges are written
over where they lie (copy-on-write file systems and SSD wear levelling aside; docs/store.md).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: one patch: ``(offset, length, fill byte)``
Patch = tuple[int, int, int]


@dataclass(frozen=True)
class Rewrite:
    """Blob ``source`` becomes blob ``target`` once ``patches`` are written over its file."""

    source: str
    target: str
    patches: tuple[Patch, ...]

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target,
                "patches": [list(p) for p in self.patches]}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Rewrite:
        return cls(str(value["source"]), str(value["target"]),
                   tuple((int(o), int(n), int(f)) for o, n, f in value["patches"]))


def tensor_regions(data: bytes | memoryview) -> dict[str, tuple[int, int]]:
    """``name -> (start, end)``: where each tensor's bytes lie in safetensors ``data``
    (offsets from the start of the file)."""
    size = int.from_bytes(bytes(data[:8]), "little")
    header = json.loads(bytes(data[8:8 + size]))
    base = 8 + size
    return {name: (base + int(info["data_offsets"][0]), base + int(info["data_offsets"][1]))
            for name, info in header.items() if name != "__metadata__"}


def row_patches(regions: dict[str, tuple[int, int]], shapes: dict[str, tuple[int, ...]],
                rows: list[int], fills: dict[str, int]) -> list[Patch]:
    """Patches overwriting ``rows`` (indices along the first axis) of every tensor in
    ``fills`` with its fill byte; adjacent rows are merged into one patch."""
    patches: list[Patch] = []
    for name, fill in sorted(fills.items()):
        start, end = regions[name]
        n_rows = shapes[name][0] if shapes[name] else 0
        if n_rows == 0:
            continue
        width = (end - start) // n_rows
        run_start = run_end = -1
        for r in sorted(rows):
            if r == run_end:
                run_end += 1
                continue
            if run_start >= 0:
                patches.append((start + run_start * width, (run_end - run_start) * width, fill))
            run_start, run_end = r, r + 1
        if run_start >= 0:
            patches.append((start + run_start * width, (run_end - run_start) * width, fill))
    return sorted(patches)


def check_patches(patches: tuple[Patch, ...], size: int) -> None:
    """Patches must be sorted, disjoint, inside a file of ``size`` bytes, with byte fills."""
    end = 0
    for offset, length, fill in patches:
        if offset < end or length <= 0 or offset + length > size or not 0 <= fill <= 255:
            raise ValueError(f"invalid patch {(offset, length, fill)} of a {size}-byte blob")
        end = offset + length


def patched_parts(data: bytes | memoryview, patches: tuple[Patch, ...]) -> Iterator[Any]:
    """The bytes of ``data`` with ``patches`` applied, as consecutive parts (no copy of the
    unpatched ranges): what the file will hold, for its digest."""
    view = memoryview(data)
    position = 0
    for offset, length, fill in patches:
        yield view[position:offset]
        yield _block(length, fill)
        position = offset + length
    yield view[position:]


def _block(length: int, fill: int) -> bytes:
    """``length`` bytes of ``fill`` (rows of one tensor share a few lengths: small blocks
    are made once)."""
    return _small_block(length, fill) if length <= 65_536 else bytes([fill]) * length


@functools.lru_cache(maxsize=64)
def _small_block(length: int, fill: int) -> bytes:
    return bytes([fill]) * length


def apply_to_files(moves: list[tuple[Path, Path, tuple[Patch, ...]]]) -> None:
    """For each ``(source, target, patches)``: write the patches over ``source`` and rename
    it to ``target``; then sync the folders.

    Each file is synced with ``fdatasync`` (its size and blocks do not change, so no
    journal commit is needed for it) before any rename, and each folder once after all of
    them: two journal commits per request instead of two per file. Idempotent until a
    rename: a crash anywhere leaves each pair as the source (patched in part or whole;
    applying again finishes it) or the complete target."""
    from expunge.store._atomic import fsync_dir

    sync = getattr(os, "fdatasync", os.fsync)
    for source, _, patches in moves:
        fd = os.open(source, os.O_RDWR)
        try:
            for offset, length, fill in patches:
                os.pwrite(fd, _block(length, fill), offset)
            sync(fd)
        finally:
            os.close(fd)
    folders = set()
    for source, target, _ in moves:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        folders |= {source.parent, target.parent}
    for folder in sorted(folders):
        fsync_dir(folder)


def apply_to_file(source: Path, target: Path, patches: tuple[Patch, ...]) -> None:
    """:func:`apply_to_files` for one file."""
    apply_to_files([(source, target, patches)])

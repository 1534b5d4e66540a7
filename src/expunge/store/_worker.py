"""What a worker process sees of a store: blob reads and writes, nothing else.

The calling process holds the store's write lock for the whole request, commits the new
state and the ledger row, and purges; a worker only reads the checkpoint its job resumes
from and writes the one it produces. So these views *have* no commit, delete, lock,
recovery or key: they are not :class:`~expunge.store.Store` subclasses but small classes
with the three methods block training uses (:class:`BlobAccess`). Workers have no key:
the calling process hashes what they wrote when it commits, and checks the committed
checkpoints the chains resume from before any job starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from expunge.exceptions import StoreError
from expunge.store import _layout as layout
from expunge.store._blobs import (
    Metadata,
    Tensors,
    decode,
    encode_parts,
    prepare,
    read_file,
    write_file,
)


@runtime_checkable
class BlobAccess(Protocol):
    """The blob operations block training needs (every store and worker view has them)."""

    def read_blob(self, name: str) -> tuple[Tensors, Metadata]: ...

    def write_blob(self, name: str, tensors: Tensors, metadata: Metadata | None = None,
                   *, shared: bool = False, compress: bool = False) -> None: ...

    def has_blob(self, name: str) -> bool: ...


def manifest_digest_of(manifest: dict[str, Any]) -> str:
    """A digest naming one store's manifest (to check a worker sees the same store)."""
    text = json.dumps(manifest, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class WorkerDirectoryStore:
    """Blob access to a store directory for a worker: read and write blobs, nothing else.

    The same atomic write and safetensors decoding as :class:`~expunge.store.DirectoryStore`,
    no database, no lock, no key, no temp-file cleanup (another worker may be writing one).
    ``manifest_digest`` (:func:`manifest_digest_of` of the caller's manifest) proves this is
    the calling process's store and not another directory at the same path on another node.
    """

    def __init__(self, root: str | Path, manifest_digest: str) -> None:
        self.root = Path(root)
        path = layout.manifest_path(self.root)
        try:
            found = json.loads(path.read_bytes())
        except (OSError, ValueError):
            found = None
        if not isinstance(found, dict) or manifest_digest_of(found) != manifest_digest:
            raise StoreError(
                f"The store {str(self.root)!r} is not visible from this worker "
                f"(host {os.uname().nodename}): workers write checkpoints into the store, so its "
                "path must be on storage shared by every node at the same path (NFS, ...). Use a "
                "shared path, or store=None to send checkpoints back through Ray."
            )

    def has_blob(self, name: str) -> bool:
        return layout.blob_path(self.root, name).is_file()

    def read_blob(self, name: str) -> tuple[Tensors, Metadata]:
        path = layout.blob_path(self.root, name)
        return decode(read_file(path, name, self.root, committed=False), str(path))

    def write_blob(self, name: str, tensors: Tensors, metadata: Metadata | None = None,
                   *, shared: bool = False, compress: bool = False) -> None:
        path = layout.blob_path(self.root, name)
        if not path.exists():
            write_file(path, encode_parts(tensors, metadata, compress=compress))


class WorkerMemoryStore:
    """A worker's view of an in-memory store: the blobs it was sent plus those it writes.

    The written blobs go back to the calling process (:meth:`new_blobs`), which writes them
    into its store and records their digests there.
    """

    def __init__(self, blobs: dict[str, tuple[Tensors, Metadata]] | None = None) -> None:
        self._blobs = dict(blobs or {})
        self.written: list[str] = []

    def has_blob(self, name: str) -> bool:
        return name in self._blobs

    def read_blob(self, name: str) -> tuple[Tensors, Metadata]:
        try:
            tensors, metadata = self._blobs[name]
        except KeyError:
            raise StoreError(f"blob {name!r} was not sent to this worker") from None
        # clones: optimizer.load_state_dict keeps same-dtype tensors by reference
        return {k: v.clone() for k, v in tensors.items()}, dict(metadata)

    def write_blob(self, name: str, tensors: Tensors, metadata: Metadata | None = None,
                   *, shared: bool = False, compress: bool = False) -> None:
        if name not in self._blobs:
            self._blobs[name] = (prepare(tensors), dict(metadata or {}))
        self.written.append(name)

    def new_blobs(self) -> dict[str, tuple[Tensors, Metadata]]:
        return {name: self._blobs[name] for name in self.written}

"""A store in this process's memory (``store=None``): the same interface, nothing on disk."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from expunge.exceptions import StoreError, StoreIntegrityError
from expunge.store._blobs import Metadata, Tensors, prepare
from expunge.store._integrity import StoreKey, tensors_digest
from expunge.store._ledger import SCHEMA
from expunge.store._lock import ThreadLock
from expunge.store._store import CACHE_PREFIX, Store


class MemoryStore(Store):
    """Everything in this process's memory (``store=None``).

    Blob digests cover names, dtypes, shapes, bytes and metadata of the tensors held (no
    serialization); ``verify`` re-hashes them like a directory store's files, which catches
    a stored tensor changed in place (a checkpoint aliased by training, say).
    """

    def __init__(self) -> None:
        super().__init__(sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False))
        self._db.executescript(SCHEMA)
        self._blobs: dict[str, tuple[Tensors, Metadata]] = {}
        self._manifest: dict[str, Any] | None = None
        self._manifest_text: str | None = None
        self._key = StoreKey.generate()
        self._write_lock = ThreadLock("the write lock of an in-memory store")
        self._read_lock = ThreadLock("the read lock of an in-memory store")

    def _load_key(self) -> StoreKey:  # pragma: no cover - generated in __init__
        raise StoreError("an in-memory store has lost its key")

    def ensure_key(self) -> None:
        pass

    def describe_file(self, name: str) -> str:
        return "the manifest" if name == "manifest" else f"blob {name!r} of the in-memory store"

    def write_blob(self, name: str, tensors: Tensors, metadata: Metadata | None = None,
                   *, shared: bool = False, compress: bool = False) -> None:
        if name.startswith(CACHE_PREFIX) and not self._cache_write_allowed():
            return
        if self.write_hook is not None:
            self.write_hook("write", name)
        if name not in self._blobs:
            kept = {k: v.detach() for k, v in tensors.items()} if shared else prepare(tensors)
            meta = dict(metadata or {})
            self._blobs[name] = (kept, meta)
            self._known[name] = tensors_digest(self.key, kept, meta)

    def read_blob(self, name: str) -> tuple[Tensors, Metadata]:
        try:
            tensors, metadata = self._blobs[name]
        except KeyError:
            error = StoreIntegrityError if name in self._known else StoreError
            raise error(f"blob {name!r} is missing from the in-memory store") from None
        # clones: optimizer.load_state_dict keeps same-dtype tensors by reference and would
        # otherwise mutate the stored checkpoint in place
        return {k: v.clone() for k, v in tensors.items()}, dict(metadata)

    def blob_digest(self, name: str) -> str:
        if name not in self._blobs:
            raise StoreIntegrityError(f"blob {name!r} is missing from the in-memory store")
        tensors, metadata = self._blobs[name]
        return tensors_digest(self.key, tensors, metadata)

    def has_blob(self, name: str) -> bool:
        return name in self._blobs

    def list_blobs(self) -> set[str]:
        return set(self._blobs)

    def delete_blob(self, name: str) -> None:
        if self.write_hook is not None:
            self.write_hook("delete", name)
        self._blobs.pop(name, None)

    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for tensors, _ in self._blobs.values() for t in tensors.values())

    def read_manifest(self) -> dict[str, Any] | None:
        return None if self._manifest_text is None else dict(json.loads(self._manifest_text))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self._manifest_text = json.dumps(manifest, indent=2, sort_keys=True)
        self._store_id = None

    def manifest_digest(self) -> str | None:
        text = self._manifest_text
        return None if text is None else self.key.digest("manifest", text)

"""Stores (directory or memory), atomic checkpoints, locks, integrity and the ledger."""

from pathlib import Path

from expunge.store._atomic import atomic_write_bytes
from expunge.store._blobs import load_blob_file
from expunge.store._checkpoints import Checkpoint, pack, unpack
from expunge.store._directory import DirectoryStore
from expunge.store._integrity import StoreKey, ids_digest, verify_store
from expunge.store._ledger import GENESIS, Ledger, LedgerEntry
from expunge.store._memory import MemoryStore
from expunge.store._rewrite import Rewrite, row_patches
from expunge.store._store import CACHE_PREFIX, Head, RewritePlan, Store
from expunge.store._worker import (
    BlobAccess,
    WorkerDirectoryStore,
    WorkerMemoryStore,
    manifest_digest_of,
)


def open_store(location: str | Path | None, *, create: bool) -> Store:
    """A :class:`MemoryStore` for ``None``, else a :class:`DirectoryStore` at ``location``."""
    if location is None:
        return MemoryStore()
    return DirectoryStore(location, create=create)


__all__ = [
    "CACHE_PREFIX",
    "GENESIS",
    "BlobAccess",
    "Checkpoint",
    "DirectoryStore",
    "Head",
    "Ledger",
    "LedgerEntry",
    "MemoryStore",
    "Rewrite",
    "RewritePlan",
    "Store",
    "StoreKey",
    "WorkerDirectoryStore",
    "WorkerMemoryStore",
    "atomic_write_bytes",
    "ids_digest",
    "load_blob_file",
    "manifest_digest_of",
    "open_store",
    "pack",
    "row_patches",
    "unpack",
    "verify_store",
]

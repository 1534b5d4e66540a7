"""Stores (directory or memory), atomic checkpoints and the hash-chained deletion ledger."""

from expunge.store._checkpoints import Checkpoint, pack, unpack
from expunge.store._ledger import GENESIS, Ledger, LedgerEntry
from expunge.store._store import DirectoryStore, MemoryStore, Store, open_store

__all__ = [
    "GENESIS",
    "Checkpoint",
    "DirectoryStore",
    "Ledger",
    "LedgerEntry",
    "MemoryStore",
    "Store",
    "open_store",
    "pack",
    "unpack",
]

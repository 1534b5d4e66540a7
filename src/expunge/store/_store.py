"""A store: blobs of tensors plus an SQLite database holding committed state and the ledger.

Two backends share one interface: :class:`DirectoryStore` (``store="path"``) persists
everything; :class:`MemoryStore` (``store=None``) keeps blobs in a dict and the database in
SQLite's ``:memory:``, so the ledger and its hash chain work the same in memory.

Commit protocol (what makes a request all-or-nothing):

1. new blobs are written atomically under new content-addressed names (live ones are never
   overwritten);
2. ``commit`` writes the new state and the ledger row in **one** SQLite transaction
   (WAL, ``synchronous=FULL``): this is the moment the request happens;
3. blobs no longer referenced by the state are deleted (the purge), and listed in the row.

A crash before step 2 leaves unreferenced new blobs; a crash after it leaves stale old
ones. Either way :meth:`Store.collect_garbage` on reopen removes every blob the committed
state does not name, so the store is at the previous state or finishes the request.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from expunge._version import __version__
from expunge.exceptions import StoreError
from expunge.store import _layout as layout
from expunge.store._atomic import atomic_write, atomic_write_bytes
from expunge.store._ledger import SCHEMA, Ledger, LedgerEntry, chain_hash

Tensors = dict[str, torch.Tensor]
Metadata = dict[str, str]


def _prepare(tensors: Tensors) -> Tensors:
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


class Store(ABC):
    """Blobs + committed state + ledger. Use :func:`open_store` to get one."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._db.row_factory = sqlite3.Row
        self._db.executescript(SCHEMA)
        self.ledger = Ledger(self._db)
        #: every blob written or deleted, in order; tests use it to inject crashes
        self.write_hook: Any = None

    # ------------------------------------------------------------------ blobs
    @abstractmethod
    def write_blob(self, name: str, tensors: Tensors, metadata: Metadata | None = None,
                   *, shared: bool = False) -> None:
        """Store ``tensors`` under ``name`` atomically (a no-op if it exists already).

        ``shared=True`` promises the tensors will never be mutated, letting the memory
        backend keep references instead of copies (used for the training data).
        """

    @abstractmethod
    def read_blob(self, name: str) -> tuple[Tensors, Metadata]:
        """The tensors and metadata of blob ``name``."""

    @abstractmethod
    def has_blob(self, name: str) -> bool: ...

    @abstractmethod
    def list_blobs(self) -> set[str]: ...

    @abstractmethod
    def delete_blob(self, name: str) -> None: ...

    @abstractmethod
    def size_bytes(self) -> int:
        """Bytes used by blobs and the database."""

    @property
    def location(self) -> str:
        return "memory"

    # ------------------------------------------------------------ manifest
    @abstractmethod
    def read_manifest(self) -> dict[str, Any] | None: ...

    @abstractmethod
    def write_manifest(self, manifest: dict[str, Any]) -> None: ...

    # ---------------------------------------------------------- state + ledger
    def read_state(self) -> dict[str, Any] | None:
        row = self._db.execute("SELECT value FROM state WHERE name = 'current'").fetchone()
        return None if row is None else json.loads(row[0])

    def commit(self, state: dict[str, Any], entry: dict[str, Any]) -> LedgerEntry:
        """Make ``state`` current and append ``entry`` to the ledger, in one transaction."""
        fields = dict(entry)
        fields.setdefault("request_id", uuid.uuid4().hex)
        now = datetime.now(timezone.utc)
        fields.setdefault("created_at", now.isoformat(timespec="microseconds"))
        fields.setdefault("expunge_version", __version__)
        fields["ids"] = [int(i) for i in fields["ids"]]
        fields["n_ids"] = len(fields["ids"])
        fields["submodels_retrained"] = [int(k) for k in fields.get("submodels_retrained", [])]
        fields["purged"] = list(fields.get("purged", []))
        fields.setdefault("details", {})
        fields["seconds"] = float(fields["seconds"])
        encoded = {k: json.dumps(v, sort_keys=True) if k in (
            "ids", "submodels_retrained", "purged", "details") else v for k, v in fields.items()}
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT MAX(seq), (SELECT hash FROM ledger ORDER BY seq DESC "
                                   "LIMIT 1) FROM ledger").fetchone()
            seq = (row[0] or 0) + 1
            prev = row[1] or "0" * 64
            encoded["seq"] = seq
            encoded["prev_hash"] = prev
            encoded["hash"] = chain_hash(prev, encoded)
            names = ", ".join(encoded)
            marks = ", ".join("?" for _ in encoded)
            self._db.execute(f"INSERT INTO ledger ({names}) VALUES ({marks})",
                             list(encoded.values()))
            self._db.execute(
                "INSERT OR REPLACE INTO state (name, value) VALUES ('current', ?)",
                (json.dumps(state, sort_keys=True),),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO state (name, value) VALUES ('ledger_head', ?)",
                (json.dumps(encoded["hash"]),),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return self.ledger[seq]

    def collect_garbage(self, live: set[str]) -> list[str]:
        """Delete every blob not in ``live``; return their names, sorted."""
        dead = sorted(self.list_blobs() - live)
        for name in dead:
            self.delete_blob(name)
        return dead

    def close(self) -> None:
        self._db.close()


class MemoryStore(Store):
    """Everything in this process's memory (``store=None``)."""

    def __init__(self) -> None:
        super().__init__(sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False))
        self._blobs: dict[str, tuple[Tensors, Metadata]] = {}
        self._manifest: dict[str, Any] | None = None

    def write_blob(self, name: str, tensors: Tensors, metadata: Metadata | None = None,
                   *, shared: bool = False) -> None:
        if self.write_hook is not None:
            self.write_hook("write", name)
        if name not in self._blobs:
            kept = {k: v.detach() for k, v in tensors.items()} if shared else _prepare(tensors)
            self._blobs[name] = (kept, dict(metadata or {}))

    def read_blob(self, name: str) -> tuple[Tensors, Metadata]:
        try:
            tensors, metadata = self._blobs[name]
        except KeyError:
            raise StoreError(f"blob {name!r} is missing from the in-memory store") from None
        # clones: optimizer.load_state_dict keeps same-dtype tensors by reference and would
        # otherwise mutate the stored checkpoint in place
        return {k: v.clone() for k, v in tensors.items()}, dict(metadata)

    def has_blob(self, name: str) -> bool:
        return name in self._blobs

    def list_blobs(self) -> set[str]:
        return set(self._blobs)

    def delete_blob(self, name: str) -> None:
        self._blobs.pop(name, None)

    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for tensors, _ in self._blobs.values() for t in tensors.values())

    def read_manifest(self) -> dict[str, Any] | None:
        return self._manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self._manifest = json.loads(json.dumps(manifest))


class DirectoryStore(Store):
    """A store directory on disk (see :mod:`expunge.store._layout`)."""

    def __init__(self, root: str | Path, *, create: bool) -> None:
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not layout.manifest_path(self.root).is_file():
            raise StoreError(
                f"{str(self.root)!r} is not an expunge store (no {layout.MANIFEST}). "
                "Create one with fit(..., store=PATH) or `expunge fit --store PATH`."
            )
        connection = sqlite3.connect(
            layout.database_path(self.root), isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        super().__init__(connection)
        self._remove_temp_files()

    @property
    def location(self) -> str:
        return str(self.root)

    def _remove_temp_files(self) -> None:
        base = layout.blobs_dir(self.root)
        if base.is_dir():
            for tmp in base.rglob("*" + layout.TEMP_SUFFIX):
                tmp.unlink(missing_ok=True)

    def write_blob(self, name: str, tensors: Tensors, metadata: Metadata | None = None,
                   *, shared: bool = False) -> None:
        if self.write_hook is not None:
            self.write_hook("write", name)
        path = layout.blob_path(self.root, name)
        if path.exists():
            return
        prepared = _prepare(tensors)
        atomic_write(path, lambda tmp: save_file(prepared, str(tmp), metadata=dict(metadata or {})))

    def read_blob(self, name: str) -> tuple[Tensors, Metadata]:
        path = layout.blob_path(self.root, name)
        if not path.is_file():
            raise StoreError(
                f"The store {str(self.root)!r} is missing {path.name} ({name}); it was deleted "
                "outside expunge. Refit into a new store."
            )
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        return tensors, metadata

    def has_blob(self, name: str) -> bool:
        return layout.blob_path(self.root, name).is_file()

    def list_blobs(self) -> set[str]:
        base = layout.blobs_dir(self.root)
        if not base.is_dir():
            return set()
        return {layout.blob_name(self.root, p) for p in base.rglob("*" + layout.BLOB_SUFFIX)}

    def delete_blob(self, name: str) -> None:
        if self.write_hook is not None:
            self.write_hook("delete", name)
        path = layout.blob_path(self.root, name)
        path.unlink(missing_ok=True)
        # remove emptied folders so a purged sub-model leaves nothing behind
        parent = path.parent
        base = layout.blobs_dir(self.root)
        while parent != base and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def read_manifest(self) -> dict[str, Any] | None:
        path = layout.manifest_path(self.root)
        if not path.is_file():
            return None
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise StoreError(f"{path} is not a readable manifest: {err}") from err

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_bytes(
            layout.manifest_path(self.root),
            json.dumps(manifest, indent=2, sort_keys=True).encode(),
        )


def open_store(location: str | Path | None, *, create: bool) -> Store:
    """A :class:`MemoryStore` for ``None``, else a :class:`DirectoryStore` at ``location``."""
    if location is None:
        return MemoryStore()
    return DirectoryStore(location, create=create)

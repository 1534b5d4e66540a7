"""A store: blobs of tensors plus an SQLite database holding committed state and the ledger.

Two backends share one interface: :class:`~expunge.store.DirectoryStore` (``store="path"``)
persists everything; :class:`~expunge.store.MemoryStore` (``store=None``) keeps blobs in a
dict and the database in SQLite's ``:memory:``, so the ledger and its checks work the same.

Commit protocol (what makes a request all-or-nothing), run under the store's write lock
(:mod:`expunge.store._lock`), so that exactly one process changes a store at a time:

1. new blobs are written atomically under new content-addressed names (live ones are never
   overwritten); the writer knows their keyed digests;
2. ``commit`` checks, inside the transaction, that the committed head is still the one
   the request was planned on; then writes the new state (with the keyed digest of every
   live blob and of the manifest) and the ledger row (with the state's SHA-256) in **one**
   SQLite transaction (WAL, ``synchronous=FULL``): this is the moment the request happens;
3. blobs no longer referenced by the state are deleted (the purge), and listed in the row;
   the purge takes the read lock exclusively, so that no reader loses files mid-load.
   Before it, right after the transaction and under the read lock taken before it, the
   staged in-place rewrites the state records are applied (:mod:`expunge.store._rewrite`):
   a blob that loses a few rows becomes its successor by overwriting those rows' bytes and
   a rename, not by a copy of the rest.

A crash before step 2 leaves unreferenced new blobs; a crash after it leaves stale old
ones. Either way :meth:`Store.recover` (run by ``expunge.open`` when no writer holds the
lock, and by every ``fit``) removes what the committed state does not name.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from expunge._version import __version__
from expunge.exceptions import (
    ConcurrentModificationError,
    LedgerIntegrityError,
    StoreError,
    StoreIntegrityError,
    StoreLockedError,
    UnfinishedRewriteError,
)
from expunge.store._blobs import Metadata, Tensors
from expunge.store._fs import sqlite_errors
from expunge.store._integrity import StoreKey, head_mac, ledger_genesis, text_digest
from expunge.store._ledger import Ledger, LedgerEntry, chain_hash
from expunge.store._lock import FileLock, ThreadLock, WaitNotice
from expunge.store._rewrite import Patch, Rewrite

#: ``plan(tensors, metadata, regions)`` of :meth:`Store.rewrite_blob`: the patches that
#: turn the source blob into the target, or ``None`` to decline (write a new blob instead)
RewritePlan = Callable[[Tensors, Metadata, dict[str, tuple[int, int]]], list[Patch] | None]

#: blobs under this prefix are caches (e.g. the evaluation's retrained reference): recovery
#: keeps them, but every ``forget`` purges them all, since they may carry the forgotten ids
CACHE_PREFIX = "cache/"


@dataclass(frozen=True)
class Head:
    """Where a store's history stands: the last entry's ``seq`` and ``hash`` (0, "": none)."""

    seq: int = 0
    hash: str = ""

    def describe(self) -> str:
        return "no committed request" if self.seq == 0 else f"request #{self.seq}"


class Store(ABC):
    """Blobs + committed state + ledger + locks + key. Use :func:`open_store` to get one."""

    _write_lock: FileLock | ThreadLock
    _read_lock: FileLock | ThreadLock

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._db.row_factory = sqlite3.Row
        self.ledger = Ledger(self._db, self._genesis)
        #: every blob written or deleted, in order; tests use it to inject crashes
        self.write_hook: Any = None
        #: keyed digest of every blob this handle knows: committed ones and its own writes
        self._known: dict[str, str] = {}
        #: the head of the state this handle last read or committed
        self.loaded_head = Head()
        self._key: StoreKey | None = None
        self._store_id: str | None = None
        #: in-place rewrites staged for the next commit, by target
        self._staged: dict[str, Rewrite] = {}
        #: rewrites the last commit recorded, applied by the next purge
        self._to_apply: list[Rewrite] = []

    # ------------------------------------------------------------------ blobs
    @abstractmethod
    def write_blob(self, name: str, tensors: Tensors, metadata: Metadata | None = None,
                   *, shared: bool = False, compress: bool = False) -> None:
        """Store ``tensors`` under ``name`` atomically (a no-op if it exists already).

        ``shared=True`` promises the tensors will never be mutated, letting the memory
        backend keep references instead of copies (used for the training data).
        ``compress=True`` stores the bytes in a zstd frame (a file store; the memory
        backend keeps tensors): for data that compresses, such as images, it writes, syncs
        and keys several times fewer bytes than it costs to compress them. A blob
        under ``cache/`` is written only while no other writer holds the store and this
        handle is at the committed head (a cache must never outlive a purge); otherwise the
        write is skipped.
        """

    def write_blobs(self, blobs: Sequence[tuple[str, Tensors, Metadata | None]]) -> None:
        """:meth:`write_blob` for each ``(name, tensors, metadata)``, as one batch (a file
        store syncs each folder once, not once per blob); each blob is atomic, the batch
        is not (a crash may leave some written: orphans until a commit names them)."""
        for name, tensors, metadata in blobs:
            self.write_blob(name, tensors, metadata)

    @abstractmethod
    def read_blob(self, name: str) -> tuple[Tensors, Metadata]:
        """The tensors and metadata of blob ``name``; a committed blob is checked against its
        digest first (:class:`StoreIntegrityError` if it changed)."""

    def rewrite_blob(self, source: str, target: str, plan: RewritePlan) -> bool:
        """Stage blob ``target`` as committed blob ``source`` with byte ranges overwritten
        in place (:mod:`expunge.store._rewrite`); whether it was staged.

        ``plan`` gets the source's tensors, metadata and byte regions (checked against its
        committed digest first) and returns the patches, or ``None`` to decline. The
        target's digest is known at once; its file appears right after the commit that
        names it (:meth:`commit` applies the patches and renames, holding the read lock;
        :meth:`recover` finishes it after a crash). Nothing changes on disk before the
        commit. A backend that cannot (memory; a compressed source) declines: the caller
        writes the target with :meth:`write_blob`.
        """
        return False

    def _apply_rewrites_now(self, rewrites: list[Rewrite]) -> None:  # pragma: no cover
        raise NotImplementedError  # never staged: rewrite_blob declines

    @abstractmethod
    def has_blob(self, name: str) -> bool: ...

    @abstractmethod
    def list_blobs(self) -> set[str]: ...

    @abstractmethod
    def delete_blob(self, name: str) -> None: ...

    @abstractmethod
    def blob_digest(self, name: str) -> str:
        """The keyed digest of blob ``name`` as it is now (re-hashed from its content)."""

    @abstractmethod
    def describe_file(self, name: str) -> str:
        """How messages name a blob (or ``"manifest"``): its path, or its name in memory."""

    @abstractmethod
    def size_bytes(self) -> int:
        """Bytes used by blobs and the database."""

    def blob_size(self, name: str) -> int:
        """Bytes blob ``name`` takes in this store (0 if absent); counted in
        :meth:`size_bytes`. Default: its tensors' bytes (a store with files says their size)."""
        if not self.has_blob(name):
            return 0
        tensors, _ = self.read_blob(name)
        return sum(t.numel() * t.element_size() for t in tensors.values())

    @property
    def location(self) -> str:
        return "memory"

    def check_blob(self, name: str, expected: str | None = None) -> None:
        """Raise :class:`StoreIntegrityError` unless blob ``name`` has its committed digest."""
        expected = expected if expected is not None else self._known.get(name)
        if expected is None:
            return
        if not self.has_blob(name):
            raise StoreIntegrityError(
                f"{self.describe_file(name)} is missing: it was deleted outside expunge. "
                "Restore it from a backup, or refit into a new store."
            )
        if self.blob_digest(name) != expected:
            raise StoreIntegrityError(
                f"{self.describe_file(name)} does not match the digest committed for it: it "
                "was modified, truncated or replaced outside expunge. Restore it from a "
                "backup, or refit into a new store."
            )

    def _cache_write_allowed(self) -> bool:
        """A cache blob may be written: no other writer now, and this handle is current."""
        if self._write_lock.held:
            return True
        try:
            with self._write_lock.hold(timeout=0, operation="cache write"):
                return self.committed_head() == self.loaded_head
        except (StoreError, StoreLockedError):
            return False

    # ------------------------------------------------------------ manifest + key
    @abstractmethod
    def read_manifest(self) -> dict[str, Any] | None: ...

    @abstractmethod
    def write_manifest(self, manifest: dict[str, Any]) -> None: ...

    @abstractmethod
    def manifest_digest(self) -> str | None:
        """The keyed digest of the manifest as stored now (None if there is none)."""

    @property
    def key(self) -> StoreKey:
        """This store's secret, for keyed digests (:class:`StoreKey`)."""
        if self._key is None:
            self._key = self._load_key()
        return self._key

    @abstractmethod
    def _load_key(self) -> StoreKey: ...

    @abstractmethod
    def ensure_key(self) -> None:
        """Create the store's key if it has none (under the write lock, at the first fit)."""

    def keyed_digest(self, purpose: str, *chunks: bytes | memoryview | str) -> str:
        """HMAC-SHA256 under this store's key, bound to ``purpose`` (see :class:`StoreKey`)."""
        return self.key.digest(purpose, *chunks)

    @property
    def store_id(self) -> str:
        if self._store_id is None:
            manifest = self.read_manifest() or {}
            store_id = manifest.get("store_id")
            if not isinstance(store_id, str) or not store_id:
                raise StoreIntegrityError(
                    f"{self.describe_file('manifest')} has no store_id: it was edited outside "
                    "expunge."
                )
            self._store_id = store_id
        return self._store_id

    def _genesis(self) -> str:
        return ledger_genesis(self.store_id)

    # ------------------------------------------------------------------- locks
    def writing(self, *, timeout: float | None = None, on_wait: WaitNotice | None = None,
                operation: str = "write") -> contextlib.AbstractContextManager[bool]:
        """Hold the store's write lock (exclusive between processes; re-entrant).

        Raises:
            StoreLockedError: another process held it for more than ``timeout`` seconds.
        """
        return self._write_lock.hold(timeout=timeout, on_wait=on_wait, operation=operation)

    @property
    def holds_write_lock(self) -> bool:
        return self._write_lock.held

    def _require_write_lock(self, action: str) -> None:
        if not self._write_lock.held:
            raise StoreError(f"{action} needs the store's write lock (use store.writing()).")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read a consistent committed state: a shared read lock (no purge runs meanwhile)
        and one SQLite read transaction (no commit becomes visible meanwhile)."""
        if self._db.in_transaction:
            yield
            return
        with self._read_lock.hold(shared=True):
            with self._sqlite("read"):
                self._db.execute("BEGIN")
            try:
                yield
            finally:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("COMMIT")

    def _sqlite(self, action: str) -> contextlib.AbstractContextManager[None]:
        return sqlite_errors(f"{action} the store database of", self.location)

    # ---------------------------------------------------------- state + ledger
    def read_state_text(self) -> str | None:
        with self._sqlite("read"):
            row = self._db.execute("SELECT value FROM state WHERE name = 'current'").fetchone()
        return None if row is None else str(row[0])

    def read_anchor(self) -> dict[str, Any] | None:
        with self._sqlite("read"):
            return self.ledger.anchor()

    def committed_head(self) -> Head:
        """The head anchored with the committed state (``Head()`` before the first fit)."""
        anchor = self.read_anchor()
        if anchor is None:
            return Head()
        return Head(int(anchor.get("seq", 0)), str(anchor.get("hash", "")))

    def read_state(self) -> dict[str, Any] | None:
        """The committed state; this handle then checks committed blobs against it on read."""
        text = self.read_state_text()
        if text is None:
            return None
        try:
            state = json.loads(text)
            digests = dict(state["blobs"])
        except (ValueError, KeyError, TypeError) as err:
            raise StoreIntegrityError(
                f"The committed state of the store {self.location!r} is malformed ({err}): the "
                "database was edited outside expunge."
            ) from None
        self._known.update(digests)
        self.loaded_head = self.committed_head()
        return dict(state)

    def commit(self, state: dict[str, Any], entry: dict[str, Any], *, live: set[str],
               expected: Head) -> LedgerEntry:
        """Make ``state`` current and append ``entry`` to the ledger, in one transaction.

        Adds the keyed digest of every ``live`` blob and of the manifest to the state, and
        the state's SHA-256 to the entry. Refuses (changing nothing) unless this handle holds
        the write lock and the committed head is still ``expected``.

        Raises:
            ConcurrentModificationError: another writer committed since ``expected``.
        """
        self._require_write_lock("commit")
        digests = {name: self._digest_for_commit(name) for name in sorted(live)}
        full_state = {**state, "blobs": digests, "manifest": self.manifest_digest()}
        fields = self._entry_fields(entry)
        # staged rewrites of this state's blobs (others are a failed request's leftovers)
        rewrites = [self._staged[name] for name in sorted(live) if name in self._staged]
        if rewrites:
            full_state["rewrites"] = [r.to_json() for r in rewrites]
        # a reader must never see this state before its rewritten blobs exist: hold the
        # read lock exclusively from before the commit until they are applied
        with (self._read_lock.hold(on_wait=None) if rewrites else contextlib.nullcontext()):
            committed = self._commit_transaction(full_state, fields, expected)
            self._staged.clear()
            self._to_apply = rewrites
            # the request is committed whatever happens now: a failed rewrite stays pending
            # (the caller installs the new state, and collect_garbage tries once more)
            with contextlib.suppress(UnfinishedRewriteError):
                self._apply_rewrites()
        return committed

    def pending_rewrite_sources(self) -> set[str]:
        """The files a committed request's pending rewrite will overwrite and rename (none,
        unless a disk error interrupted it: :meth:`finish_rewrites`)."""
        return {rewrite.source for rewrite in self._to_apply}

    def finish_rewrites(self) -> None:
        """Apply a committed request's pending in-place rewrites (under the write lock).

        Raises:
            UnfinishedRewriteError: they failed again (nothing else changed).
        """
        self._require_write_lock("finishing a rewrite")
        if self._to_apply:
            with self._read_lock.hold(on_wait=None):
                self._apply_rewrites()

    def _commit_transaction(self, full_state: dict[str, Any], fields: dict[str, Any],
                            expected: Head) -> LedgerEntry:
        state_text = json.dumps(full_state, sort_keys=True)
        fields["state_digest"] = text_digest(state_text)
        digests = full_state["blobs"]
        with self._sqlite("commit to"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq, prev = self._check_head(expected)
                fields["seq"] = seq
                fields["prev_hash"] = prev
                fields["hash"] = chain_hash(prev, fields)
                names = ", ".join(fields)
                marks = ", ".join("?" for _ in fields)
                self._db.execute(f"INSERT INTO ledger ({names}) VALUES ({marks})",
                                 list(fields.values()))
                anchor = {"seq": seq, "hash": fields["hash"],
                          "mac": head_mac(self.key, seq, fields["hash"], fields["state_digest"])}
                self._db.executemany(
                    "INSERT OR REPLACE INTO state (name, value) VALUES (?, ?)",
                    [("current", state_text), ("ledger_head", json.dumps(anchor))])
                self._db.execute("COMMIT")
            except BaseException:
                # a failed COMMIT (disk full) may already have rolled back
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        self._known.update(digests)
        self.loaded_head = Head(seq, fields["hash"])
        return self.ledger[seq]

    def _apply_rewrites(self) -> None:
        """Apply the committed rewrites whose targets are not there yet (the caller holds
        the read lock exclusively)."""
        rewrites, self._to_apply = self._to_apply, []
        if not rewrites:
            return
        if self.write_hook is not None:
            for rewrite in rewrites:
                self.write_hook("rewrite", rewrite.target)
        try:
            self._apply_rewrites_now(rewrites)
        except OSError as err:  # a disk error: the work stays pending, the request stands
            self._to_apply = rewrites
            head = self.committed_head()
            cause = err.__cause__ if isinstance(err.__cause__, OSError) else err
            reason = cause.strerror or str(cause)
            raise UnfinishedRewriteError(
                f"Request #{head.seq} of the store {self.location!r} is committed (it is in "
                f"the ledger, this handle serves its model, and receipt({head.seq}) signs "
                f"it), but overwriting the forgotten "
                f"rows of {len(rewrites)} training-data file(s) in place failed ({reason}). Until "
                "that is finished, the old files, which still hold the forgotten rows, stay "
                "on disk. Fix the cause (free space, permissions), then run the next request "
                f"on this handle or expunge.open({self.location!r}): either finishes it."
            ) from err
        for rewrite in rewrites:
            self._known.pop(rewrite.source, None)

    @staticmethod
    def _entry_fields(entry: dict[str, Any]) -> dict[str, Any]:
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
        return {k: json.dumps(v, sort_keys=True) if k in (
            "ids", "submodels_retrained", "purged", "details") else v for k, v in fields.items()}

    def _check_head(self, expected: Head) -> tuple[int, str]:
        """Inside the commit's transaction: the next ``seq`` and ``prev_hash``."""
        head = self.committed_head()
        if head != expected:
            raise ConcurrentModificationError(
                f"The store {self.location!r} changed while this request was prepared: it was "
                f"planned on {expected.describe()}, but {head.describe()} is committed now (a "
                "writer bypassed the store lock). Nothing was committed; retry the request."
            )
        row = self._db.execute("SELECT MAX(seq), (SELECT hash FROM ledger ORDER BY seq DESC "
                               "LIMIT 1) FROM ledger").fetchone()
        last_seq, last_hash = int(row[0] or 0), row[1]
        if last_seq != head.seq or (head.seq and last_hash != head.hash):
            raise LedgerIntegrityError(
                f"The ledger of {self.location!r} does not end at the committed head "
                f"({last_seq} entries, head #{head.seq}): it was edited outside expunge. "
                "Nothing was committed; run verify() to see what changed."
            )
        return head.seq + 1, (str(last_hash) if head.seq else self._genesis())

    def _digest_for_commit(self, name: str) -> str:
        digest = self._known.get(name)
        if digest is None:  # a blob a worker wrote, or one reused from an interrupted run
            if not self.has_blob(name):
                raise StoreError(
                    f"Cannot commit: {self.describe_file(name)} is missing. Nothing was "
                    "committed; retry the request."
                )
            digest = self._known[name] = self.blob_digest(name)
        return digest

    # --------------------------------------------------------------- cleanup
    def collect_garbage(self, live: set[str]) -> list[str]:
        """Delete every blob not in ``live`` (under the write lock); return their names."""
        self._require_write_lock("deleting blobs")
        if self._to_apply:  # after a crash (recover): the committed state names them
            with self._read_lock.hold(on_wait=None):
                self._apply_rewrites()
        dead = sorted(self.list_blobs() - live)
        if dead:
            # wait for readers still loading the state these blobs belonged to
            with self._read_lock.hold(on_wait=None):
                for name in dead:
                    self.delete_blob(name)
                    self._known.pop(name, None)
        return dead

    def recover(self) -> list[str]:
        """Finish or undo an interrupted request (under the write lock): delete temp files
        and every blob the committed state does not name (caches are kept). Before the first
        fit commits, blobs are kept: fitting again reuses them."""
        self._require_write_lock("recovery")
        self._remove_temp_files()
        state = self.read_state()
        if state is None:
            return []
        live = set(state["blobs"]) | {b for b in self.list_blobs() if b.startswith(CACHE_PREFIX)}
        # an interrupted purge: finish the committed rewrites whose target is not there yet
        self._to_apply = [r for r in map(Rewrite.from_json, state.get("rewrites", []))
                          if r.target in live and not self.has_blob(r.target)
                          and self.has_blob(r.source)]
        return self.collect_garbage(live)

    def try_recover(self) -> bool:
        """:meth:`recover` if the write lock is free right now (never waits); whether it ran."""
        try:
            with self.writing(timeout=0, operation="recovery") as taken:
                if taken:
                    self.recover()
                return bool(taken)
        except (StoreError, StoreLockedError):  # busy, or no write access: readers do without
            return False

    def _remove_temp_files(self) -> None:
        """Delete temp files of interrupted writes (only the write-lock holder may)."""

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


#: signature of the hook tests use to inject crashes: (action, blob name)
WriteHook = Callable[[str, str], None]

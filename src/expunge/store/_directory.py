"""A store directory on disk (layout in :mod:`expunge.store._layout`).

Every OS, SQLite and safetensors error is re-raised as :class:`StoreError` (or
:class:`StoreIntegrityError` for content that does not match its digest) naming the file
and the fix. The database runs in WAL mode with ``synchronous=FULL`` and
``secure_delete=ON`` (deleted ledger pages and old states are zeroed, whatever SQLite's
build default). A store without write access opens read-only: the ledger, ``verify`` and
predictions work; requests fail cleanly at the write lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expunge.exceptions import StoreError, StoreIntegrityError
from expunge.store import _layout as layout
from expunge.store._atomic import atomic_write_bytes, atomic_write_parts
from expunge.store._blobs import ZSTD_MAGIC, Part, decode, encode_parts, read_file
from expunge.store._fs import file_mode, os_errors, sqlite_errors
from expunge.store._integrity import CHUNK, StoreKey
from expunge.store._ledger import SCHEMA
from expunge.store._lock import FileLock
from expunge.store._rewrite import (
    Rewrite,
    apply_to_files,
    check_patches,
    patched_parts,
    tensor_regions,
)
from expunge.store._store import CACHE_PREFIX, Metadata, RewritePlan, Store, Tensors


class DirectoryStore(Store):
    """A store directory on disk. ``create=True`` makes the folder (``fit``); otherwise it
    must already hold a manifest (``expunge.open``)."""

    def __init__(self, root: str | Path, *, create: bool) -> None:
        root = self.root = Path(root)
        if str(root).strip() in ("", "."):
            raise StoreError(
                f"store={str(root)!r} is not a store folder: pass a directory path such as "
                "'runs/sisa' (or store=None to keep everything in memory)."
            )
        if root.exists() and not root.is_dir():
            raise StoreError(
                f"{str(root)!r} is a file, not a store folder. Choose a directory path (it is "
                "created if missing)."
            )
        if create:
            with os_errors("create the store folder", root):
                root.mkdir(parents=True, exist_ok=True)
        elif not layout.manifest_path(root).is_file():
            raise StoreError(
                f"{str(root)!r} is not an expunge store (no {layout.MANIFEST}). "
                "Create one with fit(..., store=PATH) or `expunge fit --store PATH`."
            )
        self.writable = os.access(root, os.W_OK)
        #: blob -> (file stamp, digest) of files this handle hashed itself (not racily)
        self._hashed: dict[str, tuple[tuple[int, int, int, int], str]] = {}
        super().__init__(self._connect(create))
        self._write_lock = FileLock(root / layout.WRITE_LOCK,
                                    f"the write lock of store {str(root)!r}", record_holder=True)
        self._read_lock = FileLock(root / layout.READ_LOCK,
                                   f"the read lock of store {str(root)!r}")

    def _connect(self, create: bool) -> sqlite3.Connection:
        path = layout.database_path(self.root)
        with sqlite_errors("open the store database", path):
            if create and not path.exists():
                # created here, with the umask's mode: SQLite gives its -wal and -shm files
                # the database file's mode, so a group can share all three
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode()))
            if self.writable and os.access(path, os.W_OK):
                connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")
                connection.execute("PRAGMA secure_delete=ON")
                connection.execute("PRAGMA busy_timeout=30000")
                if create:
                    connection.executescript(SCHEMA)
            else:
                connection = self._connect_read_only(path)
                self.writable = False
            tables = {row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"ledger", "state"} <= tables:
                connection.close()
                raise StoreError(
                    f"{str(path)!r} is an SQLite database without expunge's tables: this is not "
                    "an expunge store (or its database was replaced)."
                )
            columns = {row[1] for row in connection.execute("PRAGMA table_info(ledger)")}
            if "state_digest" not in columns:
                connection.close()
                raise StoreError(
                    f"{str(path)!r} holds a ledger of an older store format (no state digests): "
                    "open it with the expunge version that wrote it, or refit into a new store."
                )
        return connection

    @staticmethod
    def _connect_read_only(path: Path) -> sqlite3.Connection:
        uri = "file:" + urllib.parse.quote(str(path.resolve()))
        connection = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False)
        try:
            connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            # a WAL database in a folder we cannot write to: no -shm to share, so read it as
            # an immutable file (nobody can be writing through this user anyway)
            connection.close()
            connection = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None,
                                         check_same_thread=False)
        connection.execute("PRAGMA query_only=ON")
        return connection

    @property
    def location(self) -> str:
        return str(self.root)

    def describe_file(self, name: str) -> str:
        if name == "manifest":
            return str(layout.manifest_path(self.root))
        return str(layout.blob_path(self.root, name))

    # ------------------------------------------------------------------ key
    def _load_key(self) -> StoreKey:
        path = layout.key_path(self.root)
        if not path.is_file():
            raise StoreIntegrityError(
                f"The store key {str(path)!r} is missing: it was deleted or the store was "
                "copied without it. Restore it (it is as sensitive as the data), or refit."
            )
        with os_errors("read the store key", path):
            secret = path.read_bytes()
        try:
            return StoreKey(secret)
        except ValueError:
            raise StoreIntegrityError(
                f"The store key {str(path)!r} is damaged ({len(secret)} bytes, expected 32)."
            ) from None

    def ensure_key(self) -> None:
        self._require_write_lock("creating the store key")
        path = layout.key_path(self.root)
        if not path.exists():
            with os_errors("write the store key", path):
                atomic_write_bytes(path, StoreKey.generate().to_bytes())
        self._key = None

    # ---------------------------------------------------------------- blobs
    def write_blob(self, name: str, tensors: Tensors, metadata: Metadata | None = None,
                   *, shared: bool = False, compress: bool = False) -> None:
        self._write_batch([(name, tensors, metadata)], compress=compress)

    def write_blobs(self, blobs: Sequence[tuple[str, Tensors, Metadata | None]]) -> None:
        self._write_batch(blobs, compress=False)

    def _write_batch(self, blobs: Sequence[tuple[str, Tensors, Metadata | None]], *,
                     compress: bool) -> None:
        pending: dict[Path, tuple[str, list[Part], str]] = {}
        for name, tensors, metadata in blobs:
            if name.startswith(CACHE_PREFIX) and not self._cache_write_allowed():
                continue
            if self.write_hook is not None:
                self.write_hook("write", name)
            self._staged.pop(name, None)  # a failed request's staged rewrite is superseded
            path = layout.blob_path(self.root, name)
            if path.exists() or path in pending:
                continue
            parts = encode_parts(tensors, metadata, compress=compress)
            pending[path] = (name, parts, self.key.digest("blob", *parts))
        if not pending:
            return
        with os_errors("write", next(iter(pending))):
            atomic_write_parts([(path, parts) for path, (_, parts, _) in pending.items()])
        for name, _, digest in pending.values():
            # its stamp is racy now (just written): hashed again before a rewrite trusts it
            self._known[name] = digest
            self._hashed.pop(name, None)

    def read_blob(self, name: str) -> tuple[Tensors, Metadata]:
        path = layout.blob_path(self.root, name)
        return decode(self._checked_bytes(name), str(path))

    def _checked_bytes(self, name: str, *, trust_unchanged: bool = False) -> bytes:
        """The bytes of blob ``name``, checked against its committed digest.

        ``trust_unchanged``: skip re-hashing a file this handle has hashed itself and whose
        inode, size, modification and change times are still those it recorded then (the
        change time cannot be set from user space; the read path and ``verify`` always
        re-hash)."""
        path = layout.blob_path(self.root, name)
        expected = self._known.get(name)
        stamp = _stamp(path)
        data = read_file(path, name, self.root, committed=expected is not None)
        if trust_unchanged and expected is not None and stamp is not None \
                and self._hashed.get(name) == (stamp, expected):
            return data  # (a stamp is only recorded when it is not racy: see _record)
        digest = self.key.digest("blob", data)
        if expected is not None and digest != expected:
            raise StoreIntegrityError(
                f"{path} does not match the digest committed for it: it was modified, "
                "truncated or replaced outside expunge, so nothing is trained from it. "
                "Restore it from a backup, or refit into a new store."
            )
        self._known[name] = digest
        self._record(name, stamp, digest)
        return data

    def _record(self, name: str, stamp: tuple[int, int, int, int] | None, digest: str) -> None:
        """Remember that blob ``name`` with this file stamp has this digest, unless the
        stamp is *racy*: a file changed less than :data:`RACY_NS` before now could be
        changed again within the clock's granularity without its times moving (git's
        racy-clean rule), so it is hashed again next time."""
        self._hashed.pop(name, None)
        if stamp is not None and time.time_ns() - stamp[3] > RACY_NS:
            self._hashed[name] = (stamp, digest)

    def rewrite_blob(self, source: str, target: str, plan: RewritePlan) -> bool:
        if source not in self._known or target.startswith(CACHE_PREFIX) or \
                self.has_blob(target) or not self.has_blob(source):
            return False
        # the handle hashed the bucket when it loaded the data: re-hashing an unchanged
        # file would cost a full HMAC pass per touched bucket and request
        data = self._checked_bytes(source, trust_unchanged=True)
        if data[:4] == ZSTD_MAGIC:  # compressed: its rows have no fixed place
            return False
        where = str(layout.blob_path(self.root, source))
        tensors, metadata = decode(data, where)
        patches = plan(tensors, metadata, tensor_regions(data))
        if patches is None:
            return False
        staged = tuple(sorted(patches))
        check_patches(staged, len(data))
        self._known[target] = self.key.digest("blob", *patched_parts(data, staged))
        self._staged[target] = Rewrite(source, target, staged)
        return True

    def _apply_rewrites_now(self, rewrites: list[Rewrite]) -> None:
        # a target already there is done; its source is dead and purged
        moves = [(layout.blob_path(self.root, r.source), layout.blob_path(self.root, r.target),
                  r.patches) for r in rewrites if not self.has_blob(r.target)]
        with os_errors("rewrite", layout.blobs_dir(self.root)):
            apply_to_files(moves)
        for rewrite in rewrites:  # the target's stamp is racy now: hashed again when read
            self._hashed.pop(rewrite.source, None)
            self._hashed.pop(rewrite.target, None)

    def blob_digest(self, name: str) -> str:
        path = layout.blob_path(self.root, name)
        h = self.key.hasher("blob")
        try:
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    h.update(chunk)
        except FileNotFoundError:
            raise StoreIntegrityError(
                f"{path} is missing: it was deleted outside expunge. Restore it from a backup, "
                "or refit into a new store."
            ) from None
        except OSError as err:
            with os_errors("read", path):
                raise err
        return h.hexdigest()

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
        self._hashed.pop(name, None)
        path = layout.blob_path(self.root, name)
        with os_errors("delete", path):
            path.unlink(missing_ok=True)
            # remove emptied folders so a purged sub-model leaves nothing behind
            parent = path.parent
            base = layout.blobs_dir(self.root)
            while parent != base and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def blob_size(self, name: str) -> int:
        path = layout.blob_path(self.root, name)
        return path.stat().st_size if path.is_file() else 0

    def _remove_temp_files(self) -> None:
        for folder, pattern in ((layout.blobs_dir(self.root), "*" + layout.TEMP_SUFFIX),
                                (self.root, ".*" + layout.TEMP_SUFFIX)):
            if folder.is_dir():
                for tmp in (folder.rglob(pattern) if folder != self.root
                            else folder.glob(pattern)):
                    with os_errors("delete", tmp):
                        tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------- manifest
    def _manifest_bytes(self) -> bytes | None:
        path = layout.manifest_path(self.root)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            with os_errors("read", path):
                raise err
        return None  # pragma: no cover

    def read_manifest(self) -> dict[str, Any] | None:
        data = self._manifest_bytes()
        if data is None:
            return None
        path = layout.manifest_path(self.root)
        try:
            manifest = json.loads(data)
        except ValueError as err:
            raise StoreError(f"{path} is not a readable manifest ({err}).") from None
        if not isinstance(manifest, dict):
            raise StoreError(f"{path} is not a readable manifest (not a JSON object).")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        path = layout.manifest_path(self.root)
        with os_errors("write", path):
            atomic_write_bytes(path, json.dumps(manifest, indent=2, sort_keys=True).encode())
        self._store_id = None

    def manifest_digest(self) -> str | None:
        data = self._manifest_bytes()
        return None if data is None else self.key.digest("manifest", data)


#: a file stamp younger than this is not trusted (timestamps move in clock ticks of 1-10 ms)
RACY_NS = 50_000_000


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    """``(inode, size, mtime_ns, ctime_ns)`` of a file, or ``None`` if it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

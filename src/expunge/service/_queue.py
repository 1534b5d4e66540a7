"""The service's durable request queue (SQLite, stdlib only).

A request is acknowledged only after its row is committed (WAL, ``synchronous=FULL``), so
an acknowledged request survives a crash of the server or the machine. Each row has a
unique ``request_key`` (the client's idempotency key, or one the server makes): submitting
the same key again returns the existing request instead of queueing a second one.

Life of a row: ``queued`` → ``running`` (claimed by the processor, in one transaction for
a whole batch) → ``done`` (with the ledger ``seq`` that carried it and the report) or
``failed`` (with an HTTP status and the reason). The ledger entry of a batch lists its
request keys (``details["service_requests"]``), which is how :meth:`RequestQueue.recover`
tells, after a crash, a running request that was committed (→ ``done``) from one that was
not (→ ``queued`` again): no acknowledged request is lost and none is applied twice.

Subject keys never enter the queue: only their keyed hash and the commitment that the
receipt will carry.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_key TEXT NOT NULL UNIQUE,
    ids TEXT,
    subject_hash TEXT,
    subject_commitment TEXT,
    tag TEXT,
    status TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    submitted_ts REAL NOT NULL,
    finished_at TEXT,
    seq INTEGER,
    http_status INTEGER,
    error TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, id);
"""

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
FINAL = (DONE, FAILED)


@dataclass(frozen=True)
class QueuedRequest:
    """One row of the queue."""

    id: int
    request_key: str
    ids: list[int] | None
    subject_hash: str | None
    subject_commitment: str | None
    tag: str | None
    status: str
    submitted_at: str
    submitted_ts: float
    finished_at: str | None
    seq: int | None
    http_status: int | None
    error: str | None
    result: dict[str, Any] | None

    def public(self) -> dict[str, Any]:
        """What a client sees of its request (never another request's)."""
        out: dict[str, Any] = {"request_key": self.request_key, "status": self.status,
                               "submitted_at": self.submitted_at}
        if self.status == DONE:
            out.update(seq=self.seq, finished_at=self.finished_at, **(self.result or {}))
        elif self.status == FAILED:
            out.update(error=self.error, finished_at=self.finished_at)
        return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _row(row: sqlite3.Row) -> QueuedRequest:
    data = dict(row)
    data["ids"] = None if data["ids"] is None else json.loads(data["ids"])
    data["result"] = None if data["result"] is None else json.loads(data["result"])
    return QueuedRequest(**data)


class RequestQueue:
    """The queue file; safe to use from several threads of one process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---------------------------------------------------------------- writes
    def submit(self, request_key: str, *, ids: list[int] | None = None,
               subject_hash: str | None = None, subject_commitment: str | None = None,
               tag: str | None = None) -> tuple[QueuedRequest, bool]:
        """Queue a request durably; ``(row, created)``. An existing key returns its row."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                existing = self._db.execute("SELECT * FROM requests WHERE request_key = ?",
                                            (request_key,)).fetchone()
                if existing is not None:
                    self._db.execute("COMMIT")
                    return _row(existing), False
                self._db.execute(
                    "INSERT INTO requests (request_key, ids, subject_hash, subject_commitment, "
                    "tag, status, submitted_at, submitted_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (request_key, None if ids is None else json.dumps(ids), subject_hash,
                     subject_commitment, tag, QUEUED, _now(), time.time()))
                self._db.execute("COMMIT")  # the acknowledgement waits for this
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        row = self.get(request_key)
        assert row is not None
        return row, True

    def claim(self, limit: int) -> list[QueuedRequest]:
        """Mark up to ``limit`` oldest queued requests ``running``; return them in order."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT * FROM requests WHERE status = ? ORDER BY id LIMIT ?",
                    (QUEUED, int(limit))).fetchall()
                self._db.executemany("UPDATE requests SET status = ? WHERE id = ?",
                                     [(RUNNING, r["id"]) for r in rows])
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return [_row(r) for r in rows]

    def finish(self, outcomes: Mapping[str, tuple[str, int | None, int, str | None,
                                                  dict[str, Any] | None]]) -> None:
        """Record outcomes, ``{key: (status, seq, http_status, error, result)}``, at once."""
        now = _now()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE requests SET status = ?, seq = ?, http_status = ?, error = ?, "
                    "result = ?, finished_at = ? WHERE request_key = ?",
                    [(status, seq, code, error, None if result is None else json.dumps(result),
                      now, key) for key, (status, seq, code, error, result) in outcomes.items()])
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def recover(self, committed: Mapping[str, int],
                result_of: Any = None) -> tuple[int, int]:
        """After a crash: running requests whose key a ledger entry carries are ``done``
        (``committed`` maps keys to that entry's seq; ``result_of(seq)`` gives the result);
        the others are queued again. Returns ``(done, requeued)``."""
        done, requeued = {}, []
        for row in self.with_status(RUNNING):
            seq = committed.get(row.request_key)
            if seq is None:
                requeued.append(row.id)
            else:
                done[row.request_key] = (DONE, seq, 200, None,
                                         result_of(seq) if result_of else None)
        if done:
            self.finish(done)
        if requeued:
            with self._lock:
                self._db.executemany("UPDATE requests SET status = ? WHERE id = ?",
                                     [(QUEUED, i) for i in requeued])
        return len(done), len(requeued)

    # ----------------------------------------------------------------- reads
    def get(self, request_key: str) -> QueuedRequest | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM requests WHERE request_key = ?",
                                   (request_key,)).fetchone()
        return None if row is None else _row(row)

    def oldest_queued(self) -> QueuedRequest | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM requests WHERE status = ? ORDER BY id LIMIT 1",
                                   (QUEUED,)).fetchone()
        return None if row is None else _row(row)

    def with_status(self, *statuses: str) -> list[QueuedRequest]:
        marks = ", ".join("?" for _ in statuses)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM requests WHERE status IN ({marks}) "
                                    "ORDER BY id", statuses).fetchall()
        return [_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall()
        return {QUEUED: 0, RUNNING: 0, DONE: 0, FAILED: 0, **{r[0]: int(r[1]) for r in rows}}

    def keys(self, keys: Iterable[str]) -> list[QueuedRequest]:
        return [r for r in (self.get(k) for k in keys) if r is not None]

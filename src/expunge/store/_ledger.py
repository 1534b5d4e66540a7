"""The deletion ledger: an append-only, hash-chained SQLite table.

Each row records one request (``fit`` or ``forget``): which ids, when, by which strategy
and guarantee, the model fingerprint before and after, what was retrained and purged, and
how long it took. ``hash = sha256(prev_hash + canonical JSON of the row)``, so editing,
deleting or reordering any row breaks the chain; dropping the *last* rows is caught by
comparing the chain's head with the head committed in the store's state (same transaction)
and the last ``fingerprint_after`` with the live model (``UnlearningStrategy.verify``).
For evidence that survives an attacker who can rewrite the whole database, publish
``head`` somewhere they cannot (``expunge ledger --store S`` prints it).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from expunge.exceptions import LedgerIntegrityError

GENESIS = "0" * 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    strategy TEXT NOT NULL,
    guarantee TEXT NOT NULL,
    ids TEXT NOT NULL,
    n_ids INTEGER NOT NULL,
    fingerprint_before TEXT,
    fingerprint_after TEXT NOT NULL,
    samples_retrained INTEGER NOT NULL,
    sample_passes INTEGER NOT NULL,
    submodels_retrained TEXT NOT NULL,
    seconds REAL NOT NULL,
    purged TEXT NOT NULL,
    details TEXT NOT NULL,
    expunge_version TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_COLUMNS = (
    "seq", "request_id", "kind", "created_at", "strategy", "guarantee", "ids", "n_ids",
    "fingerprint_before", "fingerprint_after", "samples_retrained", "sample_passes",
    "submodels_retrained", "seconds", "purged", "details", "expunge_version",
)


@dataclass(frozen=True)
class LedgerEntry:
    """One request as recorded. ``ids`` and ``purged`` are lists; ``details`` a dict."""

    seq: int
    request_id: str
    kind: str
    created_at: str
    strategy: str
    guarantee: str
    ids: list[int]
    n_ids: int
    fingerprint_before: str | None
    fingerprint_after: str
    samples_retrained: int
    sample_passes: int
    submodels_retrained: list[int]
    seconds: float
    purged: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    expunge_version: str = ""
    prev_hash: str = GENESIS
    hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _canonical(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _row_payload(entry_fields: dict[str, Any]) -> dict[str, Any]:
    return {name: entry_fields[name] for name in _COLUMNS}


def chain_hash(prev_hash: str, entry_fields: dict[str, Any]) -> str:
    """``sha256(prev_hash + canonical JSON of the row's fields)``."""
    text = prev_hash + _canonical(_row_payload(entry_fields))
    return hashlib.sha256(text.encode()).hexdigest()


def _decode(row: sqlite3.Row) -> LedgerEntry:
    data = dict(row)
    for name in ("ids", "submodels_retrained", "purged", "details"):
        data[name] = json.loads(data[name])
    return LedgerEntry(**data)


class Ledger:
    """Read-only view of a store's ledger (``strategy.ledger``).

    Iterating yields :class:`LedgerEntry` objects in request order.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __len__(self) -> int:
        return int(self._connection.execute("SELECT COUNT(*) FROM ledger").fetchone()[0])

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(self.entries())

    def __getitem__(self, seq: int) -> LedgerEntry:
        row = self._connection.execute("SELECT * FROM ledger WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise IndexError(f"no ledger entry with seq {seq}")
        return _decode(row)

    def __repr__(self) -> str:
        return f"Ledger({len(self)} entries, head={self.head[:12]})"

    def entries(self, kind: str | None = None) -> list[LedgerEntry]:
        query = "SELECT * FROM ledger"
        args: Sequence[Any] = ()
        if kind is not None:
            query += " WHERE kind = ?"
            args = (kind,)
        return [_decode(r) for r in self._connection.execute(query + " ORDER BY seq", args)]

    @property
    def head(self) -> str:
        """Hash of the last entry (``GENESIS`` when empty)."""
        row = self._connection.execute(
            "SELECT hash FROM ledger ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return GENESIS if row is None else str(row[0])

    def forgotten(self) -> dict[int, int]:
        """Every forgotten id mapped to the ``seq`` of the request that forgot it."""
        out: dict[int, int] = {}
        for seq, ids in self._connection.execute(
            "SELECT seq, ids FROM ledger WHERE kind = 'forget' ORDER BY seq"
        ):
            for sample_id in json.loads(ids):
                out[int(sample_id)] = int(seq)
        return out

    def verify(self) -> int:
        """Walk the chain; return the number of entries or raise :class:`LedgerIntegrityError`.

        Checks: sequence numbers run 1, 2, 3... with no gap; each ``prev_hash`` is the
        previous row's ``hash``; each ``hash`` recomputes from the row; and the last hash
        equals the head committed with the store's state.
        """
        prev = GENESIS
        expected_seq = 1
        count = 0
        for row in self._connection.execute("SELECT * FROM ledger ORDER BY seq"):
            data = dict(row)
            seq = data["seq"]
            if seq != expected_seq:
                raise LedgerIntegrityError(
                    f"Ledger entry {expected_seq} is missing (next entry is {seq}): "
                    "a row was deleted."
                )
            if data["prev_hash"] != prev:
                raise LedgerIntegrityError(
                    f"Ledger entry {seq} does not follow entry {seq - 1} (prev_hash mismatch): "
                    "rows were deleted or reordered."
                )
            if chain_hash(prev, data) != data["hash"]:
                raise LedgerIntegrityError(
                    f"Ledger entry {seq} (request {data['request_id']}) was modified after it "
                    "was written: its hash does not match its content."
                )
            prev = data["hash"]
            expected_seq += 1
            count += 1
        committed = self._connection.execute(
            "SELECT value FROM state WHERE name = 'ledger_head'"
        ).fetchone()
        if committed is not None and json.loads(committed[0]) != prev:
            raise LedgerIntegrityError(
                "The ledger's last entry is not the one committed with the store's state: "
                "trailing entries were deleted or added outside expunge."
            )
        return count

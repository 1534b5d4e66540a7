"""The deletion ledger: an append-only, hash-chained SQLite table.

Each row records one request (``fit`` or ``forget``): which ids, when, by which strategy
and guarantee, the model fingerprint before and after, what was retrained and purged, and
how long it took, and the SHA-256 of the state it committed (``state_digest``, which covers
the keyed digest of every file). ``hash = sha256(prev_hash + canonical JSON of the row)``,
and the first row's ``prev_hash`` is the store's genesis (a hash of the store id in the
manifest), so editing, deleting or reordering any row breaks the chain, and so does
deleting every row: the chain must start with the store's ``fit``. Dropping the *last* rows
is caught by the head anchored in the store's state (length, last hash and a MAC, written
in the same transaction) and by the last ``fingerprint_after`` against the live model
(``UnlearningStrategy.verify``). For evidence that survives an attacker who can rewrite
the whole store, key included, publish ``head`` somewhere they cannot
(``expunge ledger --store S --verify`` prints it).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
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
    state_digest TEXT NOT NULL,
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
    "submodels_retrained", "seconds", "purged", "details", "expunge_version", "state_digest",
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
    state_digest: str = ""
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

    Iterating yields :class:`LedgerEntry` objects in request order. ``genesis`` gives the
    ``prev_hash`` the store's first entry must have (see :func:`ledger_genesis`).
    """

    def __init__(self, connection: sqlite3.Connection, genesis: Callable[[], str]) -> None:
        self._connection = connection
        self._genesis = genesis

    @property
    def genesis(self) -> str:
        """The ``prev_hash`` of this store's first entry."""
        return self._genesis()

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

        Checks: the first entry is a ``fit`` whose ``prev_hash`` is the store's genesis;
        sequence numbers run 1, 2, 3... with no gap; each ``prev_hash`` is the previous row's
        ``hash``; each ``hash`` recomputes from the row; the chain is not empty when the
        store has a committed state; and its length and last hash equal the head committed
        with the store's state.
        """
        prev = self.genesis
        expected_seq = 1
        count = 0
        for row in self._connection.execute("SELECT * FROM ledger ORDER BY seq"):
            data = dict(row)
            seq = data["seq"]
            if seq == 1 and data["kind"] != "fit":
                raise LedgerIntegrityError(
                    f"Ledger entry 1 is a {data['kind']!r}, not the store's fit: the chain's "
                    "start was replaced."
                )
            if seq == 1 and data["prev_hash"] != prev:
                raise LedgerIntegrityError(
                    "Ledger entry 1 does not start this store's chain (its prev_hash is not "
                    "the store's genesis): the ledger belongs to another store or was rewritten."
                )
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
        anchor = self.anchor()
        has_state = self._connection.execute(
            "SELECT 1 FROM state WHERE name = 'current'").fetchone() is not None
        if count == 0 and (has_state or anchor is not None):
            raise LedgerIntegrityError(
                "The ledger is empty but the store has a committed model: every entry, the "
                "fit included, was deleted outside expunge."
            )
        if count and (anchor is None or anchor.get("seq") != count
                      or anchor.get("hash") != prev):
            raise LedgerIntegrityError(
                "The ledger's last entry is not the one committed with the store's state: "
                "trailing entries were deleted or added outside expunge."
            )
        return count

    def anchor(self) -> dict[str, Any] | None:
        """The head committed with the state: ``{"seq", "hash", "mac"}`` (None before a fit)."""
        row = self._connection.execute(
            "SELECT value FROM state WHERE name = 'ledger_head'").fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except (TypeError, ValueError):
            value = None
        if not isinstance(value, dict):
            raise LedgerIntegrityError(
                "The store's committed ledger head is malformed: it was edited outside expunge."
            )
        return value

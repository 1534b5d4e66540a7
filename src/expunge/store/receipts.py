"""Signed deletion receipts: evidence a data subject or an auditor checks offline.

A receipt is one canonical JSON object describing one ledger entry (store, sequence number,
request digest with the subject hashes, guarantee, model fingerprints before and after,
the entry's ledger hash, time) plus an Ed25519 signature over every other field. It is a
pure function of the ledger entry and the signing key (Ed25519 signatures are
deterministic), so a receipt lost in a crash is issued again, identical, on demand.

Verifying needs nothing but the receipt and the public key (``verify_receipt``, ``expunge
verify-receipt``, or the ten stdlib + ``cryptography`` lines in docs/operations.md):

* the signature covers the canonical JSON of every field but ``signature``
  (``json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``),
  so changing, adding or removing any field fails;
* ``key_id`` must be the SHA-256 prefix of the given public key;
* optionally, a data subject who holds the nonce returned with their request checks that
  ``subject_commitments`` contains ``sha256(domain | nonce | subject key)``: the receipt
  names them without revealing them to anyone else.

What a receipt proves: the holder of the signing key recorded this entry in this store's
ledger, at this position in its hash chain, with these fingerprints. It does not prove the
model was computed honestly: that is what the replay audit (``m.audit()``) checks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import sqlite3
import warnings
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from expunge.exceptions import InvalidParameterError
from expunge.store._ledger import LedgerEntry
from expunge.store._store import Store
from expunge.store.keys import key_id

RECEIPT_FORMAT = "expunge-receipt/1"
ALGORITHM = "Ed25519"
_COMMITMENT_DOMAIN = b"expunge-subject-commitment\x1f"

#: every field a receipt has, besides ``signature``
FIELDS = (
    "format", "algorithm", "key_id", "store_id", "seq", "request_id", "kind", "created_at",
    "strategy", "guarantee", "expunge_version", "ids", "n_ids", "request_digest",
    "subject_hashes", "subject_commitments", "fingerprint_before", "fingerprint_after",
    "sample_passes", "n_purged", "ledger_hash", "prev_hash",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    seq INTEGER PRIMARY KEY,
    key_id TEXT NOT NULL,
    receipt TEXT NOT NULL
);
"""


def canonical(value: Any) -> bytes:
    """The bytes that are signed: sorted keys, no spaces, ASCII only, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def subject_commitment(subject: str, nonce: str) -> str:
    """``sha256(domain | nonce | subject)`` (hex): ties a receipt to whoever holds ``nonce``."""
    return hashlib.sha256(_COMMITMENT_DOMAIN + bytes.fromhex(nonce) + b"\x1f"
                          + subject.encode("utf-8")).hexdigest()


def new_nonce() -> str:
    return secrets.token_hex(16)


def request_digest(entry: LedgerEntry) -> str:
    """SHA-256 of what was asked: the ids, the subject hashes and the operator's tag."""
    details = entry.details or {}
    return hashlib.sha256(canonical({
        "kind": entry.kind, "ids": list(entry.ids),
        "subject_hashes": list(details.get("subject_hashes", [])),
        "tag": details.get("tag"),
    })).hexdigest()


def receipt_fields(entry: LedgerEntry, store_id: str, signer_key_id: str) -> dict[str, Any]:
    """The signed fields of the receipt for ``entry`` (see the module docstring)."""
    details = entry.details or {}
    return {
        "format": RECEIPT_FORMAT, "algorithm": ALGORITHM, "key_id": signer_key_id,
        "store_id": store_id, "seq": entry.seq, "request_id": entry.request_id,
        "kind": entry.kind, "created_at": entry.created_at, "strategy": entry.strategy,
        "guarantee": entry.guarantee, "expunge_version": entry.expunge_version,
        "ids": [int(i) for i in entry.ids], "n_ids": entry.n_ids,
        "request_digest": request_digest(entry),
        "subject_hashes": list(details.get("subject_hashes", [])),
        "subject_commitments": list(details.get("subject_commitments", [])),
        "fingerprint_before": entry.fingerprint_before,
        "fingerprint_after": entry.fingerprint_after,
        "sample_passes": entry.sample_passes, "n_purged": len(entry.purged),
        "ledger_hash": entry.hash, "prev_hash": entry.prev_hash,
    }


def sign(fields: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``fields`` plus ``signature`` (base64 of Ed25519 over their canonical JSON)."""
    signature = key.sign(canonical(fields))
    return {**fields, "signature": base64.b64encode(signature).decode("ascii")}


def load_public_key(public_key: bytes | str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM bytes/text, or from a PEM file (a ``Path``, or a
    ``str`` that is a file's path rather than PEM text)."""
    if isinstance(public_key, str) and "-----BEGIN" not in public_key \
            and Path(public_key).is_file():
        public_key = Path(public_key)
    if isinstance(public_key, Path):
        try:
            public_key = public_key.read_bytes()
        except OSError as err:
            raise InvalidParameterError(
                f"Cannot read the public key {str(public_key)!r}: {err.strerror}.") from err
    data = public_key.encode("ascii", "replace") if isinstance(public_key, str) else public_key
    try:
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise InvalidParameterError(
            f"The public key is not a PEM public key ({err}). Pass the bytes of "
            "`m.public_key` or the file `expunge serve`/`expunge forget` published."
        ) from err
    if not isinstance(loaded, Ed25519PublicKey):
        raise InvalidParameterError(
            f"The public key is a {type(loaded).__name__}, not an Ed25519 key.")
    return loaded


def verify_receipt(receipt: dict[str, Any] | str | bytes, public_key: bytes | str | Path, *,
                   subject: str | int | None = None, subject_nonce: str | None = None) -> bool:
    """Whether ``receipt`` is a receipt signed by ``public_key``, unaltered.

    Needs nothing but its arguments (no store, no network). ``receipt`` is the dict (or its
    JSON text); ``public_key`` the PEM bytes or text (``m.public_key``), or the path of a
    PEM file. With ``subject`` and ``subject_nonce`` (returned to whoever asked for the
    subject's deletion), it also checks that the receipt concerns that subject.

    Returns ``False`` for any altered, forged, truncated or foreign receipt; raises
    :class:`InvalidParameterError` only for an unusable public key.
    """
    key = load_public_key(public_key)
    if isinstance(receipt, (str, bytes)):
        try:
            receipt = json.loads(receipt)
        except (ValueError, UnicodeDecodeError):
            return False
    if not isinstance(receipt, dict) or set(receipt) != {*FIELDS, "signature"}:
        return False
    fields = {k: v for k, v in receipt.items() if k != "signature"}
    if fields["format"] != RECEIPT_FORMAT or fields["algorithm"] != ALGORITHM:
        return False
    if fields["key_id"] != key_id(key) or not isinstance(receipt["signature"], str):
        return False
    try:
        signature = base64.b64decode(receipt["signature"], validate=True)
        key.verify(signature, canonical(fields))
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return False
    if subject is not None or subject_nonce is not None:
        if subject is None or subject_nonce is None:
            raise InvalidParameterError("Give both subject and subject_nonce, or neither.")
        from expunge.data import as_subject_array

        normalised = str(as_subject_array([subject], 1)[0])
        try:
            expected = subject_commitment(normalised, subject_nonce)
        except ValueError:
            return False
        return expected in fields["subject_commitments"]
    return True


class ReceiptBook:
    """Issued receipts, kept in the store's database (table ``receipts``) by ledger ``seq``.

    Stored after the request's commit, under the same write lock; a receipt that could not
    be stored (a crash in between, a read-only store) is issued again, identical, on demand.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._db: sqlite3.Connection = store._db

    def get(self, seq: int) -> dict[str, Any] | None:
        try:
            row = self._db.execute("SELECT receipt FROM receipts WHERE seq = ?",
                                   (seq,)).fetchone()
        except sqlite3.OperationalError:  # no receipt was ever stored in this store
            return None
        return None if row is None else dict(json.loads(row[0]))

    def put(self, receipt: dict[str, Any]) -> bool:
        """Keep ``receipt``; whether it could be (a read-only store cannot)."""
        try:
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR REPLACE INTO receipts (seq, key_id, receipt) VALUES (?, ?, ?)",
                (int(receipt["seq"]), str(receipt["key_id"]), json.dumps(receipt)))
        except sqlite3.Error as err:
            warnings.warn(f"The receipt of request #{receipt['seq']} was issued but could not "
                          f"be stored ({err}); it is issued again, identical, when asked for.",
                          stacklevel=3)
            return False
        return True

    def store_id(self) -> str:
        """The hash of the store's first ledger entry (its fit): unique and never changes."""
        return self._store.ledger[1].hash

    def issue(self, entry: LedgerEntry, key: Ed25519PrivateKey) -> dict[str, Any]:
        """Sign the receipt of ``entry`` and keep it."""
        receipt = sign(receipt_fields(entry, self.store_id(), key_id(key.public_key())), key)
        self.put(receipt)
        return receipt

    def receipt(self, seq: int, key: Ed25519PrivateKey) -> dict[str, Any]:
        """The receipt of ledger entry ``seq``: the one issued, else issued now."""
        stored = self.get(seq)
        if stored is not None:
            return stored
        return self.issue(self._store.ledger[seq], key)

"""Subjects: the person behind samples, kept in a store only as a keyed hash.

A request "delete everything about me" names a *subject* (a user id, an e-mail address),
not sample ids. ``IndexedDataset(..., subjects=keys)`` gives each sample its subject;
``fit`` stores, per sample, the store's keyed digest of the key (HMAC-SHA256 under the
store's secret, purpose ``"subject"``; see :class:`expunge.store.StoreKey`) next to the
sample's row, never the key, and ``forget_subject(key)`` hashes the key again and forgets
every retained sample with that hash, as one request whose ledger entry records the hash.

Whoever holds the store's secret (``secret.key``) can check which subject a ledger entry
concerns (hash the candidate key); whoever does not (an auditor given the manifest and the
ledger) cannot, even by guessing keys. The person who asked
gets a nonce: with it, ``verify_receipt(..., subject=key, subject_nonce=nonce)`` shows the
receipt is about them, without the secret (see :mod:`expunge.store.receipts`).
"""

from __future__ import annotations

import numpy as np

from expunge.data import as_subject_array
from expunge.exceptions import DatasetError, InvalidRequestError
from expunge.store._store import Store

#: bytes of one sample's subject hash (HMAC-SHA256), as the stored data keeps it
SUBJECT_HASH_BYTES = 32

#: the purpose of subject digests under the store's key (never reused for anything else)
SUBJECT_PURPOSE = "subject"

#: the hash row of a sample without subject
NO_SUBJECT = bytes(SUBJECT_HASH_BYTES)


def normalise_subject(subject: object) -> str:
    """The canonical text of one subject key (ints as decimal text); refuses anything else."""
    if subject is not None:
        try:
            key = as_subject_array([subject], 1)[0]
        except DatasetError:
            key = None
        if key is not None:
            return str(key)
    raise InvalidRequestError(
        f"A subject key must be a non-empty string or an int; got {subject!r}. Pass the key "
        "the samples were given in IndexedDataset(..., subjects=...)."
    )


def subject_digest(store: Store, subject: str) -> str:
    """The keyed hash (hex) of one normalised subject key under ``store``'s secret."""
    return store.keyed_digest(SUBJECT_PURPOSE, subject.encode("utf-8"))


def hash_subjects(subjects: np.ndarray, store: Store) -> np.ndarray:
    """``uint8 (n, 32)``: the keyed hash of each sample's subject (zeros for ``None``)."""
    out = np.zeros((len(subjects), SUBJECT_HASH_BYTES), dtype=np.uint8)
    cache: dict[str, bytes] = {}
    for row, key in enumerate(subjects.tolist()):
        if key is None:
            continue
        digest = cache.get(key)
        if digest is None:
            digest = cache[key] = bytes.fromhex(subject_digest(store, key))
        out[row] = np.frombuffer(digest, dtype=np.uint8)
    return out


def rows_of(hashes: np.ndarray | None, subject_hash: str) -> np.ndarray:
    """Boolean mask of the rows whose subject hash is ``subject_hash`` (hex)."""
    if hashes is None:
        return np.zeros(0, dtype=bool)
    target = np.frombuffer(bytes.fromhex(subject_hash), dtype=np.uint8)
    return np.asarray((hashes == target).all(axis=1))

"""Subjects kept as keyed hashes (implemented in :mod:`expunge.store.subjects`)."""

from expunge.store.subjects import (
    NO_SUBJECT,
    SUBJECT_HASH_BYTES,
    SUBJECT_PURPOSE,
    hash_subjects,
    normalise_subject,
    rows_of,
    subject_digest,
)

__all__ = [
    "NO_SUBJECT",
    "SUBJECT_HASH_BYTES",
    "SUBJECT_PURPOSE",
    "hash_subjects",
    "normalise_subject",
    "rows_of",
    "subject_digest",
]

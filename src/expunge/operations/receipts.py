"""Signed receipts of ledger entries (implemented in :mod:`expunge.store.receipts`).

Kept at this path for the operations API; the implementation sits in the layer the
strategies' verbs (``forget_subject``, ``receipt``, ``preview``, ``audit``) can import.
"""

from expunge.store.receipts import (
    ALGORITHM,
    FIELDS,
    RECEIPT_FORMAT,
    ReceiptBook,
    canonical,
    load_public_key,
    new_nonce,
    receipt_fields,
    request_digest,
    sign,
    subject_commitment,
    verify_receipt,
)

__all__ = [
    "ALGORITHM",
    "FIELDS",
    "RECEIPT_FORMAT",
    "ReceiptBook",
    "canonical",
    "load_public_key",
    "new_nonce",
    "receipt_fields",
    "request_digest",
    "sign",
    "subject_commitment",
    "verify_receipt",
]

"""Signed receipts of ledger entries (implemented in :mod:`expunge.store.receipts`)."""

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

"""Deletion operations: subjects, cost previews, signed receipts, replay audits.

The strategies expose them as methods (``forget_subject``, ``preview``, ``audit``,
``public_key``, ``receipt``); receipts are verified offline with :func:`verify_receipt`.
See docs/operations.md.

The implementations live where the strategies' verbs can import them without a cycle:
receipts, keys and subject hashes in :mod:`expunge.store` (``receipts``, ``keys``,
``subjects``), preview and audit in :mod:`expunge.strategies` (``preview``, ``audit``);
the modules of this package re-export them under their documented paths.
"""

from expunge.operations.receipts import verify_receipt

__all__ = ["verify_receipt"]

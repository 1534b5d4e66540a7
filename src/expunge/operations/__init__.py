"""Deletion operations: subjects, cost previews, signed receipts, replay audits.

The strategies expose them as methods (``forget_subject``, ``preview``, ``audit``,
``public_key``, ``receipt``); receipts are verified offline with :func:`verify_receipt`.
See docs/operations.md.
"""

from expunge.operations.receipts import verify_receipt

__all__ = ["verify_receipt"]

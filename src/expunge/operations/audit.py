"""Replay audit of exact strategies (implemented in :mod:`expunge.strategies.audit`).

Kept at this path for the operations API; the implementation sits in the layer the
strategies' verbs (``forget_subject``, ``receipt``, ``preview``, ``audit``) can import.
"""

from expunge.strategies.audit import (
    AuditReport,
    audit_strategy,
)

__all__ = [
    "AuditReport",
    "audit_strategy",
]

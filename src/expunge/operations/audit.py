"""Replay audit of exact strategies (implemented in :mod:`expunge.strategies.audit`)."""

from expunge.strategies.audit import (
    AuditReport,
    audit_strategy,
)

__all__ = [
    "AuditReport",
    "audit_strategy",
]

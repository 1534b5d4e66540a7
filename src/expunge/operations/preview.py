"""What a request would do, without doing it (implemented in :mod:`expunge.strategies.preview`).

Kept at this path for the operations API; the implementation sits in the layer the
strategies' verbs (``forget_subject``, ``receipt``, ``preview``, ``audit``) can import.
"""

from expunge.strategies.preview import (
    HISTORY,
    ForgetPreview,
    estimate_seconds,
    preview_forget,
)

__all__ = [
    "HISTORY",
    "ForgetPreview",
    "estimate_seconds",
    "preview_forget",
]

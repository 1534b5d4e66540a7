"""What a request would do, without doing it (implemented in :mod:`expunge.strategies.preview`)."""

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

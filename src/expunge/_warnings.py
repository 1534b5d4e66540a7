"""Warnings attributed to the user's line, not to the library frame that noticed."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def warn_from_caller(warning: Warning) -> None:
    """Emit ``warning`` at the first frame outside expunge (the user's call), so that the
    message points at the line to change and the default filter shows it once per line."""
    frame = sys._getframe(1)
    level = 2  # stacklevel 1 is this function; 2 is the frame _getframe(1) returns
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(warning, stacklevel=level)

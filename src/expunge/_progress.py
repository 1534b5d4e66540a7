"""Progress bars (rich) that cost nothing when switched off."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Progress:
    """A thin wrapper: ``task(description, total)`` then ``advance(task)``; no-op if disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    @contextmanager
    def running(self) -> Iterator[Progress]:
        if not self.enabled:
            yield self
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        with RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), transient=True,
        ) as bar:
            self._bar = bar
            try:
                yield self
            finally:
                self._bar = None

    def task(self, description: str, total: int) -> int | None:
        if self._bar is None:
            return None
        return int(self._bar.add_task(description, total=total))

    def advance(self, task: int | None, amount: int = 1) -> None:
        if self._bar is not None and task is not None:
            self._bar.advance(task, amount)


NO_PROGRESS = Progress(False)

"""What an experiment kind gets: its spec, one seed, data, and ways to build strategies."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import expunge
from expunge.bench._spec import ExperimentSpec
from expunge.data import IndexedDataset, load_dataset


@dataclass
class Context:
    spec: ExperimentSpec
    seed: int
    data_roots: dict[str, Path | None]
    scratch: Path
    quick: bool
    log: Any = print
    #: progress bars for the training the experiment runs (``expunge bench`` without --quiet)
    show_progress: bool = False
    _data: tuple[IndexedDataset, IndexedDataset] | None = None
    _fitted: dict[str, tuple[Path, float]] = field(default_factory=dict)

    def data(self) -> tuple[IndexedDataset, IndexedDataset]:
        if self._data is None:
            root = self.data_roots.get(self.spec.dataset)
            self._data = load_dataset(self.spec.dataset, root=root, **self.spec.data_options)
        return self._data

    def make(self, label: str, store: Path | None = None, **overrides: Any) -> Any:
        """A fresh, unfitted strategy for ``label`` (recipe + its params + the seed); a
        parameter the strategy does not take is an ``InvalidParameterError`` naming it."""
        name, params = self.spec.strategy_params(label, self.seed)
        params = {"show_progress": self.show_progress, **params, **overrides}
        return expunge.get_strategy(name)().set_params(**params, store=store)

    def fitted_copy(self, label: str, reopen: dict[str, Any] | None = None,
                    **overrides: Any) -> tuple[Any, float]:
        """A fitted strategy in a private store, and the seconds its fit took.

        The fit runs once per (label, overrides); later calls copy the fitted store and
        reopen it, so several experiments can start from the same trained model.
        ``reopen`` sets parameters that act only at forget time (PUMA's ``eta``) on the
        reopened copy, without refitting.
        """
        key = f"{label}|{sorted(overrides.items())}"
        if key not in self._fitted:
            path = self.scratch / f"fit-{len(self._fitted)}"
            strategy = self.make(label, store=path, **overrides)
            started = time.perf_counter()
            strategy.fit(self.data()[0])
            self._fitted[key] = (path, time.perf_counter() - started)
            strategy.close()
        path, seconds = self._fitted[key]
        copy = Path(tempfile.mkdtemp(dir=self.scratch, prefix="copy-"))
        shutil.rmtree(copy)
        shutil.copytree(path, copy)
        # a store at rest, as fit leaves it: otherwise a request's first fsync pays for
        # flushing the copy (E4 measured PUMA's 1 % batch at 0.74 s for 0.48 s synced)
        os.sync()
        runtime = {**self._runtime_overrides(label, overrides), **(reopen or {})}
        return expunge.open(copy, **runtime), seconds

    def _runtime_overrides(self, label: str, overrides: dict[str, Any]) -> dict[str, Any]:
        # parameters a manifest cannot hold (callables) must be passed again on reopen
        _, params = self.spec.strategy_params(label, self.seed)
        params.update(overrides)
        return {k: v for k, v in params.items() if callable(v)}

    @contextmanager
    def timed(self, what: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.log(f"  {what}: {time.perf_counter() - started:.1f} s")

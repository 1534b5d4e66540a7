"""The narrow door between operations (preview, audit) and the exact engine.

Everything the preview and the audit need from :mod:`expunge.strategies.exact.sharded` goes
through the functions here, so that a refactor of the engine touches this file only:

* :func:`dry_forget` runs a strategy's own ``_forget`` on a copy of the strategy, against a
  store that records writes instead of making them, with the sub-model trainer replaced by
  one that only counts. The plan, the reuse decisions and the accounting are therefore the
  very code a real request runs, and ``sample_passes`` is what that request will report;
* :func:`replay_submodel` trains one sub-model from its initialisation into a scratch
  in-memory store, the computation ``fit`` performed for it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from expunge._progress import NO_PROGRESS, Progress
from expunge.data import IndexedDataset
from expunge.store import MemoryStore, Store
from expunge.strategies.base import ForgetStats, UnlearningStrategy
from expunge.strategies.exact.sharded import (
    BlockPlan,
    BuildPlan,
    ShardedStrategy,
    Submodel,
    Trained,
    chain_keys,
    train_submodel,
)
from expunge.training import pinned_threads


def is_exact_engine(strategy: UnlearningStrategy) -> bool:
    """Whether ``strategy`` runs on the exact block engine (Retrain, SISA, ARCANE)."""
    return isinstance(strategy, ShardedStrategy) and strategy.guarantee == "exact"


class _RecordingStore:
    """Reads go to the real store; writes and deletes are recorded, never made."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.written: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def has_blob(self, name: str) -> bool:
        return name in self.written or self._store.has_blob(name)

    def write_blob(self, name: str, tensors: Any, metadata: Any = None, *,
                   shared: bool = False, compress: bool = False) -> None:
        self.written.add(name)

    def delete_blob(self, name: str) -> None:
        pass


def isolated_copy(strategy: UnlearningStrategy) -> UnlearningStrategy:
    """A shallow copy whose containers (caches of plans, selections) are copies too, so
    that planning on it leaves the original exactly as it was."""
    clone = copy.copy(strategy)
    for name, value in list(vars(clone).items()):
        if isinstance(value, (dict, list, set)):
            setattr(clone, name, copy.copy(value))
    return clone


@dataclass(frozen=True)
class DryRun:
    """What a request would report (``stats``), the blobs its model would need, and the
    number of blocks of each sub-model."""

    stats: ForgetStats
    live_blobs: set[str]
    n_blocks: list[int]


def dry_forget(strategy: UnlearningStrategy, request: np.ndarray,
               retained: IndexedDataset) -> DryRun:
    """What ``strategy._forget`` would report and keep alive, without training or writing."""
    if not isinstance(strategy, ShardedStrategy):
        raise TypeError(f"{type(strategy).__name__} does not run on the exact engine")
    clone = isolated_copy(strategy)
    assert isinstance(clone, ShardedStrategy)

    def count_only(hooks: Any, build: BuildPlan, data: IndexedDataset, store: Any,
                   progress: Progress, task: int | None) -> Trained:
        return Trained({k: Submodel(k, build.keys[k], nn.Identity(), {},
                                    len(build.plans[k].all_ids())) for k in build.todo})

    clone._train = count_only  # type: ignore[method-assign]
    recording = _RecordingStore(strategy.store_)
    model, stats = clone._forget(strategy.fitted_, request, retained,
                                 recording, NO_PROGRESS)  # type: ignore[arg-type]
    return DryRun(stats, model.live_blobs(), [len(s.keys) for s in model.submodels])


# ------------------------------------------------------------------------- replay
def fresh_instance(strategy: ShardedStrategy) -> ShardedStrategy:
    """A new, unfitted strategy with the recorded parameters and no cached state."""
    return strategy.clone().set_params(store=None, show_progress=False, executor="serial")


def replay_plans(fresh: ShardedStrategy, data: IndexedDataset) -> tuple[list[BlockPlan],
                                                                        list[list[str]]]:
    """Every sub-model's plan and chain keys on ``data``, computed from scratch."""
    plans = fresh._plans(data)
    context = fresh._context(data)
    return plans, [chain_keys(context, k, plan) for k, plan in enumerate(plans)]


def replay_submodel(fresh: ShardedStrategy, k: int, plan: BlockPlan, keys: list[str],
                    data: IndexedDataset, progress: Progress, task: int | None
                    ) -> tuple[MemoryStore, int]:
    """Train sub-model ``k`` from its initialisation; its checkpoints land in a new
    :class:`MemoryStore` (returned, with the sample-passes spent)."""
    scratch = MemoryStore()
    with pinned_threads(int(fresh.threads_per_job)):
        train_submodel(fresh, k, plan, keys, 0, data, scratch, progress, task)
    return scratch, plan.passes(0)


def committed_keys(state: dict[str, Any]) -> list[list[str]]:
    """The chain keys of every sub-model in a committed state."""
    return [list(entry["keys"]) for entry in state["model"]["submodels"]]


def tensors_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (dtype, shape and bytes; NaNs with the same payload are equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    left, right = a.contiguous().reshape(-1), b.contiguous().reshape(-1)
    return bool(left.view(torch.uint8).equal(right.view(torch.uint8)))

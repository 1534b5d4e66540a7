"""The exact engine: isolated sub-models trained in checkpointed blocks.

A strategy describes *what* to train as a :class:`BlockPlan` per sub-model (``_plans``):
the ids added at each block and the epochs spent there. The engine does the rest, the same
way for Retrain (1 sub-model, 1 block), SISA (shards x slices) and ARCANE (classes x
blocks), in three steps, one module each:

1. **plan** (:mod:`~expunge.strategies.exact._plan`): each block's checkpoint is named by a
   chain key (a hash of the previous key and the block's ids and epochs); every sub-model
   trains from its first block whose checkpoint is not in the store, and a sub-model whose
   keys did not change is reused as it is;
2. **dispatch** (:mod:`~expunge.strategies.exact._dispatch`): the missing blocks train in
   this process or as jobs on an executor (``executor``, ``n_jobs``, ``ray_address``,
   ``threads_per_job``: declared here for every exact strategy);
3. **blocks** (:mod:`~expunge.strategies.exact._blocks`): the hooks a strategy overrides
   and the loop that runs them, wherever a block trains.

``fit`` trains every block whose checkpoint is not in the store yet (so an interrupted fit
resumes), and **``forget`` is the same operation on the retained data**: every block whose
key did not change is reused, every sub-model is retrained from its first changed block,
and every checkpoint whose key is no longer live, i.e. that saw a forgotten id, is purged.
History independence follows: ``fit(D).forget(F)`` runs exactly the computations of
``fit(D.drop(F))`` for every block whose content changed, starting from checkpoints that
``fit(D.drop(F))`` would also have produced.
"""

from __future__ import annotations

import hashlib
import json
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from expunge._progress import Progress
from expunge.data import IndexedDataset
from expunge.store import Store
from expunge.strategies._params import COMMON_CONSTRAINTS
from expunge.strategies._recipe import RECIPE_CONSTRAINTS
from expunge.strategies.base import FittedModel, ForgetStats, UnlearningStrategy
from expunge.strategies.exact._blocks import BlockHooks, load_submodel, train_submodel
from expunge.strategies.exact._dispatch import (
    EXECUTION_CONSTRAINTS,
    WHERE_PARAMS,
    Execution,
    Trained,
    train_plan,
)
from expunge.strategies.exact._model import ShardedModel, Submodel
from expunge.strategies.exact._plan import (
    BlockPlan,
    BuildPlan,
    chain_keys,
    checkpoint_blob,
    checkpoint_names,
    plan_build,
)
from expunge.training import batched_forward

__all__ = [
    "BlockHooks",
    "BlockPlan",
    "BuildPlan",
    "ShardedModel",
    "ShardedStrategy",
    "Submodel",
    "Trained",
    "chain_keys",
    "checkpoint_blob",
    "checkpoint_names",
    "train_submodel",
]


class ShardedStrategy(BlockHooks, UnlearningStrategy):
    """Base of exact strategies built from isolated, block-checkpointed sub-models.

    Subclasses implement :meth:`_plans`; they may override the block hooks
    (:class:`~expunge.strategies.exact._blocks.BlockHooks`: ``_new_module``,
    ``_make_optimizer``, ``_loss``, ``_train_block``, ``_finalize``) and :meth:`_aggregate`.
    Their constructors list the recipe parameters, ``store``, ``show_progress`` and the
    executor parameters below (validated by :attr:`_parameter_constraints`, which
    subclasses extend).
    """

    guarantee = "exact"
    _parameter_constraints = {**RECIPE_CONSTRAINTS, **COMMON_CONSTRAINTS,
                              **EXECUTION_CONSTRAINTS}
    _runtime_params = UnlearningStrategy._runtime_params | WHERE_PARAMS

    #: where sub-models train: ``"serial"``, ``"process"`` or ``"ray"`` (runtime)
    executor: str
    #: jobs at once for ``"process"``/``"ray"`` (runtime; ``None``: one per CPU)
    n_jobs: int | None
    #: the Ray cluster to join (runtime; ``None``: the current one or a local one)
    ray_address: str | None
    #: torch intra-op threads every block trains with, in every executor (recorded: the
    #: thread count is part of what CPU kernels compute)
    threads_per_job: int

    # ---------------------------------------------------------------- hooks
    @abstractmethod
    def _plans(self, data: IndexedDataset) -> list[BlockPlan]:
        """One plan per sub-model for the (retained) ``data``; always the same length."""

    def _submodel_proba(self, submodel: Submodel, X: torch.Tensor) -> torch.Tensor:
        return torch.softmax(batched_forward(submodel.module, X), dim=1)

    def _aggregate(self, submodels: Sequence[Submodel], X: torch.Tensor) -> torch.Tensor:
        """Mean of the sub-models' softmax outputs over sub-models that saw data."""
        active = [s for s in submodels if s.n_trained > 0] or list(submodels)
        return torch.stack([self._submodel_proba(s, X) for s in active]).mean(dim=0)

    # ------------------------------------------------------------- planning
    def _execution(self) -> Execution:
        """Where this strategy's blocks train (its executor parameters)."""
        return Execution(str(self.executor), self.n_jobs, self.ray_address,
                         int(self.threads_per_job))

    def _context(self, data: IndexedDataset) -> str:
        """The root of every chain key: the recorded parameters and the data's shape."""
        recorded = json.dumps(self.recorded_params(), sort_keys=True, default=str)
        text = f"{self.name}|{recorded}|classes={data.n_classes}|shape={data.input_shape}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _plan_build(self, data: IndexedDataset, store: Store, previous: ShardedModel | None,
                    plans: list[BlockPlan] | None = None) -> BuildPlan:
        """What a fit (``previous=None``) or a forget on ``data`` will train (``plans``, by
        default :meth:`_plans`); trains nothing."""
        keys = None if previous is None else [s.keys for s in previous.submodels]
        return plan_build(self._plans(data) if plans is None else plans, self._context(data),
                          store, keys)

    # ------------------------------------------------------------ fit/forget
    def _fit(self, data: IndexedDataset, store: Store, progress: Progress) -> ShardedModel:
        model, _ = self._build(data, store, progress, previous=None)
        return model

    def _forget(
        self, fitted: FittedModel, ids: np.ndarray, retained: IndexedDataset,
        store: Store, progress: Progress,
    ) -> tuple[ShardedModel, ForgetStats]:
        assert isinstance(fitted, ShardedModel)
        return self._build(retained, store, progress, previous=fitted)

    def _build(
        self, data: IndexedDataset, store: Store, progress: Progress,
        previous: ShardedModel | None,
    ) -> tuple[ShardedModel, ForgetStats]:
        """Plan and train a fit (``previous=None``) or a forget."""
        return self._train_build(data, store, progress, previous, self._plans(data), self)

    def _train_build(
        self, data: IndexedDataset, store: Store, progress: Progress,
        previous: ShardedModel | None, plans: list[BlockPlan], hooks: BlockHooks,
    ) -> tuple[ShardedModel, ForgetStats]:
        """Train ``plans``, the blocks in this process with ``hooks``. A subclass that
        prepares per-request state (ARCANE's features and selections) passes the plans it
        derived from it, and hooks that carry it to the blocks trained here (workers get a
        copy of the parameters only), instead of keeping it on the live strategy."""
        build = self._plan_build(data, store, previous, plans)
        task = progress.task(
            f"{type(self).__name__}: training {len(build.chains)} of {len(build.plans)} "
            "sub-models", build.epochs_to_train(),
        )
        trained = self._train(hooks, build, data, store, progress, task)
        submodels = [previous.submodels[k] if previous is not None and k in build.reused
                     else trained.submodels[k] for k in range(len(build.plans))]
        stats = build.stats()
        return ShardedModel(self, submodels, sample_passes=stats.sample_passes,
                            run_stats=trained.run_stats), stats

    def _train(self, hooks: BlockHooks, build: BuildPlan, data: IndexedDataset, store: Store,
               progress: Progress, task: int | None) -> Trained:
        """Train every missing block of ``build`` where :meth:`_execution` says (the
        dispatch); the only step of a request that trains (a preview's dry run replaces it
        on its own copy of the strategy with one that only counts)."""
        return train_plan(hooks, self._execution(), build, data, store, progress, task)

    def _restore(self, state: dict[str, Any], store: Store) -> ShardedModel:
        manifest = store.read_manifest() or {}
        shape = tuple(manifest.get("dataset", {}).get("input_shape", ()))
        n_classes = int(manifest.get("dataset", {}).get("n_classes", 0))
        submodels = [load_submodel(self, store, k, list(entry["keys"]), shape, n_classes,
                                   int(entry["n_trained"]))
                     for k, entry in enumerate(state["submodels"])]
        return ShardedModel(self, submodels)

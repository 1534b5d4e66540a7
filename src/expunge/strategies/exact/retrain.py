"""Retrain: the reference. Forgetting retrains one model from scratch on the retained data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from expunge.data import IndexedDataset
from expunge.models import ModelSpec
from expunge.strategies.exact._recipe_options import RECIPE_OPTION_CONSTRAINTS, RecipeStrategy
from expunge.strategies.exact.sharded import BlockPlan, ShardedStrategy
from expunge.strategies.registry import register_strategy


@register_strategy
class Retrain(RecipeStrategy):
    """Exact unlearning by retraining from scratch: the gold standard every method is judged by.

    **Guarantee:** exact and history independent: ``Retrain(**p).fit(D).forget(F)`` is
    bit-for-bit ``Retrain(**p).fit(D.drop(F))`` on CPU (same seed, same thread count).
    **Cost per request:** a full training run, ``|D \\ F| * epochs`` sample-passes.

    Args:
        model: a registered model name (``"logreg"``, ``"mlp"``, ``"lenet"``) or a callable
            returning an ``nn.Module`` (optionally taking ``input_shape`` and ``n_classes``).
        model_params: keyword options for a named model (``{"hidden_sizes": [256]}``).
        epochs, batch_size, lr, optimizer, momentum, weight_decay: training settings
            (see :class:`expunge.training.TrainConfig`; ``optimizer`` is ``"sgd"``, ``"adam"``
            or ``"adamw"``).
        lr_schedule: ``"constant"``, ``"step"``, ``"cosine"``, ``"onecycle"``, or a callable
            ``progress -> factor`` (or its import string), over the sub-model's whole budget
            counted in epochs (:mod:`expunge.recipe._schedules`).
        warmup: fraction of the budget with a linear learning-rate warm-up (``[0, 1)``).
        label_smoothing: of the built-in cross-entropy (``[0, 1)``).
        loss: ``loss(logits, targets) -> scalar`` replacing the cross-entropy, or its import
            string ``"package.module:function"``.
        max_grad_norm: clip the gradient's global norm to this per step (``None``: no clip).
        augment: ``None``, ``"crop"``, ``"flip"``, ``"crop+flip"`` (images ``(N, C, H, W)``),
            or a callable ``f(x, keys) -> x`` given one 64-bit key per sample from
            (seed, sub-model, block, epoch, sample id) (:mod:`expunge.recipe._augment`).
        device: ``"cpu"`` (default; bit-for-bit tested), ``"cuda"``, ``"mps"`` or ``"auto"``.
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast (fp16 with a loss scaler
            that restarts each block). Device and precision are recorded in the manifest.
        seed: the one seed all randomness derives from.
        store: a directory to persist into, or ``None`` to keep everything in memory.
        show_progress: show progress bars.
        executor: where independent sub-models train: ``"serial"`` (default), ``"process"``
            (a local process pool of ``n_jobs`` workers) or ``"ray"`` (a Ray cluster at
            ``ray_address``, or a local one). The result is bit-for-bit the same.
        n_jobs: worker count for ``"process"``/``"ray"`` (default: CPU count).
        ray_address: address of an existing Ray cluster (``None`` starts a local one).
        threads_per_job: torch intra-op threads each sub-model trains with, in every
            executor (default 1). Recorded in the store: CPU kernels may sum in another
            order with another thread count, so it is part of *what* is computed, and
            ``forget`` is bit-for-bit ``fit`` on the retained data only at the same value.
    """

    name = "retrain"
    summary = "exact: retrain one model from scratch on the retained data (the reference)"
    _parameter_constraints = {**ShardedStrategy._parameter_constraints,
                              **RECIPE_OPTION_CONSTRAINTS}

    def __init__(
        self,
        model: ModelSpec = "mlp",
        *,
        model_params: dict[str, Any] | None = None,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 0.05,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        lr_schedule: str | Callable[[float], float] = "constant",
        warmup: float = 0.0,
        label_smoothing: float = 0.0,
        loss: Callable[..., Any] | str | None = None,
        max_grad_norm: float | None = None,
        augment: str | Callable[..., Any] | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        seed: int = 0,
        store: str | Path | None = None,
        show_progress: bool = False,
        executor: str = "serial",
        n_jobs: int | None = None,
        ray_address: str | None = None,
        threads_per_job: int = 1,
    ) -> None:
        self.model = model
        self.model_params = model_params
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.warmup = warmup
        self.label_smoothing = label_smoothing
        self.loss = loss
        self.max_grad_norm = max_grad_norm
        self.augment = augment
        self.device = device
        self.precision = precision
        self.seed = seed
        self.store = store
        self.show_progress = show_progress
        self.executor = executor
        self.n_jobs = n_jobs
        self.ray_address = ray_address
        self.threads_per_job = threads_per_job

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"model": "logreg", "epochs": 2, "batch_size": 16, "lr": 0.1, "momentum": 0.9}

    def _block_epochs(self) -> tuple[int, ...]:
        return (int(self.epochs),)

    def _plans(self, data: IndexedDataset) -> list[BlockPlan]:
        return [BlockPlan(blocks=(np.sort(data.ids),), epochs=self._block_epochs())]

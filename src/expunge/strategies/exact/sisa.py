"""SISA: Sharded, Isolated, Sliced, Aggregated training (Bourtoule et al., IEEE S&P 2021)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from expunge._hashing import derive_key, keyed_uniform
from expunge._validation import Interval, Options
from expunge.data import IndexedDataset
from expunge.exceptions import InvalidParameterError
from expunge.models import ModelSpec
from expunge.strategies.exact._recipe_options import RECIPE_OPTION_CONSTRAINTS, RecipeStrategy
from expunge.strategies.exact.sharded import BlockPlan, ShardedStrategy, Submodel
from expunge.strategies.registry import register_strategy
from expunge.training import epoch_schedule


def sisa_partition(
    seed: int, ids: np.ndarray, n_shards: int, n_slices: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shard and slice of each id: ``floor(u * S)`` and ``floor(v * R)`` for keyed uniforms.

    Two independent keyed hashes of ``(seed, id)``; membership never depends on positions
    or on which other ids exist (unlike the reference code's ``np.split(arange(N))``,
    which also yields class-pure shards on sorted data, ALGORITHMS.md section 3(g)).
    """
    shard = np.floor(keyed_uniform(derive_key(seed, "shard"), ids) * n_shards).astype(np.int64)
    slice_ = np.floor(keyed_uniform(derive_key(seed, "slice"), ids) * n_slices).astype(np.int64)
    return shard, slice_


@register_strategy
class SISA(RecipeStrategy):
    """SISA training: S isolated shard models, each trained on R cumulative slices.

    Each sample's shard and slice come from keyed hashes of ``(seed, id)``. Shard ``s``
    trains slice by slice on the cumulative data ``slices 0..r`` with the reference code's
    epoch schedule ``e_r = ⌊(r+1)ē⌋ − ⌊rē⌋``, ``ē = 2e/(R+1)`` (about ``e`` full-shard
    epochs in all), and checkpoints model, optimizer and RNG keys after every slice.
    Predictions aggregate the shard models by majority vote (``"vote"``, the paper's
    default; ties go to the lowest class) or by averaging softmax outputs (``"mean"``).

    **Guarantee:** exact and history independent: ``SISA(**p).fit(D).forget(F)`` equals
    ``SISA(**p).fit(D.drop(F))`` bit for bit on CPU, after any sequence of requests.

    **Cost per request:** only shards holding a forgotten id retrain, each from the
    checkpoint before its earliest affected slice. A point in slice r (1-based) costs
    ``|D_s|/R * ē * sum_{j=r..R} j`` sample-passes; on average a fraction ``(2R+1)/(3R)`` of
    one shard's training, so one request is about ``S * 3R/(2R+1)`` times faster than
    retraining (ALGORITHMS.md section 3(b)). Storage: ``S * R`` checkpoints.

    Args:
        model, model_params, epochs, batch_size, lr, optimizer, momentum, weight_decay,
            lr_schedule, warmup, label_smoothing, loss, max_grad_norm, augment, device,
            precision, seed, store, show_progress, executor, n_jobs, ray_address,
            threads_per_job: as for :class:`Retrain`; ``epochs`` is the budget of an
            unsliced shard, and a schedule runs over a shard's whole budget (the sum of the
            slices' epochs), so a slice's learning rates do not depend on later slices.
        n_shards: S, the number of isolated shard models.
        n_slices: R, checkpointed slices per shard.
        aggregation: ``"vote"`` or ``"mean"``.

    References:
        Bourtoule et al., "Machine Unlearning", IEEE S&P 2021, sections IV-V; official code
        ``cleverhans-lab/machine-unlearning`` (``sisa.py``, ``sharded.py``, ``aggregation.py``).
    """

    name = "sisa"
    summary = "exact: S isolated shard models trained on R checkpointed slices, aggregated"
    _parameter_constraints = {
        **ShardedStrategy._parameter_constraints,
        **RECIPE_OPTION_CONSTRAINTS,
        "n_shards": [Interval(int, 1, None)],
        "n_slices": [Interval(int, 1, None)],
        "aggregation": [Options(("vote", "mean"))],
    }

    def __init__(
        self,
        model: ModelSpec = "mlp",
        *,
        n_shards: int = 5,
        n_slices: int = 5,
        aggregation: str = "vote",
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
        self.n_shards = n_shards
        self.n_slices = n_slices
        self.aggregation = aggregation
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

    def _check_params(self) -> None:
        if self.n_slices > self.epochs * 2:
            # with fewer than one epoch per slice on average some slices get 0 epochs
            schedule = epoch_schedule(self.epochs, self.n_slices)
            if 0 in schedule:
                raise InvalidParameterError(
                    f"n_slices={self.n_slices} with epochs={self.epochs} leaves some slices with "
                    f"0 epochs (schedule {schedule}); use n_slices <= {2 * self.epochs}."
                )

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"model": "logreg", "n_shards": 3, "n_slices": 2, "epochs": 2, "batch_size": 16,
                "lr": 0.1, "momentum": 0.9}

    def partition(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, slice) of each id: see :func:`sisa_partition`."""
        return sisa_partition(int(self.seed), np.asarray(ids, dtype=np.int64),
                              self.n_shards, self.n_slices)

    def _block_epochs(self) -> tuple[int, ...]:
        return tuple(epoch_schedule(int(self.epochs), int(self.n_slices)))

    def _plans(self, data: IndexedDataset) -> list[BlockPlan]:
        shard, slice_ = self.partition(data.ids)
        schedule = self._block_epochs()
        plans = []
        for s in range(self.n_shards):
            in_shard = shard == s
            blocks = tuple(np.sort(data.ids[in_shard & (slice_ == r)])
                           for r in range(self.n_slices))
            plans.append(BlockPlan(blocks=blocks, epochs=schedule, cumulative=True))
        return plans

    def _aggregate(self, submodels: Sequence[Submodel], X: torch.Tensor) -> torch.Tensor:
        if self.aggregation == "mean":
            return super()._aggregate(submodels, X)
        active = [s for s in submodels if s.n_trained > 0] or list(submodels)
        votes = None
        for s in active:
            proba = self._submodel_proba(s, X)
            winner = proba.argmax(dim=1)
            one_hot = torch.nn.functional.one_hot(winner, proba.shape[1]).to(proba.dtype)
            votes = one_hot if votes is None else votes + one_hot
        assert votes is not None
        return votes / len(active)

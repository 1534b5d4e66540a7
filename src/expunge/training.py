"""The one deterministic training loop used by every strategy.

Determinism contract (what makes exact unlearning testable bitwise on CPU):

* the order of samples in an epoch is ``keyed_order(key(seed, submodel, block, epoch), ids)``:
  a function of the *set* of ids being trained on, never of positions or of earlier draws;
* the minibatches are consecutive runs of ``batch_size`` in that order (the last one may be
  short), so removing an id shifts later batches exactly as training without it would;
* any randomness inside the model (dropout) draws from torch's generator re-seeded per
  ``(seed, submodel, block, epoch)`` inside ``torch.random.fork_rng``, so it neither depends
  on nor disturbs anything outside the epoch;
* optimizer state (momentum, Adam moments) is carried in checkpoints; the learning rate is
  constant, so it is a function of nothing at all;
* the number of torch intra-op threads is pinned while a model trains
  (:func:`pinned_threads`): CPU kernels may sum in another order with another thread count,
  so the count is part of *what* is computed, in every executor, the serial one included;
* a :class:`StepRecipe` (the user's training recipe, :mod:`expunge.recipe`) may take over
  each gradient step: it is told the epoch's key, the step's index and the batch's sample
  ids, and derives everything it varies (learning rate, augmentation) from those alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from expunge._hashing import derive_key, keyed_order
from expunge.data import InputBatches
from expunge.exceptions import InvalidParameterError

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------ threads
def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


@contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; restore the old count after.

    Training is pinned because the number of intra-op threads can change the bits of CPU
    kernels (on this project's reference machine 1 and 2 threads give different weights for
    every reference model); the rest of the caller's work (prediction, evaluation) keeps
    its own setting. Cost: nothing when the count is already ``threads``.
    """
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass(frozen=True)
class TrainConfig:
    """How one sub-model is trained.

    Args:
        epochs: passes over the data (for sliced/blocked training: the budget of an
            unsliced run, spread over blocks by :func:`epoch_schedule`).
        batch_size: samples per gradient step.
        lr: learning rate (constant).
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"`` (Adam with decoupled weight decay,
            Loshchilov & Hutter 2019).
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 penalty added by the optimizer.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise InvalidParameterError(f"epochs must be an int >= 1; got {self.epochs!r}.")
        if (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                or self.batch_size < 1):
            raise InvalidParameterError(f"batch_size must be an int >= 1; got {self.batch_size!r}.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InvalidParameterError(f"lr must be a number > 0; got {self.lr!r}.")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise InvalidParameterError(
                f"optimizer must be 'sgd', 'adam' or 'adamw'; got {self.optimizer!r}."
            )
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise InvalidParameterError(f"momentum must be in [0, 1); got {self.momentum!r}.")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise InvalidParameterError(f"weight_decay must be >= 0; got {self.weight_decay!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def epoch_schedule(epochs: int, n_blocks: int) -> list[int]:
    """Epochs per cumulative block, SISA's schedule (``sisa.py``, ALGORITHMS.md section 3(b)).

    With ``ē = 2e/(B+1)``, block ``r`` (0-based) gets ``⌊(r+1)ē⌋ − ⌊rē⌋`` epochs. Block r
    trains on ``(r+1)/B`` of the data, so the total cost is about ``e`` full-data epochs
    whatever ``B`` is. Computed in integers so that no float rounding can differ by platform.
    """
    # floor((r+1) * 2e / (B+1)) in exact integer arithmetic
    return [((r + 1) * 2 * epochs) // (n_blocks + 1) - (r * 2 * epochs) // (n_blocks + 1)
            for r in range(n_blocks)]


def cross_entropy_loss(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``module(x)`` (logits) against labels ``y``."""
    return F.cross_entropy(module(x), y)


def make_optimizer(module: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config``, over the module's trainable parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


@dataclass(frozen=True)
class EpochKey:
    """Everything an epoch's randomness is keyed by."""

    seed: int
    submodel: int
    block: int
    epoch: int

    def order_key(self) -> int:
        return derive_key(self.seed, "order", self.submodel, self.block, self.epoch)

    def model_rng_seed(self) -> int:
        return derive_key(self.seed, "model-rng", self.submodel, self.block, self.epoch) >> 1


class StepRecipe(Protocol):
    """Takes over one gradient step of :func:`train_epochs` (see :mod:`expunge.recipe`)."""

    def step(self, module: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
             x: torch.Tensor, y: torch.Tensor, ids: np.ndarray, key: EpochKey, epoch: int,
             step: int, steps_per_epoch: int) -> None:
        """One step on batch ``(x, y)`` of sample ``ids``: step ``step`` of
        ``steps_per_epoch`` in the ``epoch``-th epoch of this call, keyed by ``key``."""


def train_epochs(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    X: torch.Tensor | InputBatches,
    y: torch.Tensor,
    ids: np.ndarray,
    *,
    config: TrainConfig,
    keys: list[EpochKey],
    loss_fn: LossFn = cross_entropy_loss,
    on_epoch: Callable[[], None] | None = None,
    recipe: StepRecipe | None = None,
) -> int:
    """Train ``module`` in place for ``len(keys)`` epochs on ``(X, y)`` with sample ``ids``.

    ``X[batch]`` gives a batch's model inputs: a tensor, or a dataset's
    :meth:`~expunge.data.IndexedDataset.batches` (rows gathered and transformed per batch).
    ``recipe`` (optional) runs each step instead of the plain
    ``zero_grad, loss, backward, step``. Returns the number of gradient steps taken. With no
    samples, nothing happens. Cost: ``len(keys) * len(ids)`` sample-passes (forward +
    backward).
    """
    n = len(ids)
    steps = 0
    if n == 0:
        return 0
    steps_per_epoch = -(-n // config.batch_size)
    module.train()
    for epoch, key in enumerate(keys):
        order = torch.from_numpy(keyed_order(key.order_key(), ids))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key.model_rng_seed())
            for step, start in enumerate(range(0, n, config.batch_size)):
                batch = order[start : start + config.batch_size]
                if recipe is not None:
                    recipe.step(module, optimizer, loss_fn, X[batch], y[batch],
                                ids[batch.numpy()], key, epoch, step, steps_per_epoch)
                    steps += 1
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(module, X[batch], y[batch])
                loss.backward()
                optimizer.step()
                steps += 1
        if on_epoch is not None:
            on_epoch()
    module.eval()
    return steps


@torch.no_grad()
def batched_forward(
    module: nn.Module, X: torch.Tensor, batch_size: int = 4096
) -> torch.Tensor:
    """``module(X)`` in eval mode, in chunks to bound memory."""
    was_training = module.training
    module.eval()
    outs = [module(X[i : i + batch_size]) for i in range(0, X.shape[0], batch_size)]
    module.train(was_training)
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)


__all__ = [
    "EpochKey",
    "TrainConfig",
    "available_cpus",
    "batched_forward",
    "cross_entropy_loss",
    "epoch_schedule",
    "make_optimizer",
    "pinned_threads",
    "train_epochs",
]

"""One gradient step of the user's recipe: schedule, augmentation, device, precision, clipping.

Everything a step varies is a function of the step's coordinates (sub-model, block, epoch,
step-in-block, steps per epoch of this block) and of its samples' ids, never of a global
RNG, of positions, or of samples outside the block: the condition under which the exact
strategies stay history independent (docs/guarantees.md, "Training recipes").
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from expunge.exceptions import InvalidParameterError
from expunge.recipe._augment import Augmentation, apply_augmentation, sample_keys
from expunge.recipe._schedules import Schedule, progress
from expunge.training import EpochKey, LossFn


@dataclass
class RecipeStep:
    """A :class:`expunge.training.StepRecipe` for one block of one sub-model.

    Args:
        base_lr: the recipe's ``lr``.
        schedule: ``progress -> factor`` (:func:`expunge.recipe.resolve_schedule`).
        epochs_before: epochs of the sub-model's budget spent before this block.
        total_epochs: the sub-model's whole budget, in epochs.
        augment: keyed augmentation, or ``None``.
        max_grad_norm: clip the global gradient norm to this, or ``None``.
        device: where the step runs (batches are moved there).
        autocast: ``torch.bfloat16``/``torch.float16`` to run forward and loss under
            autocast, or ``None`` (float32).
        scaler: a loss scaler for float16, fresh for every block (so that its state is a
            function of the block's content alone and needs no checkpoint).
    """

    base_lr: float
    schedule: Schedule
    epochs_before: int
    total_epochs: int
    augment: Augmentation | None = None
    max_grad_norm: float | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def lr_at(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """The learning rate of one step (see :mod:`expunge.recipe._schedules`)."""
        p = progress(self.epochs_before, epoch, step, steps_per_epoch, self.total_epochs)
        factor = self.schedule(p)
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 0):
            raise InvalidParameterError(
                f"The learning-rate schedule returned {factor!r} at progress {p:.4f}; it must "
                "return a finite number >= 0 (the factor applied to lr)."
            )
        return self.base_lr * float(factor)

    def step(self, module: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
             x: torch.Tensor, y: torch.Tensor, ids: np.ndarray, key: EpochKey, epoch: int,
             step: int, steps_per_epoch: int) -> None:
        lr = self.lr_at(epoch, step, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if x.device != self.device:
            x, y = x.to(self.device), y.to(self.device)
        if self.augment is not None:
            keys = sample_keys(key.seed, key.submodel, key.block, key.epoch, ids)
            x = apply_augmentation(self.augment, x, keys)
        optimizer.zero_grad(set_to_none=True)
        context = (torch.autocast(self.device.type, dtype=self.autocast)
                   if self.autocast is not None else contextlib.nullcontext())
        with context:
            loss = loss_fn(module, x, y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.max_grad_norm is not None:
                self.scaler.unscale_(optimizer)
                self._clip(optimizer)
            self.scaler.step(optimizer)
            self.scaler.update()
            return
        loss.backward()
        if self.max_grad_norm is not None:
            self._clip(optimizer)
        optimizer.step()

    def _clip(self, optimizer: torch.optim.Optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        assert self.max_grad_norm is not None
        nn.utils.clip_grad_norm_(params, self.max_grad_norm)

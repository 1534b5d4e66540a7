"""l1-sparse: fine-tuning on the retained data with a decaying L1 penalty."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from expunge._validation import Constraint, Interval
from expunge.models import ModelSpec
from expunge.strategies.approximate.baselines._base import (
    GRADIENT_CONSTRAINTS,
    RECIPE_CONSTRAINTS,
    GradientPatch,
    Outcome,
    Request,
)
from expunge.strategies.registry import register_strategy


@register_strategy
class L1Sparse(GradientPatch):
    """l1-sparse unlearning (Jia, Liu, Ram, Yao, Liu, Liu, Sharma & Liu, "Model Sparsity
    Can Simplify Machine Unlearning", NeurIPS 2023, section 5, eq. 5).

    **What it computes.** Fine-tuning on ``D_r`` with the objective
    ``CE + gamma_t * ||theta||_1`` where ``gamma_t`` decays linearly from ``l1_weight`` to 0
    over the run (``unlearn/FT.py`` with ``FT_l1`` in ``OPTML-Group/Unlearn-Sparse`` decays
    it per epoch; here per step, so fractional epochs decay too). Sparsity promotes
    forgetting: the paper's "prune first, then unlearn" insight in its one-shot,
    penalty form.

    **Guarantee:** approximate. **Cost per request:** as :class:`Finetune`
    (``unlearn_epochs * |D_r|`` sample-passes) plus an L1 norm per step.
    **Parameters that matter:** ``l1_weight`` (how much sparsity), ``unlearn_lr``,
    ``unlearn_epochs``.

    **Defaults** (tuned against Retrain on a separate tuning split, ``docs/baselines.md``,
    "Tuning"; MNIST MLP recipe): l1_weight=2.5e-4, unlearn_lr=0.5, unlearn_epochs=4, linear
    decay (1.5 points; 1.4 over three tuning seeds, where it is chosen again). Re-tune for
    another recipe with ``expunge tune``.

    Args:
        l1_weight: the initial weight of the L1 penalty (decays linearly to 0).
    """

    name = "l1_sparse"
    l1_weight: float
    summary = "approximate: fine-tune on retained data with a decaying L1 penalty (l1-sparse)"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **RECIPE_CONSTRAINTS, **GRADIENT_CONSTRAINTS,
        "l1_weight": [Interval(float, 0, None)]}

    def __init__(
        self, model: ModelSpec = "mlp", *, model_params: dict[str, Any] | None = None,
        epochs: int = 10, batch_size: int = 128, lr: float = 0.05, optimizer: str = "sgd",
        momentum: float = 0.0, weight_decay: float = 0.0, seed: int = 0,
        unlearn_seed: int | None = None, unlearn_lr: float = 0.5,
        unlearn_epochs: float = 4.0, unlearn_momentum: float = 0.9,
        unlearn_schedule: str = "linear", l1_weight: float = 2.5e-4,
        store: str | Path | None = None, show_progress: bool = False,
    ) -> None:
        self._set_params(locals())

    def _unlearn(self, request: Request) -> Outcome:
        params = [p for p in request.module.parameters() if p.requires_grad]
        weight = float(self.l1_weight)

        def penalty(index: int, n_steps: int) -> torch.Tensor:
            gamma = weight * (1.0 - index / n_steps)  # linear decay to 0
            return gamma * torch.stack([p.abs().sum() for p in params]).sum()

        return self._epochs_over(request.retained, request, "retain", "l1-sparse",
                                 penalty=penalty)

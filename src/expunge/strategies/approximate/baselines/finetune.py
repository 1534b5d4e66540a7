"""Fine-tuning (FT) on the retained data: the simplest approximate baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from expunge._validation import Constraint
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
class Finetune(GradientPatch):
    """Fine-tune the trained model on the retained data only (FT).

    **Follows** the "FT" baseline of Golatkar et al., "Eternal Sunshine of the Spotless
    Net" (CVPR 2020, section 5) and of the OPTML papers (Jia et al. 2023, "Model Sparsity
    Can Simplify Machine Unlearning", NeurIPS; Fan et al. 2024, SalUn, ICLR): continue
    training on ``D_r`` so that catastrophic forgetting erodes what only ``D_f`` taught.

    **What it computes.** ``unlearn_epochs`` passes of SGD (``unlearn_lr``,
    ``unlearn_momentum``, the recipe's batch size and weight decay) over ``D_r`` in keyed
    order, starting from the trained model. A larger learning rate than training's is what
    makes it forget: at the training rate the memorised samples stay memorised.

    **Guarantee:** approximate; nothing bounds what remains of ``D_f``.
    **Cost per request:** ``unlearn_epochs * |D_r|`` sample-passes (a fraction
    ``unlearn_epochs / epochs`` of retraining).
    **Parameters that matter:** ``unlearn_lr`` (forgetting vs damage) and
    ``unlearn_epochs`` (cost).

    **Defaults** (tuned against Retrain on a separate tuning split, ``docs/baselines.md``,
    "Tuning"; MNIST MLP recipe): unlearn_lr=0.7, unlearn_epochs=7, linear decay (mean Avg.
    Gap 1.6 points on the tuning problem; 1.5 over three tuning seeds, where it is chosen
    again). Re-tune for another recipe with ``expunge tune``.
    """

    name = "finetune"
    summary = "approximate: fine-tune on the retained data (FT)"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **RECIPE_CONSTRAINTS, **GRADIENT_CONSTRAINTS}

    def __init__(
        self, model: ModelSpec = "mlp", *, model_params: dict[str, Any] | None = None,
        epochs: int = 10, batch_size: int = 128, lr: float = 0.05, optimizer: str = "sgd",
        momentum: float = 0.0, weight_decay: float = 0.0, seed: int = 0,
        unlearn_seed: int | None = None, unlearn_lr: float = 0.7,
        unlearn_epochs: float = 7.0, unlearn_momentum: float = 0.9,
        unlearn_schedule: str = "linear",
        store: str | Path | None = None, show_progress: bool = False,
    ) -> None:
        self._set_params(locals())

    def _unlearn(self, request: Request) -> Outcome:
        return self._epochs_over(request.retained, request, "retain", "finetune")

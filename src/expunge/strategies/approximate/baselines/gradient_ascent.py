"""Gradient ascent (GA) on the forget set."""

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
class GradientAscent(GradientPatch):
    """Gradient ascent on the forget set (GA, "NegGrad").

    **Follows** Thudi et al., "Unrolling SGD: Understanding Factors Influencing Machine
    Unlearning" (EuroS&P 2022) and the "GA"/"NegGrad" baseline of Golatkar et al. (2020),
    Kurmanji et al. (SCRUB, NeurIPS 2023) and Jia et al. (2023): undo training on ``D_f``
    by climbing its loss.

    **What it computes.** ``unlearn_epochs`` passes of SGD on ``-CE`` over ``D_f`` in keyed
    order. Nothing anchors the retained data, so too many steps or too large a rate
    destroys the model (the field's "collapse to 10 %"): the useful window is narrow,
    which is why the defaults are small and tuned.

    **Guarantee:** approximate. **Cost per request:** ``unlearn_epochs * |D_f|``
    sample-passes, independent of ``|D_r|``: the cheapest gradient method.
    **Parameters that matter:** ``unlearn_lr`` x ``unlearn_epochs`` (the total ascent).

    **Defaults** (tuned against Retrain on a separate tuning split, ``docs/baselines.md``,
    "Tuning"; MNIST MLP recipe): unlearn_lr=0.15, one epoch, no momentum (12.7 points: no
    setting forgets the memorised set without collapsing a class). Re-tune for another
    recipe with ``expunge tune``.
    """

    name = "gradient_ascent"
    summary = "approximate: gradient ascent on the forget set (GA)"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **RECIPE_CONSTRAINTS, **GRADIENT_CONSTRAINTS}

    def __init__(
        self, model: ModelSpec = "mlp", *, model_params: dict[str, Any] | None = None,
        epochs: int = 10, batch_size: int = 128, lr: float = 0.05, optimizer: str = "sgd",
        momentum: float = 0.0, weight_decay: float = 0.0, seed: int = 0,
        unlearn_seed: int | None = None, unlearn_lr: float = 0.15,
        unlearn_epochs: float = 1.0, unlearn_momentum: float = 0.0,
        unlearn_schedule: str = "constant",
        store: str | Path | None = None, show_progress: bool = False,
    ) -> None:
        self._set_params(locals())

    def _unlearn(self, request: Request) -> Outcome:
        return self._epochs_over(request.forget, request, "forget", "gradient ascent",
                                 sign=-1.0)

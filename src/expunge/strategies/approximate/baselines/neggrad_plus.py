"""NegGrad+: descend on the retained data while ascending on the forget set."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from expunge._validation import Constraint, Interval
from expunge.models import ModelSpec
from expunge.strategies.approximate.baselines._base import (
    GRADIENT_CONSTRAINTS,
    RECIPE_CONSTRAINTS,
    GradientPatch,
    Outcome,
    Request,
    steps_for,
)
from expunge.strategies.registry import register_strategy
from expunge.training import cross_entropy_loss


@register_strategy
class NegGradPlus(GradientPatch):
    """NegGrad+ (Kurmanji, Triantafillou, Hayes & Triantafillou, "Towards Unbounded
    Machine Unlearning", NeurIPS 2023, section 5 baselines).

    **What it computes.** SGD on ``alpha * CE(D_r batch) - (1 - alpha) * CE(D_f batch)``:
    each step takes the next retained batch and the next forget batch (the forget set is
    cycled), for ``unlearn_epochs`` passes over ``D_r``. The retained term anchors the
    model, which is what plain gradient ascent lacks; DeepUnlearn (arXiv 2410.01276) found
    NegGrad+, tuned, the baseline to beat.

    **Guarantee:** approximate. **Cost per request:** ``unlearn_epochs * (|D_r| + steps *
    batch_size)`` sample-passes: about twice fine-tuning's.
    **Parameters that matter:** ``alpha`` (how hard to push the forget set away),
    ``unlearn_lr``, ``unlearn_epochs``.

    **Defaults** (tuned against Retrain on a separate tuning split, ``docs/baselines.md``,
    "Tuning"; MNIST MLP recipe): alpha=0.9, unlearn_lr=0.1, one epoch, linear decay (6.6
    points). Re-tune for another recipe with ``expunge tune``.

    Args:
        alpha: the weight of the retained loss; ``1 - alpha`` weighs the ascent on ``D_f``.
    """

    name = "neggrad_plus"
    alpha: float
    summary = "approximate: descend on retained data, ascend on the forget set (NegGrad+)"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **RECIPE_CONSTRAINTS, **GRADIENT_CONSTRAINTS,
        "alpha": [Interval(float, 0, 1, closed="neither")]}

    def __init__(
        self, model: ModelSpec = "mlp", *, model_params: dict[str, Any] | None = None,
        epochs: int = 10, batch_size: int = 128, lr: float = 0.05, optimizer: str = "sgd",
        momentum: float = 0.0, weight_decay: float = 0.0, seed: int = 0,
        unlearn_seed: int | None = None, unlearn_lr: float = 0.1,
        unlearn_epochs: float = 1.0, unlearn_momentum: float = 0.9,
        unlearn_schedule: str = "linear", alpha: float = 0.9,
        store: str | Path | None = None, show_progress: bool = False,
    ) -> None:
        self._set_params(locals())

    def _unlearn(self, request: Request) -> Outcome:
        module, retained, forget = request.module, request.retained, request.forget
        retain_stream = self._stream(retained, request, "retain")
        forget_stream = self._stream(forget, request, "forget")
        n_steps = steps_for(self.unlearn_epochs, len(retained), self.batch_size)
        alpha = float(self.alpha)

        def step(_: int) -> tuple[Any, int]:
            r, f = retain_stream.next(), forget_stream.next()
            loss = (alpha * cross_entropy_loss(module, retained.inputs(r), retained.y[r])
                    - (1 - alpha) * cross_entropy_loss(module, forget.inputs(f), forget.y[f]))
            return loss, len(r) + len(f)

        passes = self._descend(module, n_steps, step, request,
                                 description="NegGrad+")
        return Outcome(passes, len(retained) + len(forget), {"steps": n_steps})

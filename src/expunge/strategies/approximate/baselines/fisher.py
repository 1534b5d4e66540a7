"""Fisher forgetting: noise shaped by the inverse Fisher of the retained data."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from expunge._hashing import derive_key
from expunge._validation import Constraint, Interval, Options
from expunge.models import ModelSpec
from expunge.strategies.approximate.baselines._base import (
    RECIPE_CONSTRAINTS,
    Outcome,
    PatchStrategy,
    Request,
)
from expunge.strategies.approximate.baselines._curvature import diagonal_fisher
from expunge.strategies.registry import register_strategy

#: caps of the per-weight variance before scaling by alpha, from the official code
#: (``get_mean_var`` in ``AdityaGolatkar/SelectiveForgetting``): 1e3, 1e2 for the output layer
VARIANCE_CAP, OUTPUT_VARIANCE_CAP = 1e3, 1e2
#: the official code scales the output layer's (and biases') variance up by 10
OUTPUT_SCALE = 10.0


@register_strategy
class FisherForgetting(PatchStrategy):
    """Fisher forgetting (Golatkar, Achille & Soatto, "Eternal Sunshine of the Spotless
    Net: Selective Forgetting in Deep Networks", CVPR 2020, section 4, eq. 9-10; code
    ``AdityaGolatkar/SelectiveForgetting``).

    **What it computes.** The diagonal Fisher ``F`` of the *retained* data at the trained
    weights (``fisher="expected"``: under the model's own predictive distribution, as the
    paper; ``"empirical"``: with the true labels, ``K`` times cheaper), then Gaussian noise
    ``theta <- theta + sqrt(var) * N(0, 1)`` with ``var = alpha * min(1 / (F + 1e-8), cap)``:
    weights the retained data does not pin down (small ``F``) are scrambled, the ones it
    needs are kept. As in the official code, a weight matrix's variance is averaged over
    its inputs (one value per output unit), the cap is 1e3 (1e2 for the output layer), and
    the output layer's and biases' variances are multiplied by 10. The noise is keyed by
    the request (``unlearn_seed``). The paper's class-specific trick (zeroing a forgotten
    class's output weights) is not applied.

    **Disk.** ``F`` is computed inside the request and never stored.
    **Guarantee:** approximate (the paper bounds the remaining information only for a
    quadratic loss). **Cost per request:** ``K`` passes over ``D_r`` (``"expected"``) or one
    (``"empirical"``); no gradient step.
    **Parameters that matter:** ``alpha`` (the noise scale: too small does nothing, too
    large destroys the model; the field's untuned runs sit at either end).

    **Defaults** (tuned against Retrain on a separate tuning split, ``docs/baselines.md``,
    "Tuning"; MNIST MLP recipe): alpha=5e-6, empirical Fisher (20.1 points: no noise level
    forgets a class). Re-tune for another recipe with ``expunge tune``.

    Args:
        alpha: the noise scale (variance ``alpha / F`` per weight, capped).
        fisher: ``"empirical"`` (gradients at the labels) or ``"expected"`` (under the
            model's own predictive distribution).
    """

    name = "fisher"
    alpha: float
    fisher: str
    summary = "approximate: noise shaped by the retained data's inverse Fisher (Golatkar)"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **RECIPE_CONSTRAINTS,
        "alpha": [Interval(float, 0, None, closed="neither")],
        "fisher": [Options(("expected", "empirical"))],
    }

    def __init__(
        self, model: ModelSpec = "mlp", *, model_params: dict[str, Any] | None = None,
        epochs: int = 10, batch_size: int = 128, lr: float = 0.05, optimizer: str = "sgd",
        momentum: float = 0.0, weight_decay: float = 0.0, seed: int = 0,
        unlearn_seed: int | None = None, alpha: float = 5e-6, fisher: str = "empirical",
        store: str | Path | None = None, show_progress: bool = False,
    ) -> None:
        self._set_params(locals())

    def _unlearn(self, request: Request) -> Outcome:
        module, retained = request.module, request.retained
        n_classes = request.before.n_classes
        # the official code finds the output layer by its size (p.size(0) == K); here it is
        # the last module with parameters, which a hidden layer of width K cannot be taken for
        if len(retained) == 0:
            return Outcome(0, 0, {"note": "nothing retained: no Fisher, no noise"})
        kind = "expected" if self.fisher == "expected" else "empirical"
        fisher = diagonal_fisher(request.original, retained.inputs(), retained.y,
                                 kind=kind)  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(derive_key(request.key, "noise") >> 1)
        alpha = float(self.alpha)
        output_names = _output_layer(module)
        norm = 0.0
        with torch.no_grad():
            for name, p in module.named_parameters():
                is_output = name in output_names
                cap = OUTPUT_VARIANCE_CAP if is_output else VARIANCE_CAP
                var = (1.0 / (fisher[name] + 1e-8)).clamp(max=cap) * alpha
                if p.ndim > 1:
                    var = var.mean(dim=1, keepdim=True).expand_as(p)
                if is_output or p.ndim == 1:
                    var = var * OUTPUT_SCALE
                noise = torch.randn(p.shape, generator=generator, dtype=p.dtype) * var.sqrt()
                p.add_(noise)
                norm += float((noise**2).sum())
        passes = len(retained) * (n_classes if kind == "expected" else 1)
        return Outcome(passes, 0, {"noise_norm": norm**0.5, "fisher": kind})


def _output_layer(module: torch.nn.Module) -> set[str]:
    """Names of the parameters of the last module that has parameters."""
    owners = [(name, m) for name, m in module.named_modules()
              if any(True for _ in m.parameters(recurse=False))]
    if not owners:
        return set()
    prefix, last = owners[-1]
    return {f"{prefix}.{n}" if prefix else n for n, _ in last.named_parameters(recurse=False)}

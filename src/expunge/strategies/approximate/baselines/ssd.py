"""Selective synaptic dampening (SSD): shrink the weights the forget set relies on most."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from expunge._hashing import sha256_ids
from expunge._progress import Progress
from expunge._validation import Constraint, Interval, Options
from expunge.data import IndexedDataset
from expunge.models import ModelSpec
from expunge.strategies.approximate.baselines._base import (
    RECIPE_CONSTRAINTS,
    Outcome,
    PatchStrategy,
    Request,
    module_fingerprint,
)
from expunge.strategies.approximate.baselines._curvature import diagonal_fisher
from expunge.strategies.registry import register_strategy

CACHE_KIND = "ssd-training-importance"


def _importance_blob(module: nn.Module, data: IndexedDataset) -> tuple[
        str, tuple[dict[str, torch.Tensor], dict[str, str]]]:
    """The training data's Fisher diagonal at the module's weights, as a named blob."""
    fingerprint = module_fingerprint(module)
    ids_hash = sha256_ids(data.ids)
    fisher = diagonal_fisher(module, data.inputs(), data.y, kind="empirical")
    name = f"ssd/importance-{fingerprint[:16]}-{ids_hash[:16]}"
    return name, (fisher, {"kind": CACHE_KIND, "model_fingerprint": fingerprint,
                           "ids_sha256": ids_hash, "n": str(len(data))})


@register_strategy
class SSD(PatchStrategy):
    """Selective Synaptic Dampening (Foster, Schoepf & Brintrup, "Fast Machine Unlearning
    Without Retraining Through Selective Synaptic Dampening", AAAI 2024, section 3).

    **What it computes.** Parameter importances are diagonal Fisher information values:
    ``I_D`` over the training data before the request and ``I_f`` over the forget set
    (mean squared per-sample gradient of the cross-entropy; the paper's code squares
    mini-batch gradients, here they are exact per-sample values from the curvature
    adapter). Every parameter with ``I_f > alpha * I_D`` is specialised to the forget set
    and is multiplied by ``min(dampening * I_D / I_f, 1)``; the rest stay as trained.
    Retrain-free: no gradient step is taken.

    **Disk.** ``I_D`` is computed once after training and kept in the store
    (``ssd/importance-...``, counted in the store's size) so that the first request costs
    only a pass over ``D_f``. It was computed on data that includes the samples a request
    forgets, so every request drops it; with ``refresh="eager"`` the request recomputes it
    on the retained data at the new weights (one more pass over ``D_r``), with ``"lazy"``
    the next request does.

    **Guarantee:** approximate; highly sensitive to the training seed (Lanyon et al., arXiv
    2510.26714). **Cost per request:** a pass over ``D_f`` (+ a pass over the training data
    when ``I_D`` is not cached). **Parameters that matter:** ``alpha`` (selection: lower
    dampens more parameters) and ``dampening`` (lambda: lower dampens harder).

    **Defaults** (tuned against Retrain on a separate tuning split, ``docs/baselines.md``,
    "Tuning"; MNIST MLP recipe): alpha=5, dampening=0.5 (6.9 points; the paper's alpha=10,
    lambda=1 dampen nothing here). Re-tune for another recipe with ``expunge tune``.

    Args:
        alpha: selection: a weight is dampened where ``I_f > alpha * I_D``.
        dampening: lambda: a selected weight is multiplied by ``min(lambda I_D / I_f, 1)``.
        refresh: ``"lazy"`` (recompute ``I_D`` when a request needs it) or ``"eager"``
            (each request recomputes it on the retained data for the next).
    """

    name = "ssd"
    alpha: float
    dampening: float
    refresh: str
    summary = "approximate: dampen the weights most important to the forget set (SSD)"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **RECIPE_CONSTRAINTS,
        "alpha": [Interval(float, 0, None, closed="neither")],
        "dampening": [Interval(float, 0, None, closed="neither")],
        "refresh": [Options(("lazy", "eager"))],
    }

    def __init__(
        self, model: ModelSpec = "mlp", *, model_params: dict[str, Any] | None = None,
        epochs: int = 10, batch_size: int = 128, lr: float = 0.05, optimizer: str = "sgd",
        momentum: float = 0.0, weight_decay: float = 0.0, seed: int = 0,
        unlearn_seed: int | None = None, alpha: float = 5.0, dampening: float = 0.5,
        refresh: str = "lazy", store: str | Path | None = None, show_progress: bool = False,
    ) -> None:
        self._set_params(locals())

    def _after_fit(self, module: nn.Module, data: IndexedDataset, progress: Progress
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
        name, blob = _importance_blob(module, data)
        return {}, {name: blob}

    def _unlearn(self, request: Request) -> Outcome:
        module, before = request.module, request.before
        fingerprint, ids_hash = request.fitted.fingerprint(), sha256_ids(before.ids)
        cached = [tensors for tensors, meta in request.fitted.caches.values()
                  if meta.get("kind") == CACHE_KIND and meta.get("model_fingerprint")
                  == fingerprint and meta.get("ids_sha256") == ids_hash]
        passes = len(request.forget)
        if cached:
            importance = cached[0]
        else:
            importance = diagonal_fisher(request.original, before.inputs(), before.y)
            passes += len(before)
        forget_importance = diagonal_fisher(request.original, request.forget.inputs(),
                                            request.forget.y)
        alpha, dampening = float(self.alpha), float(self.dampening)
        selected = total = 0
        with torch.no_grad():
            for name, p in module.named_parameters():
                i_d, i_f = importance[name], forget_importance[name]
                chosen = i_f > alpha * i_d
                factor = torch.where(chosen, (dampening * i_d / i_f.clamp_min(1e-30))
                                     .clamp(max=1.0), torch.ones_like(i_d))
                p.mul_(factor.to(p.dtype))
                selected += int(chosen.sum())
                total += chosen.numel()
        caches = {}
        if self.refresh == "eager" and len(request.retained):
            name, blob = _importance_blob(module, request.retained)
            caches[name] = blob
            passes += len(request.retained)
        return Outcome(passes, 0, {"importance_cached": bool(cached),
                                   "dampened_share": selected / max(1, total)},
                       caches=caches)

"""Naive influence removal: PUMA's patch without the re-weighting (the baseline of E1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from expunge._validation import Constraint
from expunge.data import IndexedDataset
from expunge.models import ModelSpec
from expunge.strategies.approximate.puma.strategy import CURVATURE_CONSTRAINTS, PUMA
from expunge.strategies.registry import register_strategy


@register_strategy
class NaiveInfluence(PUMA):
    """Naive influence removal: the forgotten samples get weight 0 and the model takes one
    Newton step of the retained objective, with no re-weighting (Koh & Liang 2017's
    influence removal with Guo et al. 2020's retained curvature, without their noise).

    The step is PUMA's gradient-difference patch with ``e = 0``:
    ``theta <- theta + H_R^{-1} sum_M (g_i - g_bar) / (n - m)``, ``H_R`` the whole-network
    K-FAC curvature of the retained samples (or an exact solver's). For L2-regularised
    logistic regression at its optimum and one sample, it is exactly Guo et al.'s Newton
    removal step, within ``O(1/n^2)`` of leave-one-out retraining; nothing is certified.

    **Guarantee:** approximate (as :class:`PUMA`). **Cost:** PUMA's without the scores of
    the candidates. It keeps PUMA's small validation split by default (``val_fraction``
    0.02), so that it starts from the same model as a PUMA with the same seed and its
    damping rule has held-out data; ``val_fraction=0`` with a fixed ``damping`` trains on
    everything. Parameters are PUMA's without ``eta``, ``sparsity``, ``criterion``,
    ``candidates`` and ``pgd_steps``.
    """

    name = "influence"
    summary = ("approximate: naive influence removal (one whole-network Newton step, "
               "no re-weighting)")
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = dict(CURVATURE_CONSTRAINTS)
    _request_params = PUMA._request_params - {"eta", "sparsity", "pgd_steps", "candidates"}
    reweights = False

    def __init__(
        self,
        model: ModelSpec | nn.Module = "mlp",
        *,
        model_params: dict[str, Any] | None = None,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 0.05,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 5e-4,
        seed: int = 0,
        validation: IndexedDataset | None = None,
        val_fraction: float = 0.02,
        solver: str = "kfac",
        damping: float | str = "auto",
        scope: str = "all",
        hessian: str = "ggn",
        cache_samples: int | None = 1024,
        preconditioner: str = "kfac",
        tol: float = 1e-5,
        max_iter: int = 200,
        lissa_depth: int = 1000,
        lissa_batch: int = 256,
        patch_hessian: str = "reweighted",
        newton_steps: int | str = "auto",
        class_newton_steps: int = 5,
        retained_guard: float | None = 1.0,
        refresh_after: float | None = 0.1,
        dtype: str = "auto",
        store: str | Path | None = None,
        show_progress: bool = False,
    ) -> None:
        super().__init__(
            model, model_params=model_params, epochs=epochs, batch_size=batch_size, lr=lr,
            optimizer=optimizer, momentum=momentum, weight_decay=weight_decay, seed=seed,
            validation=validation, val_fraction=val_fraction, eta=0.0, sparsity=1.0,
            criterion="loss", candidates=0, solver=solver, damping=damping, scope=scope,
            hessian=hessian, cache_samples=cache_samples, preconditioner=preconditioner,
            tol=tol, max_iter=max_iter, lissa_depth=lissa_depth, lissa_batch=lissa_batch,
            pgd_steps=1, patch_hessian=patch_hessian, newton_steps=newton_steps,
            class_newton_steps=class_newton_steps, retained_guard=retained_guard,
            refresh_after=refresh_after, dtype=dtype,
            store=store, show_progress=show_progress,
        )

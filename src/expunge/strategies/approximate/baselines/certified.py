"""Certified removal (Guo et al. 2020) for the convex head of a network."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from expunge._hashing import derive_key
from expunge._progress import Progress
from expunge._validation import Constraint, Interval, Options
from expunge.data import IndexedDataset
from expunge.exceptions import InvalidRequestError, UnsupportedModelError
from expunge.models import ModelSpec
from expunge.strategies.approximate.baselines._base import (
    RECIPE_CONSTRAINTS,
    Outcome,
    PatchStrategy,
    Request,
    module_fingerprint,
)
from expunge.strategies.approximate.baselines._curvature import logistic_head_hessian
from expunge.strategies.registry import register_strategy

#: Lipschitz constant of the logistic loss's second derivative, as Guo et al. use it
#: (``|l'''| <= 1/(6 sqrt 3) < 1/4``): the gradient-residual bound's ``gamma``
GAMMA = 0.25
#: Newton until the head's gradient norm is below this (it is added to the spent budget:
#: the certificate assumes an exact minimiser)
SOLVE_TOL = 1e-10
HEAD_KIND = "certified-head"


class RemovalBudgetExhausted(InvalidRequestError):
    """The request would spend more than the certified-removal budget (``on_budget="error"``)."""


def _ovr_targets(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(n, K)`` one-vs-rest targets in {-1, +1}."""
    return F.one_hot(y.long(), n_classes).to(torch.float64) * 2 - 1


def _objective_grad(W: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, l2: float,
                    b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over classes of ``sum_i log(1 + exp(-y z)) + l2 n / 2 ||w||^2 + b^T w`` and its
    gradient; ``W`` is ``(K, d)``, ``X`` ``(n, d)``, ``Y`` ``(n, K)``."""
    n = X.shape[0]
    Z = X @ W.T
    value = F.softplus(-Y * Z).sum() + 0.5 * l2 * n * (W * W).sum() + (b * W).sum()
    grad = (-(Y * torch.sigmoid(-Y * Z))).T @ X + l2 * n * W + b
    return value, grad


def _hessians(W: torch.Tensor, X: torch.Tensor, l2_total: float) -> list[torch.Tensor]:
    s = torch.sigmoid(X @ W.T)
    return [logistic_head_hessian(X, s[:, k] * (1 - s[:, k]), l2_total)
            for k in range(W.shape[0])]


def solve_head(X: torch.Tensor, Y: torch.Tensor, l2: float, b: torch.Tensor,
               start: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """The minimiser of the perturbed one-vs-rest objective (float64); and ``||grad||``.

    Newton's method per class with the exact Hessians and Armijo backtracking (the
    objective is strongly convex), from ``start`` (zero by default), until the gradient
    norm is below :data:`SOLVE_TOL` or 50 iterations. Warm-started from a nearby optimum
    (after a removal) it takes one to three steps.
    """
    K, d = b.shape
    W = torch.zeros(K, d, dtype=torch.float64) if start is None else start.clone()
    n = X.shape[0]
    value, grad = _objective_grad(W, X, Y, l2, b)
    for _ in range(50):
        if float(torch.linalg.vector_norm(grad)) <= SOLVE_TOL:
            break
        direction = torch.stack([torch.linalg.solve(H, grad[k])
                                 for k, H in enumerate(_hessians(W, X, l2 * n))])
        slope = float((grad * direction).sum())
        step = 1.0
        while True:
            trial = W - step * direction
            trial_value, trial_grad = _objective_grad(trial, X, Y, l2, b)
            if float(trial_value) <= float(value) - 1e-4 * step * slope or step < 1e-6:
                break
            step /= 2
        if float(trial_value) > float(value):  # no decrease left: at machine precision
            break
        W, value, grad = trial, trial_value, trial_grad
    return W, float(torch.linalg.vector_norm(grad))


@register_strategy
class CertifiedRemoval(PatchStrategy):
    """Certified removal for the convex head (Guo, Goldstein, Hannun & van der Maaten,
    "Certified Data Removal from Machine Learning Models", ICML 2020, sections 3-4).

    **What it computes.** The network's last linear layer is replaced by ``K`` one-vs-rest
    L2-regularised logistic regressions on the features below it (with a bias column),
    trained on the *loss-perturbed* objective ``sum_i l(w^T x_i, y_i) + l2 n/2 ||w||^2 +
    b^T w`` with ``b ~ N(0, sigma^2 I)`` (keyed by ``seed``: independent of the data) and
    solved to ``||grad|| <= 1e-10``. ``predict_proba`` is the softmax of the ``K`` scores.
    ``forget(ids)`` takes one Newton step per class on the retained objective,
    ``w <- w + H^{-1} Delta``, ``Delta = sum_F grad l_i + l2 m w`` with the exact Hessian
    ``H`` of the retained objective (Algorithm 1), and adds the data-dependent
    gradient-residual bound ``gamma ||X|| ||H^{-1} Delta|| ||X H^{-1} Delta||``
    (Corollary 1, ``gamma = 1/4``; over the stacked classes, the root sum of squares) to
    the spent budget ``beta``. Theorem 3: while ``beta <= sigma * epsilon / c`` with
    ``c = sqrt(2 ln(1.5 / delta))`` the removals are ``(epsilon, delta)``-certified. A
    request that would exceed it retrains the head exactly on the retained data with
    fresh noise (``on_budget="retrain"``, ``beta`` restarts at the solver's residual), or
    raises :class:`RemovalBudgetExhausted` and changes nothing (``"error"``).

    **What is certified.** The certificate covers the head given its input features. For
    ``model="logreg"`` the features are the raw inputs (no parameters below the head), so
    it covers the whole model and the ledger records ``"certified"`` with ``epsilon`` and
    ``delta``. For a network whose layers below the head were trained on the data (the
    default ``"mlp"``), those layers still carry every training sample: the ledger then
    records ``"approximate"`` and ``details["certificate"]["scope"] == "head"``.

    **Disk.** The float64 head (``certified/head-...``) and the module; ``beta`` and the
    noise draw in the committed state. Features, Hessians and the forget set's gradients
    live in memory during the request only; the noise is regenerated from ``seed``.

    **Cost.** Fit: the recipe's training (when there are layers below the head) plus the
    head solve. Per request: one forward pass over ``D_r`` for the features and ``K``
    Hessians ``X^T diag(s) X`` (``K n d^2``) with their Cholesky solves.
    **Parameters that matter:** ``sigma`` (noise: larger = more removals before a
    retrain, less accuracy), ``l2`` (stronger = smaller residuals, less accuracy),
    ``epsilon``/``delta`` (the certificate asked for).

    **Defaults** (tuned against Retrain on a separate tuning split, ``docs/baselines.md``,
    "Tuning"; MNIST MLP recipe): l2=0.1, sigma=10 (6.0 points), epsilon=1, delta=1e-4. Re-
    tune for another recipe with ``expunge tune``.

    Args:
        l2: the L2 regularisation of the head (stronger: smaller residuals, less accuracy).
        sigma: the standard deviation of the loss perturbation ``b``.
        epsilon, delta: the ``(epsilon, delta)`` certificate asked for.
        on_budget: when the removal budget runs out: ``"retrain"`` the head exactly, or
            ``"error"`` (raise :class:`RemovalBudgetExhausted`, change nothing).
    """

    name = "certified"
    l2: float
    sigma: float
    epsilon: float
    delta: float
    on_budget: str
    guarantee = "certified"
    summary = ("certified: Newton removal with loss perturbation on the convex head "
               "(Guo et al.); (epsilon, delta) in the ledger")
    fits_like_retrain = False
    #: the head is solved at fit with ``l2`` and the noise ``sigma``; ``epsilon``/``delta``
    #: are the certificate the whole ledger is judged against, so none may change on open
    _fit_params = PatchStrategy._fit_params | {"l2", "sigma", "epsilon", "delta"}
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **RECIPE_CONSTRAINTS,
        "l2": [Interval(float, 0, None, closed="neither")],
        "sigma": [Interval(float, 0, None, closed="neither")],
        "epsilon": [Interval(float, 0, None, closed="neither")],
        "delta": [Interval(float, 0, 1, closed="neither")],
        "on_budget": [Options(("retrain", "error"))],
    }

    def __init__(
        self, model: ModelSpec = "mlp", *, model_params: dict[str, Any] | None = None,
        epochs: int = 10, batch_size: int = 128, lr: float = 0.05, optimizer: str = "sgd",
        momentum: float = 0.0, weight_decay: float = 0.0, seed: int = 0,
        unlearn_seed: int | None = None, l2: float = 0.1, sigma: float = 10.0,
        epsilon: float = 1.0, delta: float = 1e-4, on_budget: str = "retrain",
        store: str | Path | None = None, show_progress: bool = False,
    ) -> None:
        self._set_params(locals())

    # ---------------------------------------------------------------- pieces
    @property
    def budget(self) -> float:
        """``sigma * epsilon / c``: the gradient residual the certificate tolerates."""
        return float(self.sigma) * float(self.epsilon) / math.sqrt(
            2 * math.log(1.5 / float(self.delta)))

    @staticmethod
    def _split(module: nn.Module) -> tuple[nn.Module, nn.Linear]:
        if not (isinstance(module, nn.Sequential) and len(module)
                and isinstance(module[-1], nn.Linear)):
            raise UnsupportedModelError(
                "certified removal needs an nn.Sequential whose last layer is nn.Linear (the "
                f"convex head); got {type(module).__name__}. Use model='logreg' or 'mlp'."
            )
        return module[:-1], module[-1]

    def _features(self, module: nn.Module, data: IndexedDataset) -> torch.Tensor:
        body, _ = self._split(module)
        with torch.no_grad():
            phi = torch.cat([body(x) for x in data.iter_inputs()]
                            ) if len(data) else torch.empty(0, 0)
        phi = phi.reshape(len(data), -1).to(torch.float64)
        return torch.cat([phi, torch.ones(len(data), 1, dtype=torch.float64)], dim=1)

    def _noise(self, draw: int, shape: tuple[int, int]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(
            derive_key(int(self.seed), "certified-noise", draw) >> 1)
        return torch.randn(shape, generator=generator, dtype=torch.float64) * float(self.sigma)

    def _scope(self, module: nn.Module) -> str:
        body, _ = self._split(module)
        return "head" if any(True for _ in body.parameters()) else "model"

    @staticmethod
    def _head_blob(W: torch.Tensor, module: nn.Module
                   ) -> tuple[str, tuple[dict[str, torch.Tensor], dict[str, str]]]:
        name = f"certified/head-{module_fingerprint(module)[:32]}"
        return name, ({"W": W.clone()}, {"kind": HEAD_KIND})

    @staticmethod
    def _set_head(module: nn.Module, W: torch.Tensor) -> None:
        head = list(module.children())[-1]
        assert isinstance(head, nn.Linear)
        with torch.no_grad():
            head.weight.copy_(W[:, :-1].to(head.weight.dtype))
            if head.bias is not None:
                head.bias.copy_(W[:, -1].to(head.bias.dtype))

    def _solve(self, module: nn.Module, data: IndexedDataset, draw: int,
               start: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        X = self._features(module, data)
        b = self._noise(draw, (data.n_classes, X.shape[1]))
        return solve_head(X, _ovr_targets(data.y, data.n_classes), float(self.l2), b, start)

    # ------------------------------------------------------------------- fit
    def _train(self, data: IndexedDataset, progress: Progress) -> nn.Module:
        module = self._new_module(data.input_shape, data.n_classes)
        if self._scope(module) == "model":  # nothing below the head to train
            return module.eval()
        return super()._train(data, progress)

    @staticmethod
    def _current_head(module: nn.Module) -> torch.Tensor:
        head = list(module.children())[-1]
        assert isinstance(head, nn.Linear)
        bias = head.bias if head.bias is not None else torch.zeros(head.out_features)
        return torch.cat([head.weight.detach(), bias.detach()[:, None]], dim=1).double()

    def _after_fit(self, module: nn.Module, data: IndexedDataset, progress: Progress
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
        # warm start from the trained network's own last layer: L-BFGS needs fewer steps
        start = self._current_head(module) if self._scope(module) == "head" else None
        W, residual = self._solve(module, data, draw=0, start=start)
        self._set_head(module, W)
        name, blob = self._head_blob(W, module)
        return {"beta": residual, "draw": 0, "scope": self._scope(module)}, {name: blob}

    def _guarantee_now(self) -> str:
        fitted = getattr(self, "fitted_", None)
        scope = (fitted.extra.get("scope") if fitted is not None else None) or "head"
        return "certified" if scope == "model" else "approximate"

    # ---------------------------------------------------------------- forget
    def _unlearn(self, request: Request) -> Outcome:
        module, retained, forget = request.module, request.retained, request.forget
        extra = dict(request.fitted.extra)
        heads = [t["W"] for t, meta in request.fitted.caches.values()
                 if meta.get("kind") == HEAD_KIND]
        W = heads[0].to(torch.float64) if heads else self._current_head(module)
        K = W.shape[0]
        l2 = float(self.l2)
        bound = float("inf")
        if len(retained):
            X_r, X_f = self._features(module, retained), self._features(module, forget)
            Y_f = _ovr_targets(forget.y, K)
            # Delta = sum_F grad l(w^T x_i) + l2 m w: the gradient the removal takes away
            Z_f = X_f @ W.T
            delta = (-(Y_f * torch.sigmoid(-Y_f * Z_f))).T @ X_f + l2 * len(forget) * W
            steps = torch.stack([torch.linalg.solve(H, delta[k]) for k, H in
                                 enumerate(_hessians(W, X_r, l2 * len(retained)))])
            x_norm = float(torch.linalg.eigvalsh(X_r.T @ X_r)[-1].clamp_min(0.0)) ** 0.5
            per_class = [GAMMA * x_norm * float(torch.linalg.vector_norm(steps[k]))
                         * float(torch.linalg.vector_norm(X_r @ steps[k])) for k in range(K)]
            bound = math.sqrt(sum(v * v for v in per_class))
        spent = float(extra.get("beta", 0.0))
        certificate: dict[str, Any] = {
            "epsilon": float(self.epsilon), "delta": float(self.delta),
            "sigma": float(self.sigma), "budget": self.budget, "scope": extra.get("scope"),
            "bound_this_request": bound, "spent_before": spent,
        }
        if spent + bound <= self.budget:
            W = W + steps
            b = self._noise(int(extra.get("draw", 0)), tuple(W.shape))  # type: ignore[arg-type]
            _, grad = _objective_grad(W, X_r, _ovr_targets(retained.y, K), l2, b)
            extra["beta"] = spent + bound
            certificate.update(fallback=False,
                               gradient_residual=float(torch.linalg.vector_norm(grad)))
        elif self.on_budget == "error":
            raise RemovalBudgetExhausted(
                f"Forgetting these {len(forget)} samples would spend {spent + bound:.4g} of "
                f"the certified-removal budget {self.budget:.4g} (sigma={self.sigma}, "
                f"epsilon={self.epsilon}, delta={self.delta}); nothing was changed. Forget "
                "fewer samples at once, or use on_budget='retrain' to retrain the head "
                "exactly when the budget runs out."
            )
        else:  # exact fallback: retrain the head on the retained data with fresh noise
            draw = int(extra.get("draw", 0)) + 1
            # warm start from the current head: the new optimum is near it
            W, residual = (self._solve(module, retained, draw, start=W) if len(retained)
                           else (torch.zeros_like(W), 0.0))
            extra.update(beta=residual, draw=draw)
            certificate.update(fallback=True, gradient_residual=residual)
        certificate["spent_after"] = extra["beta"]
        self._set_head(module, W)
        name, blob = self._head_blob(W, module)
        return Outcome(len(retained) + len(forget), 0, {"certificate": certificate},
                       extra=extra, caches={name: blob})

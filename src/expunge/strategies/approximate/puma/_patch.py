"""The patch: the gradient-difference Newton step with renormalised weights.

Notation: ``n`` training samples before the request, ``M`` the ``m`` forgotten ones, ``R``
the rest, ``g_i`` sample ``i``'s cross-entropy gradient at the current parameters
``theta``, ``g_bar = (1/n) sum_i g_i``. Before the request every sample weighs ``1/n``;
after it, retained sample ``j`` weighs ``w_j = (1 + e_j) / Z`` with ``Z = n - m + sum e``
(``e`` the re-weighting, 0 outside its support) and forgotten samples weigh 0. **Both sets
of weights sum to 1**, so the L2 term is the same before and after and retraining's
objective (the mean over ``R`` plus L2) is the ``e = 0`` case exactly.

The model is treated as *whatever point training reached*, not as an optimum: SGD leaves a
gradient ``grad J(theta)`` far larger than a removal's signal. The patch therefore moves
the parameters by the *difference* the request makes to the gradient,

    u = grad J_w(theta) - grad J(theta)
      = (1/Z) [ sum_j e_j (g_j - g_bar) - sum_{i in M} (g_i - g_bar) ],
    theta  <-  theta - H^{-1} u,

with ``H`` the curvature of the retained objective plus L2 (and damping). For a random
removal ``u`` is small: the forgotten samples' gradients minus their expectation. Using
``grad J_w(theta)`` alone, as a Newton step on ``J_w`` would, also takes a step of the
training that SGD had not finished, and every request would keep training instead of
unlearning. At an exact optimum (``g_bar = -weight_decay theta``) the two coincide, and for
one sample ``u = -(g_j + weight_decay theta) / (n - 1)``: Guo et al.'s Newton removal step.

Further steps (``newton_steps``, ``class_newton_steps``) solve ``grad J_w(theta') = grad
J(theta)`` by the chord method, on the retained rows of the curvature sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from expunge.strategies.approximate.curvature import LossCurvature, SolveResult


def patch_gradient(forgotten: torch.Tensor, m: int, mean: torch.Tensor, n: int,
                   support: torch.Tensor | None = None, mass: float = 0.0
                   ) -> tuple[torch.Tensor, float]:
    """``(u, Z)``: the gradient difference of a request and the new total weight.

    Args:
        forgotten: ``sum_{i in M} g_i``.
        m, n: forgotten and training samples (before the request).
        mean: ``g_bar``, the mean gradient over all ``n``.
        support: ``sum_j e_j g_j`` over the re-weighted samples (``None``: none).
        mass: ``sum_j e_j``.
    """
    total = (n - m) + mass
    u = -(forgotten - m * mean)
    if support is not None:
        u = u + (support - mass * mean)
    return u / total, total


@dataclass
class NewtonResult:
    theta: torch.Tensor
    steps: int
    step_sizes: list[float]
    residuals: list[float]


def refine(curv: LossCurvature, rows: np.ndarray, theta0: torch.Tensor,
           theta1: torch.Tensor, u0: torch.Tensor, solve: Callable[[torch.Tensor], SolveResult],
           steps: int, *, line_search_first: bool) -> NewtonResult:
    """Continue from the patch ``theta1 = theta0 - H^{-1} u0`` with ``steps - 1`` more steps.

    Solves ``grad Phi(theta) = 0`` for the tilted objective on ``rows`` (the retained rows
    of the curvature sample), ``Phi(t) = J_S(t) - c^T t`` with ``J_S`` the mean loss plus L2
    there and ``c = grad J_S(theta0) - u0``, so ``grad Phi(theta0) = u0``: the same target
    as the first step, with the re-weighting's own curvature neglected beyond it. Each
    step reuses the curvature of ``theta0`` (the chord method) with a backtracking line
    search on ``Phi`` (Armijo's condition, quadratic interpolation; no decrease keeps the
    point and stops). With ``line_search_first`` the first step is line-searched too
    (whole-class removal, far outside the first-order regime). Cost per step: one pass for
    the gradient and value, a solve, a forward pass per trial (usually one or two).
    """
    def evaluate(t: torch.Tensor, c: torch.Tensor) -> tuple[float, torch.Tensor]:
        g, loss, weight = curv.gradient_and_loss(rows, None, theta=t)
        value = loss + curv.weight_decay / 2 * float(t @ t) - float(c @ t)
        return value, g + weight * curv.weight_decay * t - c

    def phi(t: torch.Tensor, c: torch.Tensor) -> float:
        losses = curv.losses(rows, t)
        return float(losses.mean()) + curv.weight_decay / 2 * float(t @ t) - float(c @ t)

    zero = torch.zeros_like(theta0)
    value0, g0 = evaluate(theta0, zero)
    c = g0 - u0
    value0 -= float(c @ theta0)
    theta, value, sizes, residuals = theta0, value0, [], []
    for k in range(steps):
        if k == 0:
            g, step = u0, SolveResult(theta0 - theta1, [], True, 0, False, "given")
        else:
            value, g = evaluate(theta, c)
            step = solve(g)
            if step.residuals:
                residuals.append(step.residual)
        if k == 0 and not line_search_first:
            theta, size = theta1, 1.0
        else:
            theta, size = _backtrack(lambda t: phi(t, c), theta, value, step.x, g)
        sizes.append(size)
        if size == 0.0:  # no decrease along the chord direction: later steps would repeat it
            break
    return NewtonResult(theta, len(sizes), sizes, residuals)


def _backtrack(phi: Callable[[torch.Tensor], float], theta: torch.Tensor, current: float,
               delta: torch.Tensor, gradient: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``theta - t delta`` for the first ``t`` (from 1) meeting Armijo's sufficient decrease
    of ``phi``; each retry takes the minimiser of the quadratic through ``phi(0)``, its slope
    and the failed trial, kept within ``[t/10, t/2]`` (Nocedal & Wright, section 3.5).
    ``(theta, 0)`` if no ``t`` down to ``1/256`` decreases it."""
    slope = float(gradient @ delta)  # the derivative along -delta is -slope
    size = 1.0
    while size >= 1 / 256:
        trial = theta - size * delta
        value = phi(trial)
        if value <= current - 1e-4 * size * slope:
            return trial, size
        rise = value - current + slope * size  # > 0: the quadratic's curvature term
        best = slope * size * size / (2 * rise) if rise > 0 else size / 2
        size = min(max(best, size / 10), size / 2)
    return theta, 0.0

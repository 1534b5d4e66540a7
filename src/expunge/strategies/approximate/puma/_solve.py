"""The linear solves of a PUMA request, ``H x = b``, with each curvature backend.

* ``"kfac"``: the K-FAC inverse of the cached factor sums, ``(K + (weight_decay + gamma)
  I)^{-1}``: no pass over data, cost independent of the number of samples;
* ``"cholesky"``: the dense exact Gauss-Newton (or Hessian) matrix over the training rows,
  factored (small models);
* ``"cg"``: conjugate gradient on exact products over the training rows, preconditioned by
  the cached K-FAC inverse;
* ``"lissa"``: the stochastic Neumann series on keyed minibatches.

The exact backends cost passes over every training row: they are for small models and for
tests against closed forms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from expunge._hashing import derive_key, keyed_order
from expunge.strategies.approximate.curvature import (
    CholeskySolver,
    KFACInverse,
    LossCurvature,
    SolveResult,
    conjugate_gradient,
    lissa,
    power_iteration,
    warn_approximation,
)

if TYPE_CHECKING:
    from expunge.strategies.approximate.puma._cache import PumaCache
    from expunge.strategies.approximate.puma._precompute import Linearisation
    from expunge.strategies.approximate.puma.strategy import PUMA

Solve = Callable[[torch.Tensor], SolveResult]
#: LiSSA is stochastic: only a relative residual above this warns
LISSA_TOL = 0.05


def kfac_solve(inverse: KFACInverse, damping: float) -> Solve:
    """``b -> (K + damping I)^{-1} b`` as a :class:`SolveResult` (no residual: it is the
    exact inverse of the approximate matrix)."""

    def solve(b: torch.Tensor) -> SolveResult:
        return SolveResult(inverse.solve(b, damping), [], True, 0, False, "kfac")

    return solve


def curvature_solve(lin: Linearisation, cache: PumaCache, rows: np.ndarray, *,
                    extra_damping: float | None = None) -> Solve:
    """The strategy's solver for the curvature of ``cache`` (K-FAC) or of ``rows`` with
    uniform weights (exact solvers, preconditioned by the cache's K-FAC when it keeps one).

    The damping is the weight decay plus ``extra_damping`` (default: the cache's).
    """
    from expunge.strategies.approximate.puma._precompute import kfac_inverse

    strategy = lin.strategy
    extra = cache.damping if extra_damping is None else extra_damping
    if strategy.uses_kfac_solver:
        return kfac_solve(kfac_inverse(lin, cache), float(strategy.weight_decay) + extra)
    pre = None
    if lin.layers is not None and strategy.preconditioner == "kfac":
        inverse = kfac_inverse(lin, cache)
        floor = float(strategy.weight_decay) + extra + 1e-12

        def pre(b: torch.Tensor) -> torch.Tensor:
            return inverse.solve(b, floor)
    weights = torch.full((len(rows),), 1.0 / len(rows), dtype=lin.curv.dtype)
    return exact_solve(strategy, lin.curv, rows, weights, lin.data.ids[rows], pre)


def exact_solve(strategy: PUMA, curv: LossCurvature, rows: np.ndarray,
                weights: torch.Tensor, train_ids: np.ndarray,
                preconditioner: Callable[[torch.Tensor], torch.Tensor] | None) -> Solve:
    """A solver for the exact curvature ``sum_i w_i (d2 CE_i + weight_decay) + damping``
    over ``rows`` (``curv`` carries the weight decay and damping)."""
    if strategy.solver == "cholesky":
        chol = CholeskySolver(curv.dense(rows, weights),
                              what=f"{strategy.hessian} curvature of the training objective")
        return chol.solve_result

    def full(v: torch.Tensor) -> torch.Tensor:
        return curv.matvec(v, rows, weights)

    if strategy.solver == "cg":
        def cg(b: torch.Tensor) -> SolveResult:
            return conjugate_gradient(full, b, tol=float(strategy.tol),
                                      max_iter=int(strategy.max_iter),
                                      preconditioner=preconditioner)
        return cg
    # lissa: minibatches in a keyed order of the training ids
    order = keyed_order(derive_key(int(strategy.seed), "puma-lissa"), train_ids)
    rows_in_order, w_in_order = rows[order], weights[torch.from_numpy(order)]
    n = len(rows_in_order)
    batch = min(int(strategy.lissa_batch), n)

    def at(t: int) -> tuple[np.ndarray, torch.Tensor]:
        idx = np.arange(t * batch, t * batch + batch) % n
        # scaled so that the minibatch product is an unbiased estimate of the full one
        return rows_in_order[idx], w_in_order[torch.from_numpy(idx)] * (n / batch)

    probe = np.concatenate([at(t)[0] for t in range(4)])
    top = power_iteration(lambda v: curv.matvec(v, probe, None), curv.size, iterations=20,
                          seed=int(strategy.seed), dtype=curv.dtype)
    scale = 2.0 * top + curv.damping + 1e-12  # minibatch curvature can exceed the full one

    def stochastic(v: torch.Tensor, t: int) -> torch.Tensor:
        batch_rows, wb = at(t)
        return curv.matvec(v, batch_rows, wb)

    def solve(b: torch.Tensor) -> SolveResult:
        return lissa(stochastic, b, scale=scale, depth=int(strategy.lissa_depth),
                     residual_matvec=full, tol=LISSA_TOL)

    return solve


def warn_solve(strategy: PUMA, result: SolveResult, what: str) -> None:
    """An :class:`ApproximationWarning` when a solve failed to converge or met negative
    curvature (the result is used anyway: the best iterate)."""
    name = type(strategy).__name__
    if result.method == "cholesky":  # a repaired factorisation already warned, once
        return
    if result.negative_curvature and result.method == "cg":
        warn_approximation(
            f"{name}'s {what} met negative curvature (the {strategy.hessian} curvature is not "
            "positive definite at these parameters); the result is the best iterate, "
            f"relative residual {result.residual:.2e}. Use hessian='ggn', or increase "
            f"'damping' (now {strategy.damping})."
        )
    elif not result.converged:
        target = (f"tol={strategy.tol}" if result.method == "cg"
                  else f"LiSSA's tolerance {LISSA_TOL}")
        advice = ("Increase 'max_iter' or 'damping'" if result.method == "cg"
                  else "Increase 'lissa_depth' or 'damping', or use solver='cg'")
        warn_approximation(
            f"{name}'s {what} did not converge: relative residual {result.residual:.2e} "
            f"after {result.iterations} products with solver={result.method!r} ({target}). "
            f"{advice}; for small models solver='cholesky' is exact."
        )

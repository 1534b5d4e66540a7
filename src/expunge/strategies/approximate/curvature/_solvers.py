"""Linear solvers for ``A x = b`` with residual tracking: CG, LiSSA, dense Cholesky.

All of them report a :class:`SolveResult` (the relative residual measured, whether the
target was met, negative curvature met), so a caller can warn instead of trusting a bad
answer. Reference: Nocedal & Wright, *Numerical Optimization*, ch. 5 (CG); Agarwal,
Bullins & Hazan 2017 (LiSSA).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from expunge._hashing import derive_key, keyed_uniform
from expunge.exceptions import InvalidParameterError
from expunge.strategies.approximate.curvature._common import Matvec, warn_approximation


@dataclass
class SolveResult:
    """The outcome of a linear solve ``A x = b``.

    Attributes:
        x: the solution (the best iterate for iterative methods).
        residuals: relative residuals ``||b - A x_k|| / ||b||`` as tracked by the method
            (CG: every iteration, the last one recomputed from scratch; LiSSA: every
            ``check_every`` steps; direct methods: the final one).
        converged: whether the last residual is within the tolerance.
        iterations: products with ``A`` spent (CG/LiSSA), 0 for direct methods.
        negative_curvature: CG met a direction with ``d^T A d <= 0`` (``A`` not PD).
        method: ``"cg"``, ``"lissa"``, ``"cholesky"`` or ``"kfac"``.
    """

    x: torch.Tensor
    residuals: list[float] = field(default_factory=list)
    converged: bool = True
    iterations: int = 0
    negative_curvature: bool = False
    method: str = "cg"

    @property
    def residual(self) -> float:
        """The last tracked relative residual (``nan`` if none was measured)."""
        return self.residuals[-1] if self.residuals else float("nan")


def conjugate_gradient(
    matvec: Matvec,
    b: torch.Tensor,
    *,
    x0: torch.Tensor | None = None,
    tol: float = 1e-5,
    max_iter: int = 200,
    preconditioner: Matvec | None = None,
    divergence: float = 1e4,
) -> SolveResult:
    """Solve ``A x = b`` for a symmetric positive-definite ``A`` given as ``matvec``.

    (Preconditioned) conjugate gradient (Hestenes & Stiefel 1952; Nocedal & Wright,
    Alg. 5.3). Tracks the relative residual every iteration and recomputes it from scratch
    at the end (one more product), so rounding in the recurrence cannot hide a bad answer.
    Stops early, keeping the best iterate, when a search direction has ``d^T A d <= 0``
    (``A`` is not positive definite) or the residual grows ``divergence`` times above its
    best value.

    Args:
        matvec: ``v -> A v``.
        b: right-hand side (1-D).
        x0: starting point (default zeros).
        tol: target relative residual ``||b - A x|| / ||b||``.
        max_iter: most products with ``A`` (besides the final check).
        preconditioner: ``r -> M^{-1} r`` for an SPD ``M`` close to ``A``.
        divergence: abort when the residual exceeds ``divergence`` times its minimum.

    Cost: up to ``max_iter`` products with ``A`` (counted in ``iterations``; one more
    with ``x0``), plus one for the final residual check.
    """
    b_norm = float(torch.linalg.vector_norm(b))
    if b_norm == 0.0:
        return SolveResult(torch.zeros_like(b), [0.0], True, 0, False, "cg")
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    iterations = 1 if x0 is not None else 0
    z = preconditioner(r) if preconditioner is not None else r
    d = z.clone()
    rz = float(r @ z)
    residuals = [float(torch.linalg.vector_norm(r)) / b_norm]
    # CG's residual is not monotone (it minimises the A-norm of the error), so the last
    # iterate is returned; the best one only when the run is aborted as divergent
    best_x, best_res = x.clone(), residuals[0]
    negative = False
    for _ in range(max_iter):
        if residuals[-1] <= tol:
            break
        ad = matvec(d)
        iterations += 1
        curvature = float(d @ ad)
        if not math.isfinite(curvature) or curvature <= 0.0:
            negative = True
            break
        alpha = rz / curvature
        x = x + alpha * d
        r = r - alpha * ad
        res = float(torch.linalg.vector_norm(r)) / b_norm
        residuals.append(res)
        if res < best_res:
            best_x, best_res = x.clone(), res
        if not math.isfinite(res) or res > divergence * best_res:
            x = best_x
            break
        z = preconditioner(r) if preconditioner is not None else r
        rz_new = float(r @ z)
        d = z + (rz_new / rz) * d
        rz = rz_new
    # the recurrence drifts from the true residual in floating point: measure it once
    true_res = float(torch.linalg.vector_norm(b - matvec(x))) / b_norm
    residuals.append(true_res)
    return SolveResult(x, residuals, true_res <= tol and not negative, iterations, negative, "cg")


def lissa(
    matvec_at: Callable[[torch.Tensor, int], torch.Tensor],
    b: torch.Tensor,
    *,
    scale: float,
    depth: int,
    damping: float = 0.0,
    residual_matvec: Matvec | None = None,
    check_every: int = 0,
    tol: float = 1e-2,
) -> SolveResult:
    """Solve ``A x = b`` by LiSSA: the Neumann series of ``A^{-1}`` with stochastic products.

    ``x_0 = b``, ``x_t = b + x_{t-1} - ((A_t + damping I) x_{t-1}) / scale`` and the
    answer is ``x_T / scale`` (Agarwal, Bullins & Hazan 2017; Koh & Liang 2017, section
    3). ``matvec_at(v, t)`` returns an unbiased estimate ``A_t v`` of ``A v`` (for
    example the product on minibatch ``t``). Converges when ``scale`` exceeds the largest
    eigenvalue of ``A + damping I``; the error after ``T`` steps decays like
    ``(1 - lambda_min / scale)^T`` plus the minibatch noise.

    Args:
        residual_matvec: the exact ``v -> A v``, used to measure the relative residual at
            the end (and every ``check_every`` steps when that is > 0).
        tol: residual below which the result counts as converged (LiSSA is stochastic and
            rarely reaches CG's accuracy; the default flags only gross failure).

    Cost: ``depth`` stochastic products, plus one exact product per residual check.
    """
    if scale <= 0 or not math.isfinite(scale):
        raise InvalidParameterError(f"lissa needs a positive, finite scale; got {scale!r}.")
    b_norm = float(torch.linalg.vector_norm(b))
    if b_norm == 0.0:
        return SolveResult(torch.zeros_like(b), [0.0], True, 0, False, "lissa")
    x = b.clone()
    residuals: list[float] = []

    def residual(estimate: torch.Tensor) -> float:
        assert residual_matvec is not None
        return float(torch.linalg.vector_norm(b - residual_matvec(estimate))) / b_norm

    finite = True
    for t in range(depth):
        x = b + x - (matvec_at(x, t) + damping * x) / scale
        if not bool(torch.isfinite(x).all()):
            finite = False
            break
        if residual_matvec is not None and check_every > 0 and (t + 1) % check_every == 0:
            residuals.append(residual(x / scale))
    result = x / scale
    if residual_matvec is not None and finite:
        residuals.append(residual(result))
    converged = finite and (not residuals or residuals[-1] <= tol)
    return SolveResult(result, residuals, converged, depth, False, "lissa")


def power_iteration(matvec: Matvec, dim: int, *, iterations: int = 20, seed: int = 0,
                    dtype: torch.dtype = torch.float64) -> float:
    """Estimate the largest eigenvalue magnitude of a symmetric operator (Rayleigh quotient).

    The start vector comes from a keyed hash of ``(seed, index)``, so the estimate is
    reproducible. Cost: ``iterations`` products.
    """
    start = keyed_uniform(derive_key(seed, "power-iteration"), np.arange(dim)) - 0.5
    v = torch.as_tensor(start, dtype=dtype)
    v = v / torch.linalg.vector_norm(v)
    estimate = 0.0
    for _ in range(iterations):
        w = matvec(v)
        estimate = float(v @ w)
        norm = float(torch.linalg.vector_norm(w))
        if norm == 0.0 or not math.isfinite(norm):
            break
        v = w / norm
    return abs(estimate)


def check_spectrum(matrix: torch.Tensor) -> tuple[int, float, float]:
    """``(number of negative eigenvalues, smallest, largest)`` of a symmetric matrix.

    Cost: one symmetric eigendecomposition, ``O(p^3)``.
    """
    eig = torch.linalg.eigvalsh((matrix + matrix.T) / 2)
    return int((eig < 0).sum()), float(eig[0]), float(eig[-1])


class CholeskySolver:
    """A dense SPD solve ``A x = b`` through a cached Cholesky factor ``A = L L^T``.

    If the factorisation fails (``A`` is not positive definite: a non-convex model with
    ``hessian="exact"``, or too little damping), the spectrum is computed, ``A`` is shifted
    by ``-lambda_min + 1e-8 * lambda_max`` and an :class:`ApproximationWarning` names the
    number and size of the negative eigenvalues (sklearn's PSD check, ANCHORS.md).

    Cost: factorisation ``p^3 / 3`` flops once; each solve ``2 p^2``; memory ``p^2``.
    """

    def __init__(self, matrix: torch.Tensor, *, what: str = "curvature matrix",
                 advice: str = "increase 'damping' or use hessian='ggn'") -> None:
        sym = (matrix + matrix.T) / 2
        factor, info = torch.linalg.cholesky_ex(sym)
        self.shift = 0.0
        self.n_negative = 0
        if int(info) != 0:
            n_negative, smallest, largest = check_spectrum(sym)
            self.n_negative = n_negative
            self.shift = -smallest + 1e-8 * max(abs(largest), 1.0)
            warn_approximation(
                f"The {what} is not positive definite: {n_negative} eigenvalue(s) <= 0, the "
                f"smallest {smallest:.3g} ({abs(smallest) / max(abs(largest), 1e-300):.3g} of "
                f"the largest). It was shifted by {self.shift:.3g} to factor it; the influence "
                f"estimates are less reliable. To fix it, {advice}."
            )
            factor = torch.linalg.cholesky(sym + self.shift * torch.eye(sym.shape[0],
                                                                        dtype=sym.dtype))
        self.factor = factor

    @classmethod
    def from_factor(cls, factor: torch.Tensor) -> CholeskySolver:
        solver = cls.__new__(cls)
        solver.factor, solver.shift, solver.n_negative = factor, 0.0, 0
        return solver

    @property
    def repaired(self) -> bool:
        return self.shift > 0

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """``A^{-1} b`` for ``b`` of shape ``(p,)`` or ``(k, p)`` (one right-hand side per row)."""
        rhs = b.reshape(-1, b.shape[-1]).T
        return torch.cholesky_solve(rhs, self.factor).T.reshape(b.shape)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``A v`` (of the possibly shifted matrix) from the factor."""
        return self.factor @ (self.factor.T @ v)

    def solve_result(self, b: torch.Tensor) -> SolveResult:
        x = self.solve(b)
        b_norm = float(torch.linalg.vector_norm(b))
        res = 0.0 if b_norm == 0 else float(torch.linalg.vector_norm(b - self.matvec(x))) / b_norm
        return SolveResult(x, [res], not self.repaired, 0, self.repaired, "cholesky")



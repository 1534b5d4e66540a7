"""Curvature toolkit for influence-based unlearning (PUMA), on flat parameter vectors.

Everything here works on one flat vector ``theta`` holding the parameters in scope, so
that solvers never see module structure:

* generic products: :func:`hvp` (Hessian-vector product, forward-over-reverse with
  ``torch.func``) and :func:`ggn_vp` (generalised Gauss-Newton ``J^T (d2L/dz2) J v``,
  positive semi-definite for convex losses);
* solvers with residual tracking: :func:`conjugate_gradient` (optionally preconditioned;
  stops on negative curvature or divergence), :func:`lissa` (Agarwal et al. 2017's
  stochastic Neumann series, as used by Koh & Liang 2017), :class:`CholeskySolver`
  (a dense factorisation for small models, with a spectrum check and repair) and
  :class:`KFAC` (a Kronecker-factored approximate inverse for ``nn.Linear`` layers,
  Martens & Grosse 2015, used directly or as a CG preconditioner);
* :class:`LossCurvature`: the data-aware operator PUMA needs, i.e. the gradient, the
  curvature products, per-sample directional derivatives, a dense matrix and K-FAC
  factors of the weighted cross-entropy objective
  ``J_w(theta) = sum_i w_i [l(z_i; theta) + Omega(theta)] + (damping / 2) ||theta||^2``
  with ``Omega = (weight_decay / 2) ||theta||^2`` (PyTorch's coupled weight decay). With
  ``w_i = 1/n`` this is the mean training loss plus L2, the objective SGD minimised.

Costs are stated per call in units of one "data pass" (a forward + backward over the rows
involved). No function here materialises an ``n x p`` per-sample gradient matrix.
Reference for the algorithms: ALGORITHMS.md section 1 (PUMA) and section 1(g) (pitfalls).
"""

from __future__ import annotations

import copy
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap

from expunge._hashing import derive_key, keyed_uniform
from expunge.exceptions import ApproximationWarning, InvalidParameterError, UnsupportedModelError

Matvec = Callable[[torch.Tensor], torch.Tensor]
_PACKAGE_DIR = str(Path(__file__).resolve().parents[2])


def warn_approximation(message: str) -> None:
    """Emit an :class:`ApproximationWarning` attributed to the first caller outside expunge."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(ApproximationWarning(message), stacklevel=level)
CurvatureKind = Literal["exact", "ggn"]
Scope = Literal["all", "last_layer"]


# =========================================================================== flat params
@dataclass(frozen=True)
class FlatLayout:
    """Names and shapes of the parameters packed into one flat vector, in order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, module: nn.Module, names: list[str] | None = None) -> FlatLayout:
        """Layout of ``module``'s parameters ``names`` (default: every trainable one)."""
        params = dict(module.named_parameters())
        if names is None:
            names = [n for n, p in params.items() if p.requires_grad]
        return cls(tuple(names), tuple(tuple(params[n].shape) for n in names))

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        """Total number of scalars ``p``."""
        return sum(self.numels)

    def offsets(self) -> dict[str, tuple[int, int]]:
        """``name -> (start, stop)`` in the flat vector."""
        out, start = {}, 0
        for name, k in zip(self.names, self.numels):
            out[name] = (start, start + k)
            start += k
        return out

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, shape, k in zip(self.names, self.shapes, self.numels):
            out[name] = flat[start : start + k].view(shape)
            start += k
        return out


# ====================================================================== generic products
def hvp(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
        v: torch.Tensor) -> torch.Tensor:
    """Hessian-vector product ``(d2f/dtheta2) v`` of a scalar ``f`` at ``theta``.

    Forward-over-reverse (a JVP of the gradient): exact, costs about 2-3 gradient
    evaluations, and never forms the Hessian. May be indefinite for non-convex ``f``.
    """
    return jvp(grad(f), (theta,), (v,))[1]


def ggn_vp(model_fn: Callable[[torch.Tensor], torch.Tensor],
           loss_fn: Callable[[torch.Tensor], torch.Tensor],
           theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Generalised Gauss-Newton product ``J^T (d2L/dz2) J v`` with ``z = model_fn(theta)``.

    ``J`` is the Jacobian of the outputs with respect to ``theta`` and ``d2L/dz2`` the
    Hessian of ``loss_fn`` with respect to the outputs. For a convex loss of the outputs
    (cross-entropy, squared error) the GGN is positive semi-definite, which makes it the
    safe curvature for networks (ALGORITHMS.md section 1(f)6). It equals the Hessian when
    the outputs are linear in ``theta`` (logistic regression). Cost: one JVP, one
    output-space HVP and one VJP.
    """
    primal = jvp(model_fn, (theta,), (v,))
    z, jv = primal[0], primal[1]
    hjv = hvp(loss_fn, z.detach(), jv)
    pullback = vjp(model_fn, theta)[1]
    return pullback(hjv)[0]


def dense_from_matvec(matvec: Matvec, dim: int, *, dtype: torch.dtype = torch.float64,
                      block: int = 64) -> torch.Tensor:
    """The symmetric ``dim x dim`` matrix of a symmetric linear operator, column block by block.

    Uses ``torch.func.vmap`` over ``block`` unit vectors at a time (falls back to a loop
    for modules vmap cannot batch). Cost: ``dim`` products; memory ``block`` times one
    product. Meant for small ``dim`` (tests, the dense Cholesky path).
    """
    columns = []
    for start in range(0, dim, block):
        stop = min(start + block, dim)
        units = torch.zeros(stop - start, dim, dtype=dtype)
        units[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        try:
            columns.append(vmap(matvec)(units))
        except RuntimeError:  # a module whose ops vmap cannot batch: one column at a time
            columns.append(torch.stack([matvec(u) for u in units]))
    matrix = torch.cat(columns).T
    return (matrix + matrix.T) / 2


# ============================================================================ solvers
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


# ============================================================================== K-FAC
@dataclass
class KFACBlock:
    """One ``nn.Linear`` layer's Kronecker factors, as eigendecompositions.

    ``G = U_G diag(s_G) U_G^T`` (output side, ``E[J^T A J]`` of the layer's outputs) and
    ``A = U_A diag(s_A) U_A^T`` (input side, ``E[a a^T]`` of the inputs with a 1 appended
    for the bias), both weighted sums; the block approximates ``G kron A / W``.
    """

    weight: tuple[int, int]
    bias: tuple[int, int] | None
    out_features: int
    in_features: int
    u_g: torch.Tensor
    s_g: torch.Tensor
    u_a: torch.Tensor
    s_a: torch.Tensor


class KFAC:
    """Kronecker-factored approximate inverse of the damped curvature (Martens & Grosse 2015).

    Each ``nn.Linear`` layer in scope is one diagonal block ``G kron A / W + gamma I``,
    with ``W = sum w_i`` and ``gamma = W * weight_decay + damping``; its inverse is applied
    exactly through the factors' eigendecompositions. Parameters outside ``nn.Linear``
    layers (convolutions, norms) get ``1 / (mean block diagonal + gamma)``: K-FAC is then
    a preconditioner, not an approximation, for them.

    Cost: building needs ``K`` backward passes over the rows (``K`` = classes) plus
    ``O(d^3)`` per layer for the eigendecompositions; each solve is ``O(sum d_in d_out
    (d_in + d_out))``, independent of ``n``. Memory ``O(d_in^2 + d_out^2)`` per layer.
    """

    def __init__(self, blocks: list[KFACBlock], *, size: int, scale: float, gamma: float,
                 other_diagonal: float) -> None:
        self.blocks = blocks
        self.size = size
        self.scale = scale
        self.gamma = gamma
        self.other_diagonal = other_diagonal
        covered = torch.zeros(size, dtype=torch.bool)
        for block in blocks:
            covered[block.weight[0]:block.weight[1]] = True
            if block.bias is not None:
                covered[block.bias[0]:block.bias[1]] = True
        self._other = ~covered

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """Approximate ``A^{-1} b`` for ``b`` of shape ``(p,)`` or ``(k, p)``."""
        if b.ndim == 2:
            return torch.stack([self.solve(row) for row in b])
        out = torch.empty_like(b)
        for blk in self.blocks:
            w0, w1 = blk.weight
            W = b[w0:w1].view(blk.out_features, blk.in_features)
            cols = [W]
            if blk.bias is not None:
                cols.append(b[blk.bias[0]:blk.bias[1]].view(-1, 1))
            V = torch.cat(cols, dim=1)
            rotated = blk.u_g.T @ V @ blk.u_a
            rotated = rotated / (self.scale * torch.outer(blk.s_g, blk.s_a) + self.gamma)
            Y = blk.u_g @ rotated @ blk.u_a.T
            out[w0:w1] = Y[:, : blk.in_features].reshape(-1)
            if blk.bias is not None:
                out[blk.bias[0]:blk.bias[1]] = Y[:, blk.in_features]
        out[self._other] = b[self._other] / (self.other_diagonal + self.gamma)
        return out

    def solve_result(self, b: torch.Tensor, matvec: Matvec | None = None) -> SolveResult:
        x = self.solve(b)
        residuals = []
        if matvec is not None:
            b_norm = float(torch.linalg.vector_norm(b))
            residuals.append(0.0 if b_norm == 0 else
                             float(torch.linalg.vector_norm(b - matvec(x))) / b_norm)
        return SolveResult(x, residuals, True, 1 if matvec is not None else 0, False, "kfac")

    # ------------------------------------------------------------ persistence
    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks):
            for name in ("u_g", "s_g", "u_a", "s_a"):
                out[f"{prefix}{i}.{name}"] = getattr(blk, name)
        return out

    def to_meta(self) -> dict[str, Any]:
        return {"size": self.size, "scale": self.scale, "gamma": self.gamma,
                "other_diagonal": self.other_diagonal,
                "blocks": [{"weight": list(b.weight), "bias": None if b.bias is None
                            else list(b.bias), "out": b.out_features, "in": b.in_features}
                           for b in self.blocks]}

    @classmethod
    def from_saved(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                   prefix: str) -> KFAC:
        blocks = []
        for i, info in enumerate(meta["blocks"]):
            blocks.append(KFACBlock(
                tuple(info["weight"]), None if info["bias"] is None else tuple(info["bias"]),
                int(info["out"]), int(info["in"]),
                tensors[f"{prefix}{i}.u_g"], tensors[f"{prefix}{i}.s_g"],
                tensors[f"{prefix}{i}.u_a"], tensors[f"{prefix}{i}.s_a"],
            ))
        return cls(blocks, size=int(meta["size"]), scale=float(meta["scale"]),
                   gamma=float(meta["gamma"]), other_diagonal=float(meta["other_diagonal"]))


# ====================================================================== data-aware operator
def _eigh_psd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return vectors, values.clamp_min(0.0)


class LossCurvature:
    """Gradients and curvature of a classifier's weighted cross-entropy on fixed data.

    The objective over rows ``i`` (positions into ``X``) with weights ``w_i`` is
    ``J_w(theta) = sum_i w_i [CE(f(x_i; theta), y_i) + Omega(theta)] + damping/2 ||theta||^2``
    where ``Omega = weight_decay/2 ||theta||^2`` and ``theta`` holds the parameters in
    scope. Splitting the regulariser into per-sample shares keeps the 1/n convention of
    ALGORITHMS.md section 1(b) consistent with retraining: giving weight 0 to removed
    samples and ``1/n`` to the rest has the same minimiser as the mean loss over the
    retained samples plus ``Omega``, the objective retraining minimises.

    Args:
        module: the trained classifier (returns logits). Copied, set to eval mode and cast
            to ``dtype``; the original is not modified.
        X, y: all the inputs and labels methods may refer to by position.
        scope: ``"all"`` trainable parameters, or ``"last_layer"``: the parameters of the
            last module that owns parameters (features below it are frozen; if that
            module's output is the model's output, its inputs are computed once and cached,
            so every product costs one small matrix product instead of a network pass).
        kind: ``"ggn"`` (generalised Gauss-Newton, PSD) or ``"exact"`` (the Hessian).
        weight_decay, damping: see the objective above.
        dtype: floating type of every computation (float64 for convex models).
        chunk_size: rows per batch in data passes (bounds memory).
    """

    def __init__(
        self,
        module: nn.Module,
        X: torch.Tensor,
        y: torch.Tensor,
        *,
        scope: Scope = "all",
        kind: CurvatureKind = "ggn",
        weight_decay: float = 0.0,
        damping: float = 0.0,
        dtype: torch.dtype = torch.float64,
        chunk_size: int = 4096,
    ) -> None:
        if kind not in ("ggn", "exact"):
            raise InvalidParameterError(f"kind must be 'ggn' or 'exact'; got {kind!r}.")
        if scope not in ("all", "last_layer"):
            raise InvalidParameterError(f"scope must be 'all' or 'last_layer'; got {scope!r}.")
        self.kind = kind
        self.scope = scope
        self.weight_decay = float(weight_decay)
        self.damping = float(damping)
        self.dtype = dtype
        self.chunk_size = int(chunk_size)
        self.y = y.to(torch.int64)
        self.module = copy.deepcopy(module).to(dtype).eval()
        trainable = [n for n, p in module.named_parameters() if p.requires_grad]
        if not trainable:
            raise UnsupportedModelError("The model has no trainable parameters to patch.")
        for p in self.module.parameters():
            p.requires_grad_(False)
        owners = [(name, m) for name, m in self.module.named_modules()
                  if any(True for _ in m.parameters(recurse=False))]
        prefix, head = owners[-1]
        head_names = [f"{prefix}.{n}" if prefix else n
                      for n, _ in head.named_parameters(recurse=False)]
        if scope == "all" and sorted(trainable) == sorted(head_names):
            scope = "last_layer"  # the head holds every parameter (logistic regression)
        if scope == "all":
            names = trainable
            self._head, self._prefix = self.module, ""
        else:
            names = head_names
            self._head, self._prefix = head, (prefix + "." if prefix else "")
        self.layout = FlatLayout.of(self.module, names)
        self.theta = self.layout.flatten(dict(self.module.named_parameters())).detach().clone()
        self._inputs = X
        self._features = scope == "last_layer" and self._cache_features(X)
        self.n_rows = int(X.shape[0])

    # ----------------------------------------------------------------- basics
    @property
    def size(self) -> int:
        return self.layout.size

    def _cache_features(self, X: torch.Tensor) -> bool:
        """Compute the head's inputs once, if the head's output is the model's output."""
        captured: list[torch.Tensor] = []
        handle = self._head.register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
        outputs = []
        try:
            with torch.no_grad():
                for start in range(0, X.shape[0], self.chunk_size):
                    outputs.append(self.module(X[start:start + self.chunk_size].to(self.dtype)))
        finally:
            handle.remove()
        features = torch.cat(captured)
        with torch.no_grad():
            direct = self._head(features[: self.chunk_size])
        if direct.shape != outputs[0].shape or not torch.allclose(direct, outputs[0], rtol=1e-6,
                                                                    atol=1e-9):
            return False  # something follows the head (a softmax, a reshape): no shortcut
        self._inputs = features
        return True

    def _local(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        params = self.layout.unflatten(theta)
        if self._features:
            return {name[len(self._prefix):]: t for name, t in params.items()}
        return params

    def _forward(self, theta: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        if self._features:
            return functional_call(self._head, self._local(theta), (xs,))
        return functional_call(self.module, self._local(theta), (xs,))

    def _logits(self, theta: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self._forward(theta, self._inputs[rows].to(self.dtype))

    def _chunks(self, rows: torch.Tensor, weights: torch.Tensor | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for start in range(0, rows.shape[0], self.chunk_size):
            stop = start + self.chunk_size
            yield rows[start:stop], None if weights is None else weights[start:stop]

    def _prepare(self, rows: torch.Tensor | np.ndarray,
                 weights: torch.Tensor | np.ndarray | float | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        if weights is None:
            weights = 1.0 / max(rows_t.shape[0], 1)
        if isinstance(weights, (int, float)):
            w = torch.full((rows_t.shape[0],), float(weights), dtype=self.dtype)
        else:
            w = torch.as_tensor(np.asarray(weights) if isinstance(weights, np.ndarray)
                                else weights, dtype=self.dtype)
        return rows_t, w

    # -------------------------------------------------------------- functions
    def losses(self, rows: torch.Tensor | np.ndarray, theta: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Per-sample cross-entropy at ``theta`` (default: the model's parameters)."""
        theta = self.theta if theta is None else theta
        rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        out = []
        with torch.no_grad():
            for chunk, _ in self._chunks(rows_t):
                out.append(F.cross_entropy(self._logits(theta, chunk), self.y[chunk],
                                           reduction="none"))
        return torch.cat(out) if out else torch.empty(0, dtype=self.dtype)

    def gradient(self, rows: torch.Tensor | np.ndarray,
                 weights: torch.Tensor | np.ndarray | float | None = None, *,
                 regularizer: bool = True, theta: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_i w_i grad[CE_i + Omega]`` (``regularizer=False``: the CE part only).

        Rows with zero weight are skipped, so a sparse weighting costs one backward pass
        over its support only. ``weights=None`` means ``1/len(rows)`` (a mean).
        """
        theta = self.theta if theta is None else theta
        rows_t, w = self._prepare(rows, weights)
        keep = w != 0
        rows_t, w = rows_t[keep], w[keep]
        total = torch.zeros_like(theta)
        for chunk, wc in self._chunks(rows_t, w):
            assert wc is not None

            def weighted(t: torch.Tensor, chunk: torch.Tensor = chunk,
                         wc: torch.Tensor = wc) -> torch.Tensor:
                ce = F.cross_entropy(self._logits(t, chunk), self.y[chunk], reduction="none")
                return (wc * ce).sum()

            total = total + grad(weighted)(theta)
        if regularizer:
            total = total + float(w.sum()) * self.weight_decay * theta
        return total

    def matvec(self, v: torch.Tensor, rows: torch.Tensor | np.ndarray,
               weights: torch.Tensor | np.ndarray | float | None = None, *,
               regularizer: bool = True, damping: bool = True,
               theta: torch.Tensor | None = None) -> torch.Tensor:
        """Curvature product ``(sum_i w_i (d2 CE_i + Omega'') + damping I) v``.

        GGN or exact Hessian per ``kind``. ``regularizer`` / ``damping`` switch off the
        ``sum(w) * weight_decay`` and ``damping`` diagonals (for corrections). Cost: one
        JVP + one VJP (GGN) or one forward-over-reverse pass (exact) over the rows with
        non-zero weight.
        """
        theta = self.theta if theta is None else theta
        rows_t, w = self._prepare(rows, weights)
        keep = w != 0
        rows_t, w = rows_t[keep], w[keep]
        if self._linear_head:
            total = self._linear_head_matvec(v, rows_t, w, theta)
            rows_t = rows_t[:0]  # done: skip the generic loop below
        else:
            total = torch.zeros_like(v)
        for chunk, wc in self._chunks(rows_t, w):
            assert wc is not None
            if self.kind == "ggn":
                def model_fn(t: torch.Tensor, chunk: torch.Tensor = chunk) -> torch.Tensor:
                    return self._logits(t, chunk)

                primal = jvp(model_fn, (theta,), (v,))
                z, jv = primal[0], primal[1]
                p = torch.softmax(z, dim=1)
                hz = wc[:, None] * (p * jv - p * (p * jv).sum(dim=1, keepdim=True))
                pullback = vjp(model_fn, theta)[1]
                total = total + pullback(hz)[0]
            else:
                def weighted(t: torch.Tensor, chunk: torch.Tensor = chunk,
                             wc: torch.Tensor = wc) -> torch.Tensor:
                    ce = F.cross_entropy(self._logits(t, chunk), self.y[chunk], reduction="none")
                    return (wc * ce).sum()

                total = total + hvp(weighted, theta, v)
        if regularizer:
            total = total + float(w.sum()) * self.weight_decay * v
        if damping:
            total = total + self.damping * v
        return total

    @property
    def _linear_head(self) -> bool:
        """Whether the parameters in scope are one ``nn.Linear`` on cached inputs."""
        return bool(self._features) and isinstance(self._head, nn.Linear)

    def _linear_head_matvec(self, v: torch.Tensor, rows: torch.Tensor, w: torch.Tensor,
                            theta: torch.Tensor) -> torch.Tensor:
        """Closed-form curvature product of a linear softmax head (Hessian = GGN).

        ``sum_i w_i J_i^T (diag p_i - p_i p_i^T) J_i v`` with ``J_i v = V x_i + v_b``:
        two matrix products per chunk (the logits and ``J v`` in one, then the pull-back)
        instead of the generic JVP + VJP, which matters when CG calls it hundreds of times.
        """
        head = self._head
        assert isinstance(head, nn.Linear)
        k, d = head.out_features, head.in_features
        params = self.layout.unflatten(theta)
        tangent = self.layout.unflatten(v)
        w_name, b_name = self.layout.names[0], (self.layout.names[1]
                                                 if len(self.layout.names) > 1 else None)
        weights = torch.cat([params[w_name], tangent[w_name]])  # (2K, d)
        out_w = torch.zeros(k, d, dtype=v.dtype)
        out_b = torch.zeros(k, dtype=v.dtype)
        for chunk, wc in self._chunks(rows, w):
            assert wc is not None
            xs = self._inputs[chunk].to(self.dtype)
            both = xs @ weights.T
            z, jv = both[:, :k], both[:, k:]
            if b_name is not None:
                z, jv = z + params[b_name], jv + tangent[b_name]
            p = torch.softmax(z, dim=1)
            hz = wc[:, None] * (p * jv - p * (p * jv).sum(dim=1, keepdim=True))
            out_w += hz.T @ xs
            out_b += hz.sum(dim=0)
        parts = {w_name: out_w} if b_name is None else {w_name: out_w, b_name: out_b}
        return self.layout.flatten(parts)

    def directional(self, V: torch.Tensor, rows: torch.Tensor | np.ndarray,
                    theta: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample directional derivatives ``grad CE_i(theta)^T v_k``, shape ``(rows, K)``.

        ``d/dt CE_i(theta + t v)`` at 0: one forward-mode JVP per chunk and direction, so
        no per-sample gradient is ever stored (ALGORITHMS.md section 1(b) step 2).
        ``V`` has shape ``(K, p)``. Cost: ``K`` JVP passes over the rows.
        """
        theta = self.theta if theta is None else theta
        rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        out = []
        for chunk, _ in self._chunks(rows_t):
            def per_sample(t: torch.Tensor, chunk: torch.Tensor = chunk) -> torch.Tensor:
                return F.cross_entropy(self._logits(t, chunk), self.y[chunk], reduction="none")

            out.append(torch.stack([jvp(per_sample, (theta,), (vk,))[1] for vk in V], dim=1))
        if not out:
            return torch.empty(0, V.shape[0], dtype=self.dtype)
        return torch.cat(out)

    def dense(self, rows: torch.Tensor | np.ndarray,
              weights: torch.Tensor | np.ndarray | float | None = None,
              block: int = 64) -> torch.Tensor:
        """The ``p x p`` curvature matrix (with regulariser and damping).

        GGN: from per-sample Jacobians of the logits (``K`` backward passes per sample,
        vectorised), ``sum_i w_i M_i^T M_i`` with ``M_i = C_i^T J_i`` and ``C_i C_i^T =
        diag p_i - p_i p_i^T``: ``O(n K p^2)`` flops, ``O(chunk K p)`` memory. Exact
        Hessian: ``p`` Hessian-vector products, ``p / block`` vectorised passes. Memory
        ``p^2`` either way: meant for small ``p`` (the Cholesky path).
        """
        rows_t, w = self._prepare(rows, weights)
        linear_head = self._linear_head
        if self.kind == "exact" and not linear_head:
            return dense_from_matvec(lambda v: self.matvec(v, rows_t, w), self.size,
                                     dtype=self.dtype, block=block)
        keep = w != 0
        rows_t, w = rows_t[keep], w[keep]
        p = self.size
        matrix = torch.zeros(p, p, dtype=self.dtype)

        def single(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return self._forward(theta, x[None])[0]

        if linear_head:  # a softmax of a linear map: the Hessian equals the GGN
            matrix = self._dense_linear_head(rows_t, w)
            diagonal = float(w.sum()) * self.weight_decay + self.damping
            return matrix + diagonal * torch.eye(p, dtype=self.dtype)
        jacobian_of = vmap(jacrev(single), in_dims=(None, 0))
        for start in range(0, rows_t.shape[0], max(1, min(self.chunk_size, 4_000_000 // p))):
            chunk = rows_t[start:start + max(1, min(self.chunk_size, 4_000_000 // p))]
            wc = w[start:start + chunk.shape[0]]
            xs = self._inputs[chunk].to(self.dtype)
            J = jacobian_of(self.theta, xs)  # (B, K, p)
            with torch.no_grad():
                probs = torch.softmax(self._forward(self.theta, xs), dim=1)
            # M[i, k] = sqrt(p_ik) (J_ik - sum_l p_il J_il): the rows of C_i^T J_i
            M = probs.sqrt()[:, :, None] * (J - torch.einsum("il,ilp->ip", probs, J)[:, None, :])
            flat = M.reshape(-1, p)
            matrix += (flat * wc.repeat_interleave(M.shape[1])[:, None]).T @ flat
        diagonal = float(w.sum()) * self.weight_decay + self.damping
        matrix += diagonal * torch.eye(p, dtype=self.dtype)
        return (matrix + matrix.T) / 2

    def _dense_linear_head(self, rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``sum_i w_i (diag p_i - p_i p_i^T) kron x_i x_i^T`` for a linear softmax head.

        With ``x`` the head's input (and a 1 for the bias): one product of the ``(n, K^2)``
        output factors with the ``(n, (d+1)^2)`` input outer products, ``2 n K^2 (d+1)^2``
        flops, then a permutation into the flat layout (weight row-major, then bias).
        """
        head = self._head
        assert isinstance(head, nn.Linear)
        k, d = head.out_features, head.in_features
        bias = head.bias is not None
        da = d + int(bias)
        acc = torch.zeros(k * k, da * da, dtype=self.dtype)
        step = max(1, min(self.chunk_size, 20_000_000 // (da * da)))
        for start in range(0, rows.shape[0], step):
            chunk, wc = rows[start:start + step], w[start:start + step]
            xs = self._inputs[chunk].to(self.dtype)
            with torch.no_grad():
                probs = torch.softmax(self._forward(self.theta, xs), dim=1)
            A = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
            if bias:
                xs = torch.cat([xs, torch.ones(xs.shape[0], 1, dtype=self.dtype)], dim=1)
            outer = (xs[:, :, None] * xs[:, None, :]).reshape(xs.shape[0], -1)
            acc += (A.reshape(xs.shape[0], -1) * wc[:, None]).T @ outer
        # (k, a) with a < d is weight[k, a] at k*d + a; a == d is bias[k] at k*d + k
        index = torch.empty(k, da, dtype=torch.int64)
        index[:, :d] = torch.arange(k * d).reshape(k, d)
        if bias:
            index[:, d] = k * d + torch.arange(k)
        perm = index.reshape(-1)
        # acc[(k, l), (a, b)] -> H[(k, a), (l, b)]
        blocks = acc.reshape(k, k, da, da).permute(0, 2, 1, 3).reshape(k * da, k * da)
        matrix = torch.empty(self.size, self.size, dtype=self.dtype)
        matrix[perm[:, None], perm[None, :]] = blocks
        return (matrix + matrix.T) / 2

    def kfac(self, rows: torch.Tensor | np.ndarray,
             weights: torch.Tensor | np.ndarray | float | None = None,
             theta: torch.Tensor | None = None) -> KFAC:
        """K-FAC factors of the GGN for every ``nn.Linear`` layer in scope.

        The output-side factor uses the exact expectation over classes,
        ``G = sum_i w_i J_i^T (diag p_i - p_i p_i^T) J_i`` with ``J_i`` the Jacobian of the
        logits with respect to the layer's outputs, computed with ``K`` backward passes of
        the columns of a square root of ``diag p - p p^T`` (no label sampling, so no
        randomness). Cost: ``K`` backward passes over the rows.
        """
        rows_t, w = self._prepare(rows, weights)
        keep = w != 0
        rows_t, w = rows_t[keep], w[keep]
        offsets = self.layout.offsets()
        root = self._head if self._features else self.module
        prefix = self._prefix if self._features else ""
        layers: list[tuple[str, nn.Linear]] = []
        for name, m in root.named_modules():
            full = prefix + (name + "." if name else "")
            if isinstance(m, nn.Linear) and f"{full}weight" in offsets and (
                    m.bias is None or f"{full}bias" in offsets):
                layers.append((full, m))
        A = [torch.zeros(m.in_features + (m.bias is not None), m.in_features
                         + (m.bias is not None), dtype=self.dtype) for _, m in layers]
        G = [torch.zeros(m.out_features, m.out_features, dtype=self.dtype) for _, m in layers]
        if layers:
            for chunk, wc in self._chunks(rows_t, w):
                assert wc is not None
                captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
                handles = [m.register_forward_hook(
                    lambda mod, inp, out, k=k, store=captured: store.__setitem__(k, (inp[0], out)))
                    for k, (_, m) in enumerate(layers)]
                try:
                    at = (self.theta if theta is None else theta).detach().clone()
                    with torch.enable_grad():
                        z = self._logits(at.requires_grad_(True), chunk)
                finally:
                    for h in handles:
                        h.remove()
                p = torch.softmax(z.detach(), dim=1)
                outs = [captured[k][1] for k in range(len(layers))]
                for k, (_, m) in enumerate(layers):
                    a = captured[k][0].detach().reshape(-1, m.in_features)
                    if m.bias is not None:
                        a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], dim=1)
                    A[k] += (a * wc[:, None]).T @ a
                n_classes = z.shape[1]
                eye = torch.eye(n_classes, dtype=self.dtype)
                for c in range(n_classes):
                    # column c of a square root of diag(p) - p p^T: sqrt(p_c) (e_c - p)
                    cot = p[:, c:c + 1].sqrt() * (eye[c][None, :] - p)
                    grads = torch.autograd.grad(z, outs, grad_outputs=cot, retain_graph=True)
                    for k, g in enumerate(grads):
                        g2 = g.detach().reshape(-1, g.shape[-1])
                        G[k] += (g2 * wc[:, None]).T @ g2
        total_w = float(w.sum())
        blocks, diag_means = [], []
        for (full, m), A_k, G_k in zip(layers, A, G):
            UG, sG = _eigh_psd(G_k)
            UA, sA = _eigh_psd(A_k)
            blocks.append(KFACBlock(
                offsets[f"{full}weight"], offsets.get(f"{full}bias") if m.bias is not None
                else None, m.out_features, m.in_features, UG, sG, UA, sA))
            diag_means.append(float(torch.diagonal(G_k).mean() * torch.diagonal(A_k).mean()))
        scale = 1.0 / total_w if total_w > 0 else 0.0
        gamma = total_w * self.weight_decay + self.damping
        other = scale * float(np.mean(diag_means)) if diag_means else 1.0
        return KFAC(blocks, size=self.size, scale=scale, gamma=gamma, other_diagonal=other)

    # -------------------------------------------------------------- results
    def module_with(self, theta: torch.Tensor, like: nn.Module) -> nn.Module:
        """A copy of ``like`` (dtype and all) with the in-scope parameters set to ``theta``."""
        out = copy.deepcopy(like)
        params = dict(out.named_parameters())
        with torch.no_grad():
            for name, tensor in self.layout.unflatten(theta).items():
                params[name].copy_(tensor.to(params[name].dtype))
        return out.eval()

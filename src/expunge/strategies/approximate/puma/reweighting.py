"""PUMA's re-weighting: which retained samples to up- or down-weight so that the criterion
stays unchanged (ALGORITHMS.md section 1(b) step 4), over a small candidate set.

With renormalised weights (they sum to 1 before and after the request, see
:mod:`expunge.strategies.approximate.puma._patch`), candidate ``j`` gets the relative extra
weight ``e_j`` in ``[-1, eta]`` and the linearised criterion is unchanged exactly when

    sum_j e_j a_j = b,    a_j = s_j - s_bar,    b = sum_{i in M} (s_i - s_bar),

where ``s_i = grad C^T H^{-1} grad l_i`` is sample ``i``'s score and ``s_bar`` the mean score
over the training set. That condition is linear in ``e`` (the renormalisation makes it so),
and PUMA solves its squared, sparse, box-constrained form

    min_e  || A^T e - b ||^2 + lam ||e||_1,   e_j in [-1, eta],

with the scores scaled by ``max |a|`` and ``lam = sparsity * lam_max``, ``lam_max =
||2 A b||_inf`` the smallest weight whose solution is ``e = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Reweighting:
    """The solution of the re-weighting problem.

    Attributes:
        e: each candidate's relative extra weight, in ``[-1, eta]``.
        residual_before / residual_after: ``||b||`` and ``||A^T e - b||`` in score units
            (divide by the new total weight for the predicted criterion change).
        sparsity_weight: the L1 weight used (normalised units).
        steps: solver steps (0 for the closed form).
        method: ``"closed_form"`` (one criterion), ``"fista"`` (several) or ``"none"``.
    """

    e: torch.Tensor
    residual_before: float
    residual_after: float
    sparsity_weight: float
    steps: int
    method: str

    @property
    def n_nonzero(self) -> int:
        return int((self.e != 0).sum())


def solve_reweighting(a: torch.Tensor, b: torch.Tensor, *, eta: float, sparsity: float,
                      max_steps: int = 1000, tol: float = 1e-9) -> Reweighting:
    """Solve PUMA's re-weighting problem (see the module docstring).

    Args:
        a: centred scores of the candidates, shape ``(r, K)`` (``K`` criteria).
        b: the change to compensate, shape ``(K,)``.
        eta: the box radius: no candidate's weight grows by more than a factor ``1 + eta``.
        sparsity: in ``[0, 1]``: the L1 weight as a fraction of ``lam_max`` (1 = no
            re-weighting, naive removal; 0 = compensate as far as the box allows).
        max_steps, tol: FISTA's step cap and its stopping tolerance on the weights.

    With one criterion the problem is solved in closed form (:func:`_closed_form`,
    ``O(r log r)``); with several by FISTA with adaptive restart (Beck & Teboulle 2009;
    O'Donoghue & Candes 2015), step ``1/L``, ``L = 2 sigma_max(A)^2``: deterministic,
    full-batch, ``O(r K)`` per step.
    """
    a = a.to(torch.float64)
    b = b.to(torch.float64).reshape(-1)
    zeros = torch.zeros(a.shape[0], dtype=torch.float64)
    before = float(torch.linalg.vector_norm(b))
    scale = float(a.abs().max()) if a.numel() else 0.0
    if scale == 0.0 or before == 0.0 or sparsity >= 1.0:
        return Reweighting(zeros, before, before, 0.0, 0, "none")
    A, target = a / scale, b / scale
    lam = float(sparsity) * float((2 * (A @ target)).abs().max())
    if A.shape[1] == 1:
        e = _closed_form(A[:, 0], float(target[0]), eta=float(eta), lam=lam)
        steps, method = 0, "closed_form"
    else:
        e, steps = _fista(A, target, eta=float(eta), lam=lam, max_steps=max_steps, tol=tol)
        method = "fista"
    after = float(torch.linalg.vector_norm(A.T @ e - target)) * scale
    return Reweighting(e, before, after, lam, steps, method)


def _closed_form(a: torch.Tensor, beta: float, *, eta: float, lam: float) -> torch.Tensor:
    """The exact minimiser of ``(sum_j e_j a_j - beta)^2 + lam ||e||_1`` on the box.

    Write ``c_j = sign(beta) e_j a_j`` (the part of the target candidate ``j`` covers):
    covering costs ``|e_j| = c_j / |a_j|``, so the L1 price of a unit is ``1 / |a_j|`` and
    candidate ``j`` can cover at most ``kappa_j = |a_j| * (eta if it is up-weighted, else 1)``.
    The KKT conditions then say: with ``R = |beta| - sum c`` the remaining change, every
    candidate with ``|a_j| > lam / (2 R)`` is used to capacity, every one below is unused,
    and at most one (the marginal one) is in between. Sorting by ``|a_j|`` (ties by
    position) and one cumulative sum find it: ``O(r log r)``, no iterations.
    """
    e = torch.zeros_like(a)
    sign = 1.0 if beta > 0 else -1.0
    magnitude = a.abs()
    order = torch.argsort(-magnitude, stable=True)
    mag = magnitude[order]
    usable = mag > 0
    order, mag = order[usable], mag[usable]
    if order.numel() == 0:
        return e
    up = (sign * a[order]) > 0  # covering the target means up-weighting this candidate
    capacity = mag * torch.where(up, torch.tensor(eta, dtype=a.dtype),
                                 torch.tensor(1.0, dtype=a.dtype))
    covered_before = torch.cumsum(capacity, dim=0) - capacity
    # what candidate k would cover if it were the marginal one
    marginal = abs(beta) - covered_before - lam / (2 * mag)
    stop = torch.nonzero(marginal <= capacity)
    k = int(stop[0]) if stop.numel() else order.numel()
    cover = capacity.clone()
    if k < order.numel():
        cover[k] = marginal[k].clamp_min(0.0)
        cover[k + 1:] = 0.0
    e[order] = sign * cover / a[order]
    return e


def _fista(A: torch.Tensor, target: torch.Tensor, *, eta: float, lam: float, max_steps: int,
           tol: float) -> tuple[torch.Tensor, int]:
    """Accelerated proximal gradient for several criteria; the proximal map of ``lam |e|``
    plus the box is soft-thresholding followed by clipping."""
    zeros = torch.zeros(A.shape[0], dtype=A.dtype)
    lipschitz = 2 * float(torch.linalg.eigvalsh(A.T @ A)[-1])
    if lipschitz <= 0.0:
        return zeros, 0
    step = 1.0 / lipschitz
    e, y, t = zeros.clone(), zeros.clone(), 1.0
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 - the count is reported
        z = y - step * 2 * (A @ (A.T @ y - target))
        e_new = ((z.abs() - step * lam).clamp_min(0.0) * z.sign()).clamp(-1.0, eta)
        moved = float((e_new - e).abs().max())
        if float((y - e_new) @ (e_new - e)) > 0:  # momentum points uphill: restart
            t_new, y = 1.0, e_new.clone()
        else:
            t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
            y = e_new + ((t - 1) / t_new) * (e_new - e)
        e, t = e_new, t_new
        if moved <= tol:
            break
    return e, steps

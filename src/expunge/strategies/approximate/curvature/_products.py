"""Curvature-vector products that never form the matrix, and a dense builder for small ones."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import vjp, vmap

from expunge.strategies.approximate.curvature._common import Matvec
from expunge.strategies.approximate.curvature._jvp import hvp as _reverse_hvp
from expunge.strategies.approximate.curvature._jvp import jvp


def hvp(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
        v: torch.Tensor) -> torch.Tensor:
    """Hessian-vector product ``(d2f/dtheta2) v`` of a scalar ``f`` at ``theta``.

    Reverse over reverse (the gradient of ``<grad f, v>``): exact, costs about 2-3
    gradient evaluations, and never forms the Hessian. May be indefinite for non-convex
    ``f``. Not forward mode: see :mod:`._jvp` for why.
    """
    return _reverse_hvp(f, theta, v)


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
    z, jv = jvp(model_fn, theta, v)
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



"""Per-sample quantities with ``torch.func.vmap``: gradients and the Gauss-Newton diagonal.

These materialise one row per sample, so they are meant for small row sets (the samples of
a request, probes, a curvature sample) or small parameter sets (the K-FAC fallback). Memory
is bounded by processing ``chunk`` samples at a time.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from expunge.strategies.approximate.curvature._operator import LossCurvature


def per_sample_gradients(curv: LossCurvature, rows: torch.Tensor | np.ndarray, *,
                         theta: torch.Tensor | None = None, chunk: int = 64) -> torch.Tensor:
    """Each row's cross-entropy gradient ``grad CE_i(theta)``, shape ``(len(rows), p)``.

    No regulariser, no weights. Cost: one vectorised backward pass per sample (``vmap`` of
    ``grad``); memory ``chunk x p``.
    """
    theta = curv.theta if theta is None else theta
    rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.int64)

    def one(t: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(curv.forward_inputs(t, x[None]), y[None])

    per_sample = vmap(grad(one), in_dims=(None, 0, 0))
    out = [per_sample(theta, curv.inputs_of(rows_t[s:s + chunk]), curv.y[rows_t[s:s + chunk]])
           for s in range(0, rows_t.shape[0], chunk)]
    return torch.cat(out) if out else torch.empty(0, curv.size, dtype=curv.dtype)


def diagonal_ggn(curv: LossCurvature, rows: torch.Tensor | np.ndarray,
                 weights: torch.Tensor | np.ndarray | float | None = None, *,
                 theta: torch.Tensor | None = None, chunk: int = 16) -> torch.Tensor:
    """The diagonal of the Gauss-Newton matrix ``sum_i w_i J_i^T (diag p_i - p_i p_i^T) J_i``.

    Exact expectation over the model's predictive distribution (the diagonal of the Fisher
    information, as Fisher forgetting and K-FAC's fallback need it), from per-sample
    Jacobians of the logits: ``sum_c (sqrt(p_c) (J_c - p^T J))^2`` per sample. ``weights=None``
    means ``1/len(rows)``. Cost: ``K`` vectorised backward passes per sample; memory
    ``chunk x K x p``.
    """
    total = torch.zeros(curv.size, dtype=curv.dtype)
    for part, wc in curv.rows_chunks(rows, weights):
        for s in range(0, part.shape[0], chunk):
            M = curv.gauss_newton_rows(curv.inputs_of(part[s:s + chunk]), theta)  # (B, K, p)
            total += torch.einsum("b,bkp->p", wc[s:s + chunk], M * M)
    return total

"""How far a model's outputs and parameters are from the reference's.

All output distances compare two ``(n, n_classes)`` probability matrices row by row and
average over the rows. They are 0 (agreement 1) for a model identical to the reference; the
scale of a *good* value is the distance between two references trained with different
seeds (``evaluate(..., seeds=[...])`` shows that spread).

References: SCRUB (Kurmanji et al. 2023) code, activation distance; ALGORITHMS.md
section 5.4; DeltaGrad / certified removal for the parameter distance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.special import xlogy
from torch import nn

from expunge.exceptions import InvalidParameterError


def _pair(p: Any, q: Any) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for value in (p, q):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        arrays.append(np.clip(np.asarray(value, dtype=np.float64), 0.0, 1.0))
    a, b = arrays
    if a.shape != b.shape or a.ndim != 2:
        raise InvalidParameterError(
            f"both probability matrices must have the same shape (n, n_classes); got "
            f"{a.shape} and {b.shape}."
        )
    if a.shape[0] == 0:
        raise InvalidParameterError("cannot compare outputs on an empty set of samples.")
    return a, b


def prediction_agreement(p: Any, q: Any) -> float:
    """Fraction of samples where both models predict the same class (argmax; ties to the
    lowest class, as ``predict`` does)."""
    a, b = _pair(p, q)
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))


def mean_l1_distance(p: Any, q: Any) -> float:
    """Mean over samples of ``||p - q||_1`` (SCRUB's "activation distance"; in [0, 2])."""
    a, b = _pair(p, q)
    return float(np.abs(a - b).sum(axis=1).mean())


def js_divergence(p: Any, q: Any) -> float:
    """Mean over samples of the Jensen-Shannon divergence (natural log; in [0, ln 2])::

        JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2,   m = (p + q) / 2

    with ``0 log 0 = 0``, so zero probabilities (SISA's votes) need no clipping. Equals the
    square of ``scipy.spatial.distance.jensenshannon``.
    """
    a, b = _pair(p, q)
    m = (a + b) / 2.0
    # KL(x || m) = sum x log x - x log m; xlogy gives 0 wherever x is 0, and m > 0 wherever x > 0
    kl_a = (xlogy(a, a) - xlogy(a, m)).sum(axis=1)
    kl_b = (xlogy(b, b) - xlogy(b, m)).sum(axis=1)
    return float(np.maximum(0.5 * kl_a + 0.5 * kl_b, 0.0).mean())


def flat_parameters(module: nn.Module) -> tuple[list[tuple[str, tuple[int, ...]]], torch.Tensor]:
    """The module's floating-point state (parameters and buffers) as one float64 vector,
    with the ``(name, shape)`` layout that defines it."""
    layout: list[tuple[str, tuple[int, ...]]] = []
    parts: list[torch.Tensor] = []
    for name, tensor in sorted(module.state_dict().items()):
        if tensor.is_floating_point():
            layout.append((name, tuple(tensor.shape)))
            parts.append(tensor.detach().cpu().reshape(-1).to(torch.float64))
    flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    return layout, flat


def parameter_l2(a: nn.Module | None, b: nn.Module | None) -> tuple[float | None, str]:
    """``||theta_a - theta_b||_2`` over the floating-point state, when comparable.

    Returns ``(distance, "")``, or ``(None, reason)`` when either model is not a single
    network or their architectures (state names and shapes) differ.
    """
    if a is None or b is None:
        return None, "n/a: parameter distance needs two single-network models"
    layout_a, flat_a = flat_parameters(a)
    layout_b, flat_b = flat_parameters(b)
    if layout_a != layout_b:
        return None, "n/a: the architectures differ"
    return float(torch.linalg.vector_norm(flat_a - flat_b)), ""

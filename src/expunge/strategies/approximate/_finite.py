"""The check every approximate request passes before anything is written: finite parameters.

Gradient ascent and its relatives can diverge, and a patch can overflow; a model with NaN or
infinite parameters predicts nothing, and committing it would put a broken model and a
ledger entry that claims a deletion into the store. The request is refused instead, with
nothing changed (:class:`~expunge.exceptions.DivergedError`).
"""

from __future__ import annotations

import torch
from torch import nn

from expunge.exceptions import DivergedError


def require_finite(module: nn.Module, strategy: object, n_forgotten: int) -> None:
    """Raise :class:`DivergedError` naming the first non-finite parameter, if any.

    Cost: one pass over the parameters (``isfinite``), negligible next to any request.
    """
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            method = getattr(strategy, "name", type(strategy).__name__)
            raise DivergedError(
                f"{method}: forgetting {n_forgotten} samples gave non-finite parameters "
                f"({name!r} holds NaN or inf); nothing was changed. Lower the step size "
                "('lr') or the number of steps of this method, or use an exact strategy "
                "('retrain', 'sisa') for a request this large."
            )

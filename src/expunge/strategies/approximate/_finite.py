"""The check every approximate request passes before anything is written: a finite model.

Gradient ascent and its relatives can diverge, and a patch can overflow; a model with NaN or
infinite parameters predicts nothing, and committing it would put a broken model and a
ledger entry that claims a deletion into the store. The request is refused instead, with
nothing changed (:class:`~expunge.exceptions.DivergedError`).
"""

from __future__ import annotations

import torch
from torch import nn

from expunge.exceptions import DivergedError


def require_finite(module: nn.Module, method: str, n_forgotten: int,
                   inputs: torch.Tensor | None = None) -> None:
    """Raise :class:`DivergedError` if a parameter, or the output on ``inputs``, is not
    finite (parameters can stay finite while the logits overflow).

    Cost: one pass over the parameters, and one forward pass over ``inputs`` (the request
    passes the forgotten samples: a model that diverged while unlearning them breaks
    there first).
    """
    where = None
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            where = f"{name!r} holds NaN or inf"
            break
    if where is None and inputs is not None and len(inputs):
        with torch.no_grad():
            training = module.training
            module.eval()
            try:
                dtype = next(module.parameters()).dtype
                bad = sum(int((~torch.isfinite(module(chunk.to(dtype)))).any(dim=1).sum())
                          for chunk in torch.split(inputs, 4096))
            finally:
                module.train(training)
        if bad:
            where = f"its outputs overflow on {bad} of the {len(inputs)} forgotten samples"
    if where is not None:
        raise DivergedError(
            f"{method}: forgetting {n_forgotten} samples gave a broken model ({where}); "
            "nothing was changed. Lower the step size ('lr') or the number of steps of "
            "this method, or use an exact strategy ('retrain', 'sisa') for a request this "
            "large."
        )

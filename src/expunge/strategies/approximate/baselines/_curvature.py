"""The one adapter through which the baselines get curvature.

SSD and Fisher forgetting need the diagonal of the Fisher information; certified removal
needs the exact Hessian of its convex head. Both are computed here, and only here, so that
when the shared curvature package of PUMA lands (issue 13: reusable full-network K-FAC
factors) these two functions can be switched to it in one place:

* :func:`diagonal_fisher` for networks of ``nn.Linear`` layers is exact and costs about one
  training epoch: per-sample gradients of a linear layer are outer products ``g_i a_i^T``
  of the layer's output gradient and input, so ``sum_i (g_i a_i^T)^2 = (g^2)^T (a^2)`` is one
  matrix product per batch (the quantities K-FAC's factors are built from, before the
  Kronecker approximation). Other layers fall back to per-sample gradients with
  ``torch.func.vmap`` in chunks (COMPUTE.md: chunks of at most 100 rows).
* :func:`logistic_head_hessian` is the closed form ``X^T diag(s) X + lambda I`` of an
  L2-regularised binary logistic regression (Guo et al. 2020, eq. 4), in float64.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

FisherKind = Literal["empirical", "expected"]

#: rows per batch for the fast (linear) path and for the vmap fallback
FAST_CHUNK = 1024
VMAP_CHUNK = 64


def _linear_only(module: nn.Module, X: torch.Tensor) -> bool:
    """Every module that owns parameters is an ``nn.Linear`` fed 2-D inputs.

    The input check runs the first row through the network: a linear layer applied to
    sequences (3-D inputs) sums over positions, so its per-sample gradients are no longer
    outer products and the vmap path is used instead.
    """
    layers = [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
    if not all(isinstance(m, nn.Linear) for m in layers):
        return False
    dims: list[int] = []
    handles = [m.register_forward_pre_hook(lambda _m, args: dims.append(args[0].ndim))
               for m in layers]
    try:
        with torch.no_grad():
            module(X[:1])
    finally:
        for handle in handles:
            handle.remove()
    return all(d == 2 for d in dims)


def diagonal_fisher(
    module: nn.Module, X: torch.Tensor, y: torch.Tensor, *, kind: FisherKind = "empirical",
) -> dict[str, torch.Tensor]:
    """The diagonal of the Fisher information, averaged over the rows of ``X``.

    ``kind="empirical"``: ``mean_i (d CE(f(x_i), y_i) / d theta)^2`` (the labels given);
    ``kind="expected"``: ``mean_i sum_c p_c(x_i) (d log p_c(x_i) / d theta)^2`` (the
    model's own predictive distribution, Golatkar et al. 2020's choice; ``K`` times the
    cost). Returns one tensor per named parameter, in float32, in parameter order.

    Cost: one forward + backward pass over ``X`` (``K`` for "expected"). The module is
    left in eval mode and its gradients untouched.
    """
    was_training = module.training
    module.eval()
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    out = {name: torch.zeros_like(p, dtype=torch.float32)
           for name, p in module.named_parameters() if p.requires_grad}
    try:
        if X.shape[0] and _linear_only(module, X):
            _fisher_linear(module, X, y, kind, out)
        else:
            _fisher_vmap(module, X, y, kind, out, names)
    finally:
        module.train(was_training)
    n = max(1, X.shape[0])
    return {name: value / n for name, value in out.items()}


def _fisher_linear(module: nn.Module, X: torch.Tensor, y: torch.Tensor, kind: FisherKind,
                   out: dict[str, torch.Tensor]) -> None:
    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    handles = []
    for name, layer in layers:
        def keep(_m: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor,
                 name: str = name) -> None:
            inputs[name] = args[0].detach()
            if output.requires_grad:  # the gradient reaching this layer's output, per row
                output.register_hook(lambda g, name=name: grads.__setitem__(name, g.detach()))

        handles.append(layer.register_forward_hook(keep))
    try:
        for start in range(0, X.shape[0], FAST_CHUNK):
            xb, yb = X[start : start + FAST_CHUNK], y[start : start + FAST_CHUNK]
            logits = module(xb)
            log_p = F.log_softmax(logits, dim=1)
            if kind == "empirical":
                targets = [log_p.gather(1, yb[:, None]).sum()]
            else:
                # sqrt(p_c) * d log p_c per sample: its square is p_c (d log p_c)^2
                weights = log_p.detach().exp().sqrt()
                targets = [(weights[:, c] * log_p[:, c]).sum() for c in range(log_p.shape[1])]
            for index, objective in enumerate(targets):
                grads.clear()
                module.zero_grad(set_to_none=True)
                objective.backward(retain_graph=index < len(targets) - 1)
                for name, layer in layers:
                    a, g = inputs[name], grads[name]
                    out[f"{name}.weight" if name else "weight"] += (g * g).T @ (a * a)
                    if layer.bias is not None:
                        out[f"{name}.bias" if name else "bias"] += (g * g).sum(dim=0)
        module.zero_grad(set_to_none=True)
    finally:
        for handle in handles:
            handle.remove()


def _fisher_vmap(module: nn.Module, X: torch.Tensor, y: torch.Tensor, kind: FisherKind,
                 out: dict[str, torch.Tensor], names: list[str]) -> None:
    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in module.named_parameters() if name in names}
    buffers = {name: b.detach() for name, b in module.named_buffers()}

    def log_prob(p: dict[str, torch.Tensor], x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        logits = functional_call(module, (p, buffers), (x[None],))
        return F.log_softmax(logits, dim=1).gather(1, c.reshape(1, 1)).reshape(())

    per_sample = vmap(grad(log_prob), in_dims=(None, 0, 0))
    for start in range(0, X.shape[0], VMAP_CHUNK):
        xb, yb = X[start : start + VMAP_CHUNK], y[start : start + VMAP_CHUNK]
        if kind == "empirical":
            g = per_sample(params, xb, yb)
            for name in names:
                out[name] += (g[name] ** 2).sum(dim=0)
            continue
        with torch.no_grad():
            probs = torch.softmax(module(xb), dim=1)
        for c in range(probs.shape[1]):
            g = per_sample(params, xb, torch.full_like(yb, c))
            weight = probs[:, c].reshape(-1, *([1] * (g[names[0]].ndim - 1)))
            for name in names:
                w = weight.reshape(-1, *([1] * (g[name].ndim - 1)))
                out[name] += (w * g[name] ** 2).sum(dim=0)


def logistic_head_hessian(features: torch.Tensor, curvature: torch.Tensor,
                          l2: float) -> torch.Tensor:
    """``X^T diag(s) X + l2 I`` for one binary logistic model, float64.

    Args:
        features: ``(n, d)`` inputs of the head (with the bias column).
        curvature: ``(n,)`` per-sample second derivatives ``s_i = sigma(z_i)(1 - sigma(z_i))``.
        l2: the regulariser's weight on the sum-form objective (``lambda * n``).
    """
    X = features.to(torch.float64)
    H = (X * curvature.to(torch.float64)[:, None]).T @ X
    H.diagonal().add_(float(l2))
    return H

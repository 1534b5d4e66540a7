"""Jacobian-vector products by two reverse passes (the "double-vjp" trick).

Why not ``torch.func.jvp``: PyTorch's forward-mode AD loads and TorchScript-compiles its
decomposition table (``torch._decomp.decompositions_for_jvp``) the first time it is used
in a process, 1-4 s on this project's machine. Every ``expunge forget`` from the CLI is a
new process, so PUMA paid that on every request, more than the request itself on a
model the size of the benchmarks. Two reverse passes compute the same product with the
autograd engine already loaded, for about twice a gradient's cost:

``u -> J^T u`` is linear in ``u``, so differentiating ``<J^T u, v>`` with respect to ``u``
gives ``J v`` (Pearlmutter 1994; the trick used by e.g. Townsend 2017).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def jvp(fn: Callable[[torch.Tensor], torch.Tensor], primal: torch.Tensor,
        tangent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fn(primal), J_fn(primal) @ tangent)``, both detached, by two backward passes."""
    with torch.enable_grad():
        x = primal.detach().requires_grad_(True)
        out = fn(x)
        if not out.requires_grad:  # fn does not depend on its input: J = 0
            return out.detach(), torch.zeros_like(out)
        u = torch.zeros_like(out, requires_grad=True)
        # <out, u> and <pulled, tangent> as scalars rather than grad_outputs=: the same
        # products (d<out, u>/d out is u exactly), but a tensor grad_outputs makes autograd
        # import torch.fx's symbolic shapes (sympy, 0.5 s) on its first use in a process
        (pulled,) = torch.autograd.grad((out * u).sum(), x, create_graph=True,
                                        allow_unused=True)
        if pulled is None or not pulled.requires_grad:  # J^T u independent of u: J = 0
            return out.detach(), torch.zeros_like(out)
        (jv,) = torch.autograd.grad((pulled * tangent.to(pulled.dtype)).sum(), u,
                                    allow_unused=True)
    jv = torch.zeros_like(out) if jv is None else jv
    return out.detach(), jv.detach()


def hvp(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
        v: torch.Tensor) -> torch.Tensor:
    """Hessian-vector product ``(d2f/dtheta2) v`` of a scalar ``f``: reverse over reverse."""
    with torch.enable_grad():
        x = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(f(x), x, create_graph=True)
        if not g.requires_grad:  # f is linear in theta: no curvature
            return torch.zeros_like(theta)
        (hv,) = torch.autograd.grad((g * v.to(g.dtype)).sum(), x, allow_unused=True)
    return torch.zeros_like(theta) if hv is None else hv.detach()

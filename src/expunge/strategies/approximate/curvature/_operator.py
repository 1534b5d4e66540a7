"""The data-aware curvature operator: gradients, products and dense matrices of the loss.

:class:`LossCurvature` evaluates the weighted cross-entropy objective of a classifier on
rows of fixed data, for any parameter vector, with torch.func: the gradient, exact
Hessian or Gauss-Newton products, per-sample directional derivatives, the dense matrix
for small models, and a functional forward that other tools (K-FAC, per-sample gradients)
build on. Costs are stated per call in units of one "data pass" (a forward + backward over
the rows involved). Nothing here materialises an ``n x p`` per-sample gradient matrix.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vjp, vmap

from expunge.exceptions import InvalidParameterError, UnsupportedModelError
from expunge.strategies.approximate.curvature._common import FlatLayout
from expunge.strategies.approximate.curvature._jvp import jvp
from expunge.strategies.approximate.curvature._products import dense_from_matvec, hvp

CurvatureKind = Literal["exact", "ggn"]
Scope = Literal["all", "last_layer"]


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
        cache_features: with ``scope="last_layer"``, compute the head's inputs for every
            row of ``X`` once, up front (one forward pass over ``X``), so that each later
            product is a small matrix product. Worth it for iterative solvers that make
            hundreds of products; ``False`` keeps every call proportional to the rows it
            touches (what a per-request computation on a few rows needs).
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
        cache_features: bool = True,
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
        self._inputs = X if isinstance(X, torch.Tensor) else _LazyRows(X)
        self._features = scope == "last_layer" and cache_features and self._cache_features(X)
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

    def inputs_of(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The inputs the in-scope parameters see for ``rows`` (the head's cached inputs
        for ``scope="last_layer"`` with ``cache_features``), in :attr:`dtype`."""
        return self._inputs[torch.as_tensor(np.asarray(rows), dtype=torch.int64)].to(self.dtype)

    def forward_inputs(self, theta: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """Logits for inputs from :meth:`inputs_of` at ``theta`` (functional; vmap-able)."""
        return self._forward(theta, xs)

    def gauss_newton_rows(self, xs: torch.Tensor, theta: torch.Tensor | None = None
                          ) -> torch.Tensor:
        """Per-sample square roots ``M_i = C_i^T J_i`` of the Gauss-Newton matrix, shape
        ``(B, K, p)``: ``J_i`` the Jacobian of the logits, ``C_i C_i^T = diag p_i - p_i p_i^T``,
        so that ``sum_i w_i M_i^T M_i`` is the GGN. Row ``k`` is ``sqrt(p_ik) (J_ik - sum_l
        p_il J_il)``. Cost: ``K`` vectorised backward passes per sample; memory ``B K p``."""
        theta = self.theta if theta is None else theta

        def single(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return self._forward(t, x[None])[0]

        J = vmap(jacrev(single), in_dims=(None, 0))(theta, xs)
        with torch.no_grad():
            probs = torch.softmax(self._forward(theta, xs), dim=1)
        return probs.sqrt()[:, :, None] * (J - torch.einsum("il,ilp->ip", probs, J)[:, None, :])

    def logits(self, rows: torch.Tensor | np.ndarray, theta: torch.Tensor | None = None
               ) -> torch.Tensor:
        """The model's outputs on ``rows`` at ``theta`` (default: the model's parameters),
        differentiable with respect to ``theta``. Cost: one forward pass over the rows."""
        rows_t = rows if isinstance(rows, torch.Tensor) else torch.as_tensor(
            np.asarray(rows), dtype=torch.int64)
        return self._logits(self.theta if theta is None else theta, rows_t)

    @property
    def root(self) -> tuple[nn.Module, str]:
        """``(module, prefix)``: the module whose sub-modules hold the parameters in scope
        (the head for ``scope="last_layer"`` with cached inputs, else the whole model) and
        the prefix of their names in :attr:`layout`."""
        if self._features:
            return self._head, self._prefix
        return self.module, ""

    def rows_chunks(self, rows: torch.Tensor | np.ndarray,
                    weights: torch.Tensor | np.ndarray | float | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(rows, weights)`` in chunks of :attr:`chunk_size`, zero weights dropped
        (``weights=None``: ``1/len(rows)``)."""
        rows_t, w = self._prepare(rows, weights)
        keep = w != 0
        for chunk, wc in self._chunks(rows_t[keep], w[keep]):
            assert wc is not None
            yield chunk, wc

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
        total, _, weight = self.gradient_and_loss(rows, weights, theta=theta)
        if regularizer:
            total = total + weight * self.weight_decay * theta
        return total

    def gradient_and_loss(self, rows: torch.Tensor | np.ndarray,
                          weights: torch.Tensor | np.ndarray | float | None = None, *,
                          theta: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, float, float]:
        """``(sum_i w_i grad CE_i, sum_i w_i CE_i, sum_i w_i)`` in one backward pass per chunk
        (no regulariser; ``weights=None``: ``1/len(rows)``)."""
        theta = self.theta if theta is None else theta
        total = torch.zeros_like(theta)
        value, weight = 0.0, 0.0
        for chunk, wc in self.rows_chunks(rows, weights):
            # plain reverse mode, not torch.func.grad_and_value: the same backward kernels,
            # but torch.func's grad imports torch._dynamo (~800 modules, 1.3 s) on its first
            # call in a process, which every `expunge forget` process paid
            at = theta.detach().requires_grad_(True)
            with torch.enable_grad():
                ce = F.cross_entropy(self._logits(at, chunk), self.y[chunk], reduction="none")
                v = (wc * ce).sum()
                (g,) = torch.autograd.grad(v, at)
            total, value, weight = total + g, value + float(v.detach()), weight + float(wc.sum())
        return total, value, weight

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

                z, jv = jvp(model_fn, theta, v)
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

        ``d/dt CE_i(theta + t v)`` at 0: one Jacobian-vector product per chunk and
        direction (two reverse passes, :mod:`._jvp`), so no per-sample gradient is ever
        stored (ALGORITHMS.md section 1(b) step 2). ``V`` has shape ``(K, p)``. Cost:
        ``K`` JVPs over the rows.
        """
        theta = self.theta if theta is None else theta
        rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        out = []
        for chunk, _ in self._chunks(rows_t):
            def per_sample(t: torch.Tensor, chunk: torch.Tensor = chunk) -> torch.Tensor:
                return F.cross_entropy(self._logits(t, chunk), self.y[chunk], reduction="none")

            out.append(torch.stack([jvp(per_sample, theta, vk)[1] for vk in V], dim=1))
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

        if linear_head:  # a softmax of a linear map: the Hessian equals the GGN
            matrix = self._dense_linear_head(rows_t, w)
            diagonal = float(w.sum()) * self.weight_decay + self.damping
            return matrix + diagonal * torch.eye(p, dtype=self.dtype)
        step = max(1, min(self.chunk_size, 4_000_000 // p))
        for start in range(0, rows_t.shape[0], step):
            chunk, wc = rows_t[start:start + step], w[start:start + step]
            flat = self.gauss_newton_rows(self.inputs_of(chunk)).reshape(-1, p)
            per_row = wc.repeat_interleave(flat.shape[0] // chunk.shape[0])
            matrix += (flat * per_row[:, None]).T @ flat
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

    # -------------------------------------------------------------- results
    def module_with(self, theta: torch.Tensor, like: nn.Module) -> nn.Module:
        """A copy of ``like`` (dtype and all) with the in-scope parameters set to ``theta``."""
        out = copy.deepcopy(like)
        params = dict(out.named_parameters())
        with torch.no_grad():
            for name, tensor in self.layout.unflatten(theta).items():
                params[name].copy_(tensor.to(params[name].dtype))
        return out.eval()


class _LazyRows:
    """Rows of a lazy input view (``IndexedDataset.batches()``: only the rows asked for are
    gathered and transformed), indexable by the index tensors the operator uses, also
    inside ``torch.func`` transforms, whose dispatch refuses ``.numpy()`` on any tensor."""

    def __init__(self, view: Any) -> None:
        self.view = view
        self.shape = tuple(view.shape)

    def __getitem__(self, rows: Any) -> torch.Tensor:
        if isinstance(rows, torch.Tensor):
            with torch._C._DisableFuncTorch():  # a plain index, never differentiated
                rows = rows.detach().cpu().numpy().copy()
        out: torch.Tensor = self.view[rows]
        return out

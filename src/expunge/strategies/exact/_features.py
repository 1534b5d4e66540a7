"""Data-independent feature maps for ARCANE, computed by row-independent kernels.

ARCANE's selection and its Gaussian one-class learner see samples through a feature map
``φ``. Two properties are required and both are guaranteed here:

* **independent of the training data**: every map is a fixed function keyed by the seed
  (random filters or matrices drawn from keyed uniforms), so a deletion can never change
  another sample's features, and one class's features never depend on another class;
* **row-independent bits**: a row's features are the same bits whichever other rows are
  computed with it (one image at a time, in batches, in a worker process, with or without
  numba). Every output is accumulated in a fixed order through correctly rounded IEEE
  operations, never by a BLAS product whose blocking depends on the batch. This is what
  lets features be computed once per sample and reused (in memory, from the store) in
  place of recomputing them, and what keeps "deleting an unselected sample changes
  nothing" true bit for bit.

Maps (``kind``):

``"conv"`` (images): ``dim / 16`` random 5×5 filters (entries ``N(0, 1/(C·25))``, keyed by
    the seed) convolved with each ``(C, H, W)`` image ("valid", stride 1), ReLU, then
    average pooling onto a 4×4 grid (windows of ``(H-4)//4`` pixels: 6×6 on 28×28), so
    ``dim = 16·filters`` (512 for 32 filters). Computed in float32. A Gaussian on these
    features separates digits as well as an MLP does, where a Gaussian on a linear map
    of the pixels cannot (a class of handwritten digits is not Gaussian in pixel space;
    pooled rectified filter responses are far closer to it, and are translation tolerant).
``"relu"`` (tabular): ``max(0, x W + b)`` with ``W`` ``N(0, 1/d)`` and ``b`` uniform in
    ``[-1, 1]`` (keyed by the seed), ``dim`` outputs, float64: random ReLU features that
    turn one-hot and standardised columns into a smoother, better-conditioned space.
``"projection"``: ``x W`` with ``W`` ``N(0, 1/d)`` (the original map; float64).
``"pixels"``: the flattened input itself (float64).

Cost on one core: conv ~25-30 µs per 28×28 image for 512 features (compiled); relu and
projection ``d·dim`` multiply-adds per row. Without numba the same operations run as
vectorised numpy over the batch (same bits, several times slower).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from expunge._hashing import derive_key, keyed_uniform
from expunge.exceptions import InvalidParameterError
from expunge.strategies.exact._greedy_kernel import HAVE_NUMBA, _compiled

KINDS = ("conv", "relu", "projection", "pixels")
#: the conv map pools onto a GRID x GRID grid; its filters are SIZE x SIZE
CONV_GRID = 4
CONV_SIZE = 5
DEFAULT_DIM = {"conv": 512, "relu": 1024, "projection": 128}


def is_image(input_shape: tuple[int, ...]) -> bool:
    """``(C, H, W)`` inputs large enough for the conv map (H, W ≥ 8)."""
    return len(input_shape) == 3 and min(input_shape[1:]) >= CONV_SIZE + CONV_GRID - 1


def resolve_kind(kind: str, input_shape: tuple[int, ...]) -> str:
    """``"auto"``: ``"conv"`` for images, ``"relu"`` for everything else."""
    if kind == "auto":
        return "conv" if is_image(input_shape) else "relu"
    return kind


@dataclass(frozen=True)
class FeatureMap:
    """A data-independent embedding ``x -> φ(x)`` (see the module docstring).

    Args:
        kind: ``"conv"``, ``"relu"``, ``"projection"`` or ``"pixels"`` (resolve ``"auto"``
            with :func:`resolve_kind` first).
        dim: output dimension (``None``: the map's default, 512 / 1024 / 128; ignored for
            ``"pixels"``); for ``"conv"`` a multiple of 16.
        seed: every random entry is a keyed hash of ``(seed, map, entry)``.
    """

    kind: str = "projection"
    dim: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidParameterError(
                f"Unknown feature map {self.kind!r}; use one of {', '.join(KINDS)}."
            )
        if self.kind == "conv" and self.out_dim(()) % (CONV_GRID * CONV_GRID):
            raise InvalidParameterError(
                f"feature_dim={self.dim} for features='conv' must be a multiple of "
                f"{CONV_GRID * CONV_GRID} (filters x a {CONV_GRID}x{CONV_GRID} grid), e.g. 512."
            )

    def out_dim(self, input_shape: tuple[int, ...]) -> int:
        if self.kind == "pixels":
            return int(math.prod(input_shape))
        return int(self.dim) if self.dim is not None else DEFAULT_DIM[self.kind]

    def check_input(self, input_shape: tuple[int, ...]) -> None:
        """Refuse inputs this map cannot embed (before anything is written)."""
        if self.kind == "conv" and not is_image(input_shape):
            raise InvalidParameterError(
                f"features='conv' needs image inputs (C, H, W) with H, W >= "
                f"{CONV_SIZE + CONV_GRID - 1}; got input shape {input_shape}. Use "
                "features='relu' (or 'auto') for tabular data."
            )

    # ------------------------------------------------------------- parameters
    def filters(self, channels: int) -> np.ndarray:
        """The conv map's filters ``(F, C, 5, 5)``, float32."""
        n = self.out_dim(()) // (CONV_GRID * CONV_GRID)
        shape = (n, channels, CONV_SIZE, CONV_SIZE)
        scale = 1.0 / math.sqrt(channels * CONV_SIZE * CONV_SIZE)
        return (_keyed_normal(self.seed, "conv", shape) * scale).astype(np.float32)

    def matrix(self, n_inputs: int) -> np.ndarray:
        """``W`` ``(n_inputs, dim)`` of the projection and relu maps, ``N(0, 1/n_inputs)``."""
        label = "arcane-features" if self.kind == "projection" else "relu"
        shape = (n_inputs, self.out_dim(()))
        return _keyed_normal(self.seed, label, shape) / math.sqrt(n_inputs)

    def bias(self) -> np.ndarray:
        """``b`` of the relu map, uniform in ``[-1, 1]``."""
        entries = np.arange(self.out_dim(()), dtype=np.int64)
        return 2.0 * keyed_uniform(derive_key(self.seed, "relu", "bias"), entries) - 1.0

    # ------------------------------------------------------------------ maps
    @torch.no_grad()
    def rowwise(self, X: torch.Tensor | np.ndarray) -> np.ndarray:
        """``φ(X)``, float32 ``(n, out_dim)``; each row's bits independent of the others.

        The features *are* these float32 values (relu and projection are accumulated in
        float64 and rounded once), so storing them loses nothing and every consumer
        (training, scoring, selection) sees the same numbers.
        """
        array = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        if array.shape[0] == 0:
            return np.zeros((0, self.out_dim(tuple(array.shape[1:]))), dtype=np.float32)
        if self.kind == "conv":
            self.check_input(tuple(array.shape[1:]))
            images = np.ascontiguousarray(array, dtype=np.float32)
            return _conv_features(images, self.filters(images.shape[1]))
        flat = np.ascontiguousarray(array.reshape(array.shape[0], -1), dtype=np.float64)
        if self.kind == "pixels":
            return flat.astype(np.float32)
        W = _cached(self, flat.shape[1])
        bias = self.bias() if self.kind == "relu" else None
        return _linear(flat, W, bias).astype(np.float32)

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """``φ(X)`` as a float64 tensor (the float32 values of :meth:`rowwise`, exactly)."""
        return torch.from_numpy(self.rowwise(X).astype(np.float64))


# ----------------------------------------------------------------------- entries
def _keyed_normal(seed: int, label: str, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal entries from keyed uniforms (Box-Muller), a fixed function of
    ``(seed, label, entry)`` on every platform and library version."""
    entries = np.arange(math.prod(shape), dtype=np.int64)
    u1 = 1.0 - keyed_uniform(derive_key(seed, label, "u1"), entries)  # (0, 1]
    u2 = keyed_uniform(derive_key(seed, label, "u2"), entries)
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).reshape(shape)


_MATRIX_CACHE: dict[tuple[Any, ...], np.ndarray] = {}


def _cached(fmap: FeatureMap, n_inputs: int) -> np.ndarray:
    key = (fmap.kind, fmap.out_dim(()), fmap.seed, n_inputs)
    if key not in _MATRIX_CACHE:
        if len(_MATRIX_CACHE) > 8:
            _MATRIX_CACHE.clear()
        _MATRIX_CACHE[key] = np.ascontiguousarray(fmap.matrix(n_inputs))
    return _MATRIX_CACHE[key]


# ---------------------------------------------------------------------- kernels
@_compiled
def _linear_compiled(X: np.ndarray, W: np.ndarray, b: np.ndarray, relu: bool) -> np.ndarray:
    n, d = X.shape
    dim = W.shape[1]
    out = np.zeros((n, dim))
    for i in range(n):
        for j in range(d):
            x = X[i, j]
            for c in range(dim):
                out[i, c] += x * W[j, c]
        if relu:
            for c in range(dim):
                v = out[i, c] + b[c]
                out[i, c] = v if v > 0.0 else 0.0
    return out


def _linear_numpy(X: np.ndarray, W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    out = np.zeros((X.shape[0], W.shape[1]))
    tmp = np.empty_like(out)
    for j in range(X.shape[1]):
        np.multiply(X[:, j, None], W[j], out=tmp)
        out += tmp
    if b is not None:
        out += b
        out[~(out > 0.0)] = 0.0
    return out


def _linear(X: np.ndarray, W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """``X W`` (``+ b``, ReLU), each output accumulated over inputs in order."""
    if HAVE_NUMBA:
        bias = np.zeros(W.shape[1]) if b is None else np.ascontiguousarray(b)
        return np.asarray(_linear_compiled(X, W, bias, b is not None))
    return _linear_numpy(X, W, b)


@_compiled
def _conv_compiled(images: np.ndarray, filters: np.ndarray) -> np.ndarray:
    n, C, H, W = images.shape
    F, _, k, _ = filters.shape
    oh = H - k + 1
    ow = W - k + 1
    win_h = oh // 4
    win_w = ow // 4
    scale = np.float32(1.0 / (win_h * win_w))
    # filters as (C, k, k, F): the innermost loop runs over the filters, contiguously
    bank = np.empty((C, k, k, F), dtype=np.float32)
    for f in range(F):
        for c in range(C):
            for dy in range(k):
                for dx in range(k):
                    bank[c, dy, dx, f] = filters[f, c, dy, dx]
    out = np.zeros((n, F * 16), dtype=np.float32)
    acc = np.zeros((oh, ow, F), dtype=np.float32)
    pooled = np.zeros(F, dtype=np.float32)
    for i in range(n):
        # every output sums its terms in the order (c, dy, dx), as the numpy path does
        for y in range(oh):
            for x in range(ow):
                for f in range(F):
                    acc[y, x, f] = 0
                for c in range(C):
                    for dy in range(k):
                        for dx in range(k):
                            v = images[i, c, y + dy, x + dx]
                            for f in range(F):
                                acc[y, x, f] += v * bank[c, dy, dx, f]
        for gy in range(4):
            for gx in range(4):
                for f in range(F):
                    pooled[f] = 0
                for a in range(win_h):
                    for b in range(win_w):
                        for f in range(F):
                            v = acc[gy * win_h + a, gx * win_w + b, f]
                            if v > 0:
                                pooled[f] += v
                for f in range(F):
                    out[i, f * 16 + gy * 4 + gx] = pooled[f] * scale
    return out


def _conv_numpy(images: np.ndarray, filters: np.ndarray, batch: int = 1024) -> np.ndarray:
    n, C, H, W = images.shape
    F, _, k, _ = filters.shape
    oh, ow = H - k + 1, W - k + 1
    win_h, win_w = oh // CONV_GRID, ow // CONV_GRID
    scale = np.float32(1.0 / (win_h * win_w))
    out = np.zeros((n, F * CONV_GRID * CONV_GRID), dtype=np.float32)
    for start in range(0, n, batch):
        x = images[start:start + batch]
        for f in range(F):
            acc = np.zeros((x.shape[0], oh, ow), dtype=np.float32)
            for c in range(C):
                for dy in range(k):
                    for dx in range(k):
                        acc += filters[f, c, dy, dx] * x[:, c, dy:dy + oh, dx:dx + ow]
            acc[~(acc > 0)] = 0  # ReLU: adding +0 leaves a sum unchanged, as skipping does
            pooled = np.zeros((x.shape[0], CONV_GRID, CONV_GRID), dtype=np.float32)
            for a in range(win_h):
                for b in range(win_w):
                    pooled += acc[:, a:CONV_GRID * win_h:win_h, b:CONV_GRID * win_w:win_w]
            out[start:start + batch, f * 16:(f + 1) * 16] = (pooled * scale).reshape(-1, 16)
    return out


def _conv_features(images: np.ndarray, filters: np.ndarray) -> np.ndarray:
    if HAVE_NUMBA:
        return np.asarray(_conv_compiled(images, filters))
    return _conv_numpy(images, filters)

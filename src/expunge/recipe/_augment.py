"""Keyed data augmentation: each sample's transform is a function of its own 64-bit key.

The key of sample ``i`` in epoch ``e`` of block ``b`` of sub-model ``k`` is
``keyed_hash(derive_key(seed, "augment", k, b, e), i)``: it depends on nothing but those
five values, never on the batch the sample lands in or on which other samples exist, so
forgetting one sample leaves every other sample's augmentation as ``fit(D.drop(F))`` would
draw it (the argument of docs/guarantees.md; ALGORITHMS.md section 3 for the keys).

A user augmentation is a callable ``f(x, keys) -> x`` taking a batch ``x`` (on the training
device) and a NumPy ``uint64`` array with one key per row; it must be a pure function of
its arguments (seed a generator per sample from its key, e.g. ``numpy.random.default_rng(k)``
or ``torch.Generator().manual_seed(int(k))``).

The built-ins act on image batches ``(N, C, H, W)``: ``"crop"`` pads each image with
``pad = max(1, min(H, W) // 8)`` zero pixels per side (4 for 32x32, 3 for 28x28, 1 for 8x8)
and cuts an ``H x W`` window at a keyed offset; ``"flip"`` mirrors each image left-right
with probability 1/2; ``"crop+flip"`` does both (independent bits of the key).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from expunge._hashing import derive_key, keyed_hash, mix
from expunge.exceptions import DatasetError, InvalidParameterError

Augmentation = Callable[[torch.Tensor, np.ndarray], torch.Tensor]

#: the built-in augmentations' names
AUGMENTATIONS = ("crop", "flip", "crop+flip")


def sample_keys(seed: int, submodel: int, block: int, epoch: int, ids: np.ndarray) -> np.ndarray:
    """One uint64 key per id: a function of ``(seed, submodel, block, epoch, id)`` only."""
    return keyed_hash(derive_key(seed, "augment", submodel, block, epoch), ids)


def crop_padding(height: int, width: int) -> int:
    """Zero pixels added per side by the built-in crop."""
    return max(1, min(height, width) // 8)


def _keyed_bits(keys: np.ndarray, salt: int) -> np.ndarray:
    """Fresh uint64 bits per key for one purpose (so crop and flip draw independently)."""
    return mix(np.asarray(keys, dtype=np.uint64) ^ np.uint64(salt))


def random_crop(x: torch.Tensor, keys: np.ndarray) -> torch.Tensor:
    """Pad-and-crop each image at an offset drawn from its key (shape is kept)."""
    n, _, height, width = x.shape
    pad = crop_padding(height, width)
    span = np.uint64(2 * pad + 1)
    bits = _keyed_bits(keys, 0xC809)
    dy = torch.from_numpy((bits % span).astype(np.int64)).to(x.device)
    dx = torch.from_numpy(((bits >> np.uint64(32)) % span).astype(np.int64)).to(x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(height, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]


def random_flip(x: torch.Tensor, keys: np.ndarray) -> torch.Tensor:
    """Mirror each image left-right when its key's flip bit is set (probability 1/2)."""
    bits = _keyed_bits(keys, 0xF11B) >> np.uint64(63)
    flip = torch.from_numpy(bits.astype(np.bool_)).to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(-1), x)


def crop_and_flip(x: torch.Tensor, keys: np.ndarray) -> torch.Tensor:
    return random_flip(random_crop(x, keys), keys)


_BUILT_IN: dict[str, Augmentation] = {
    "crop": random_crop, "flip": random_flip, "crop+flip": crop_and_flip,
}


def resolve_augmentation(augment: str | Augmentation | None) -> Augmentation | None:
    """The augmentation function for a built-in name, a callable or ``None``."""
    if augment is None or callable(augment):
        return augment
    return _BUILT_IN[str(augment)]


def check_augmentation_input(augment: str | Augmentation | None,
                             input_shape: tuple[int, ...]) -> None:
    """Refuse a built-in augmentation for inputs that are not images ``(C, H, W)``.

    Raises:
        DatasetError: naming the shape and the fixes.
    """
    if isinstance(augment, str) and augment in _BUILT_IN and len(input_shape) != 3:
        raise DatasetError(
            f"augment={augment!r} works on images, inputs of shape (N, C, H, W); this dataset's "
            f"inputs have shape (N, {', '.join(map(str, input_shape))}). Reshape them to "
            "(N, C, H, W) (e.g. 8x8 digits: X.reshape(-1, 1, 8, 8)), pass augment=None, or pass "
            "a callable f(x, keys) -> x."
        )


def apply_augmentation(augment: Augmentation, x: torch.Tensor, keys: np.ndarray) -> torch.Tensor:
    """``augment(x, keys)``, checked: a tensor with one row per input row.

    Raises:
        InvalidParameterError: the augmentation returned something else.
    """
    out = augment(x, keys)
    if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != x.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidParameterError(
            f"augment={augment!r} returned {got} for a batch of shape {tuple(x.shape)}; it must "
            "return a tensor with one row per input row: f(x, keys) -> x."
        )
    return out

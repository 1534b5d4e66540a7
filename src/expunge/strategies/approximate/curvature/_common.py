"""Shared pieces of the curvature toolkit: the flat parameter layout and warnings.

Every solver in this package works on one flat vector ``theta`` holding the parameters in
scope, so that it never sees module structure; :class:`FlatLayout` maps between the two.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from expunge.exceptions import ApproximationWarning

Matvec = Callable[[torch.Tensor], torch.Tensor]
_PACKAGE_DIR = str(Path(__file__).resolve().parents[3])


def warn_approximation(message: str) -> None:
    """Emit an :class:`ApproximationWarning` attributed to the first caller outside expunge."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(ApproximationWarning(message), stacklevel=level)


@dataclass(frozen=True)
class FlatLayout:
    """Names and shapes of the parameters packed into one flat vector, in order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, module: nn.Module, names: list[str] | None = None) -> FlatLayout:
        """Layout of ``module``'s parameters ``names`` (default: every trainable one)."""
        params = dict(module.named_parameters())
        if names is None:
            names = [n for n, p in params.items() if p.requires_grad]
        return cls(tuple(names), tuple(tuple(params[n].shape) for n in names))

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        """Total number of scalars ``p``."""
        return sum(self.numels)

    def offsets(self) -> dict[str, tuple[int, int]]:
        """``name -> (start, stop)`` in the flat vector."""
        out, start = {}, 0
        for name, k in zip(self.names, self.numels):
            out[name] = (start, start + k)
            start += k
        return out

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, shape, k in zip(self.names, self.shapes, self.numels):
            out[name] = flat[start : start + k].view(shape)
            start += k
        return out



"""Shared pieces of the curvature toolkit: the flat parameter layout and warnings.

Every solver in this package works on one flat vector ``theta`` holding the parameters in
scope, so that it never sees module structure; :class:`FlatLayout` maps between the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from expunge._warnings import warn_from_caller
from expunge.exceptions import ApproximationWarning

Matvec = Callable[[torch.Tensor], torch.Tensor]


def warn_approximation(message: str) -> None:
    """Emit an :class:`ApproximationWarning` attributed to the first caller outside expunge."""
    warn_from_caller(ApproximationWarning(message))


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



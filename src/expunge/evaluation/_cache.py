"""An in-memory cache shared by several :func:`evaluate` calls (``cache=``).

A benchmark that evaluates many methods on the same data and seeds trains the same
retrained references and shadow models again and again: they depend on the training
recipe, the seed and the exact training ids, not on the method. Passing one
:class:`EvaluationCache` to every call trains each once. Entries are keyed by everything
the model depends on (recipe parameters, seed, sorted training ids), so a hit is always
the model that would have been trained; nothing is written to disk, and the cache holds
no forget request's result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class CachedShadow:
    """One shadow model's predictions on a pool: ids (sorted), the probability of each
    label, LiRA's logit-scaled confidence, and what training it cost."""

    ids: np.ndarray
    p_label: np.ndarray
    phi: np.ndarray
    seconds: float
    size: int


@dataclass
class EvaluationCache:
    """References and shadow-model predictions, reused across :func:`evaluate` calls.

    Attributes:
        hits / misses: lookups served and not served, per kind (``"reference"``,
            ``"shadow"``), for the report.
    """

    references: dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]] = field(
        default_factory=dict)
    shadows: dict[str, CachedShadow] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)

    def _count(self, kind: str, hit: bool) -> None:
        book = self.hits if hit else self.misses
        book[kind] = book.get(kind, 0) + 1

    def get_reference(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        found = self.references.get(key)
        self._count("reference", found is not None)
        return None if found is None else ({k: v.clone() for k, v in found[0].items()},
                                           dict(found[1]))

    def put_reference(self, key: str, tensors: dict[str, torch.Tensor],
                      meta: dict[str, str]) -> None:
        self.references[key] = ({k: v.detach().clone() for k, v in tensors.items()}, dict(meta))

    def get_shadow(self, key: str) -> CachedShadow | None:
        found = self.shadows.get(key)
        self._count("shadow", found is not None)
        return found

    def put_shadow(self, key: str, shadow: CachedShadow) -> None:
        self.shadows[key] = shadow

    def summary(self) -> dict[str, Any]:
        return {"hits": dict(self.hits), "misses": dict(self.misses),
                "references": len(self.references), "shadows": len(self.shadows)}

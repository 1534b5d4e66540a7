"""The fitted state of PUMA / NaiveInfluence: one module, the criterion ids, the cache."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from expunge._hashing import sha256_ids
from expunge.models import module_fingerprint
from expunge.store import Store
from expunge.strategies.approximate.puma._cache import PumaCache
from expunge.strategies.base import FittedModel
from expunge.training import batched_forward


class PumaModel(FittedModel):
    """One patched module, the criterion (validation) ids, the removed classes and the
    per-bucket cache (``None`` only while a strategy is being built)."""

    def __init__(self, module: nn.Module, val_ids: np.ndarray, *,
                 removed_classes: tuple[int, ...] = (), cache: PumaCache | None = None,
                 sample_passes: int = 0, info: Mapping[str, Any] | None = None) -> None:
        self.module = module.eval()
        self.val_ids = np.sort(np.asarray(val_ids, dtype=np.int64))
        self.removed_classes = tuple(sorted(int(c) for c in removed_classes))
        self.cache = cache
        self.sample_passes = sample_passes
        self.info = dict(info or {})
        self._fingerprint = module_fingerprint(self.module)
        #: harmfulness scores computed on demand at these parameters (never stored)
        #: harmfulness scores by curvature (computed on demand, never stored)
        self.scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def single_module(self) -> nn.Module:
        return self.module

    @property
    def model_blob(self) -> str:
        return f"puma/model-{self._fingerprint[:32]}"

    @property
    def val_blob(self) -> str:
        return f"puma/val-{sha256_ids(self.val_ids)[:32]}"

    def write(self, store: Store) -> None:
        store.write_blob(self.model_blob, dict(self.module.state_dict()), {"kind": "puma-model"})
        store.write_blob(self.val_blob, {"ids": torch.from_numpy(self.val_ids.copy())},
                         {"kind": "puma-criterion-ids"})
        if self.cache is not None:
            self.cache.write(store)

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model_blob, "val": self.val_blob,
            "cache": None if self.cache is None else self.cache.meta(),
            "removed_classes": list(self.removed_classes), "info": self.info,
        }

    def live_blobs(self) -> set[str]:
        live = {self.model_blob, self.val_blob}
        if self.cache is not None:
            live |= {s.blob_name for s in self.cache.buckets.values()}
        return live

    def learned_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in sorted(self.module.state_dict().items()):
            yield f"model/{name}", tensor

    def predict_proba(self, X: torch.Tensor) -> torch.Tensor:
        # a user's module (from_model) may hold float64 weights; inputs arrive as float32
        dtype = next(self.module.parameters()).dtype
        return torch.softmax(batched_forward(self.module, X.to(dtype)), dim=1).float()

    def fingerprint(self) -> str:
        return self._fingerprint

    @classmethod
    def read(cls, state: dict[str, Any], store: Store, module: nn.Module) -> PumaModel:
        tensors, _ = store.read_blob(state["model"])
        module.load_state_dict(tensors)
        val_tensors, _ = store.read_blob(state["val"])
        cache = None if state.get("cache") is None else PumaCache.read(state["cache"], store)
        return cls(module, val_tensors["ids"].numpy(),
                   removed_classes=tuple(state.get("removed_classes", ())), cache=cache,
                   info=state.get("info", {}))

"""The exact engine's fitted model: trained sub-models plus the strategy that aggregates them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from expunge.strategies.base import FittedModel
from expunge.strategies.exact._plan import checkpoint_names

if TYPE_CHECKING:
    from expunge.parallel import RunStats


@dataclass
class Submodel:
    """One trained sub-model: its final module, extras and the chain of block keys."""

    index: int
    keys: list[str]
    module: nn.Module
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    n_trained: int = 0

    @property
    def blobs(self) -> list[str]:
        return checkpoint_names(self.index, self.keys)


class Aggregator(Protocol):
    """What a :class:`ShardedModel` predicts with: the strategy's ``_aggregate``."""

    def _aggregate(self, submodels: Sequence[Submodel], X: torch.Tensor) -> torch.Tensor: ...


class ShardedModel(FittedModel):
    """Sub-models plus the strategy that aggregates them.

    ``run_stats`` says how the sub-models of the request that built this model were
    trained when an executor ran them (``None`` when they trained in the calling process).
    """

    def __init__(self, strategy: Aggregator, submodels: list[Submodel],
                 sample_passes: int = 0, run_stats: RunStats | None = None) -> None:
        self.strategy = strategy
        self.submodels = submodels
        self.sample_passes = sample_passes
        self.info: dict[str, Any] = {}
        self.run_stats = run_stats
        #: a subclass's own committed state (JSON) and the blobs it keeps alive
        self.extra_state: dict[str, Any] = {}
        self.extra_blobs: frozenset[str] = frozenset()

    def state(self) -> dict[str, Any]:
        return {"submodels": [{"keys": s.keys, "n_trained": s.n_trained} for s in self.submodels],
                **self.extra_state}

    def live_blobs(self) -> set[str]:
        return {blob for s in self.submodels for blob in s.blobs} | set(self.extra_blobs)

    def learned_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for s in self.submodels:
            for name, tensor in sorted(s.module.state_dict().items()):
                yield f"{s.index}/model/{name}", tensor
            for name, tensor in sorted(s.extras.items()):
                yield f"{s.index}/extra/{name}", tensor

    def predict_proba(self, X: torch.Tensor) -> torch.Tensor:
        return self.strategy._aggregate(self.submodels, X)

    def single_module(self) -> nn.Module | None:
        """The network when there is exactly one sub-model (Retrain), else ``None``."""
        return self.submodels[0].module if len(self.submodels) == 1 else None

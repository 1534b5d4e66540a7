"""ARCANE's fitted model: sub-models plus per-class state, with an incremental fingerprint."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from expunge.strategies.base import FittedModel
from expunge.strategies.exact._class_state import ClassState
from expunge.strategies.exact.sharded import ShardedModel, Submodel


class ARCANEModel(ShardedModel):
    """ARCANE's fitted model: the sub-models, plus each class's features and selection.

    ``classes`` maps a class to its :class:`~expunge.strategies.exact._class_state.ClassState`
    (after a reopen, only blob names until a request needs the class). The fingerprint is
    the engine's (SHA-256 of every learned tensor in order) but reuses the hash state of
    the leading sub-models it shares with the model it was derived from.
    """

    def __init__(self, base: ShardedModel, classes: dict[int, ClassState],
                 previous: FittedModel | None = None) -> None:
        super().__init__(base.strategy, base.submodels, base.sample_passes)
        self.extra_state = dict(base.extra_state)
        self.extra_blobs = frozenset(base.extra_blobs)
        self.classes = classes
        self.info: dict[str, Any] = {}
        self._digest: str | None = None
        self._prefixes: list[Any] = []  # sha256 state after each sub-model
        self._previous = previous if isinstance(previous, ARCANEModel) else None

    def fingerprint(self) -> str:
        if self._digest is not None:
            return self._digest
        previous, self._previous = self._previous, None
        h, prefixes = hashlib.sha256(), []
        shared = previous is not None and previous._digest is not None
        for k, submodel in enumerate(self.submodels):
            shared = shared and previous is not None and k < len(previous.submodels) and \
                previous.submodels[k] is submodel and k < len(previous._prefixes)
            if shared and previous is not None:
                h = previous._prefixes[k].copy()
            else:
                for name, tensor in self._tensors(submodel):
                    t = tensor.detach().cpu().contiguous()
                    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                    h.update(t.numpy().tobytes())
            prefixes.append(h.copy())
        self._prefixes = prefixes
        self._digest = h.hexdigest()
        return self._digest

    @staticmethod
    def _tensors(s: Submodel) -> list[tuple[str, torch.Tensor]]:
        # exactly ShardedModel.learned_tensors, one sub-model at a time
        return [(f"{s.index}/model/{n}", t) for n, t in sorted(s.module.state_dict().items())] \
            + [(f"{s.index}/extra/{n}", t) for n, t in sorted(s.extras.items())]

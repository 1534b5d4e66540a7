"""Sub-model checkpoints as safetensors blobs: model, optimizer state, extras, ids trained on.

The optimizer's ``state_dict`` is flattened: tensors become ``optim.state.<param>.<name>``
entries and everything else (step counts as numbers, ``param_groups``) goes into JSON
metadata, so a checkpoint loads without unpickling anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Tensors = dict[str, torch.Tensor]

_MODEL = "model."
_OPTIM = "optim.state."
_EXTRA = "extra."
_IDS = "ids_trained"


@dataclass
class Checkpoint:
    """The full training state of one sub-model after one block."""

    model: Tensors
    optimizer: dict[str, Any] | None
    extras: Tensors = field(default_factory=dict)
    ids_trained: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    info: dict[str, Any] = field(default_factory=dict)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[Tensors, dict[str, Any]]:
    tensors: Tensors = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIM}{param_id}.{name}"] = value
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: Tensors, meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        param_id, name = key[len(_OPTIM):].split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def pack(checkpoint: Checkpoint) -> tuple[Tensors, dict[str, str]]:
    """Tensors and string metadata for :meth:`Store.write_blob`."""
    tensors: Tensors = {_MODEL + k: v for k, v in checkpoint.model.items()}
    tensors.update({_EXTRA + k: v for k, v in checkpoint.extras.items()})
    tensors[_IDS] = torch.from_numpy(np.ascontiguousarray(checkpoint.ids_trained, dtype=np.int64))
    metadata = {"info": json.dumps(checkpoint.info, sort_keys=True)}
    if checkpoint.optimizer is not None:
        optim_tensors, optim_meta = _flatten_optimizer(checkpoint.optimizer)
        tensors.update(optim_tensors)
        metadata["optimizer"] = json.dumps(optim_meta, sort_keys=True)
    return tensors, metadata


def unpack(tensors: Tensors, metadata: dict[str, str]) -> Checkpoint:
    """Inverse of :func:`pack`."""
    model = {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    extras = {k[len(_EXTRA):]: v for k, v in tensors.items() if k.startswith(_EXTRA)}
    optimizer = None
    if "optimizer" in metadata:
        optim_tensors = {k: v for k, v in tensors.items() if k.startswith(_OPTIM)}
        optimizer = _unflatten_optimizer(optim_tensors, json.loads(metadata["optimizer"]))
    ids = tensors[_IDS].numpy().astype(np.int64) if _IDS in tensors else np.empty(0, np.int64)
    return Checkpoint(model, optimizer, extras, ids, json.loads(metadata.get("info", "{}")))

"""Export a fitted strategy as a plain ``torch.nn.Module`` for serving.

``strategy.export()`` returns an :class:`ExportedClassifier`: the final sub-model(s) (deep
copies) and the strategy's aggregation, whose ``forward(x)`` returns exactly
``strategy.predict_proba(x)`` (same operations in the same order: each member's softmax over
chunks of 4096 rows, then the mean or SISA's majority vote), on the device the members are
on. ``strategy.export(path)`` also writes it to a folder: ``weights.safetensors`` (tensors
only; loading never executes code) and ``recipe.json`` (how to rebuild the members);
:func:`load_exported` reads it back.

The module is a plain ``nn.Module``. ``torch.jit.script`` compiles it when its members
script (the reference models do; tested) and keeps the chunk loop, so it serves any batch
size. ``torch.jit.trace`` (tested) records the loop unrolled for the example's size: a trace
is exact for batches of at most 4096 rows and would drop rows beyond the first chunk, so
feed it batches of <= 4096 rows. ``torch.export.export`` specialises the batch size for the
same reason (tried: it refuses a dynamic batch dimension), and ``torch.onnx.export`` needs
the ``onnx`` package (not a dependency; not tested here). Torch 2.13 deprecates TorchScript
in favour of ``torch.export``.
"""

# no "from __future__ import annotations": torch.jit.script reads the class annotation below

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from expunge._imports import callable_name
from expunge._version import __version__
from expunge.exceptions import InvalidParameterError, StoreMismatchError, UnsupportedModelError
from expunge.models import build_model
from expunge.store import atomic_write_bytes

#: rows per forward call, as ``expunge.training.batched_forward`` (same chunks, same bits)
CHUNK = 4096
AGGREGATIONS = ("mean", "vote")
RECIPE_FILE = "recipe.json"
WEIGHTS_FILE = "weights.safetensors"
_FORMAT = "expunge.export"
_VERSION = 1


def chunked_softmax(member: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``softmax(member(x))`` over chunks of ``chunk`` rows (the prediction path's bits)."""
    outs = [member(x[start:start + chunk]) for start in range(0, max(x.shape[0], 1), chunk)]
    return torch.softmax(torch.cat(outs), dim=1)


class ExportedClassifier(nn.Module):
    """Members and their aggregation: ``forward(x)`` = the strategy's ``predict_proba(x)``.

    Args:
        members: the sub-models that saw data (one for Retrain), in sub-model order.
        aggregation: ``"mean"`` (mean of softmax outputs) or ``"vote"`` (SISA's majority
            vote: the fraction of members voting for each class).
        transform: the training data's input transform record
            (:meth:`expunge.data.Transform.to_dict`; ``None``: identity), applied first, so
            that ``forward`` takes the raw inputs ``predict_proba`` takes (uint8 pixels,
            say): ``((x - sub) / div) * mult`` gives ``Scale`` and ``Normalize`` bit for bit.
    """

    anchor: torch.Tensor  # an empty buffer: where inputs go (it follows .to(...))
    sub: torch.Tensor
    div: torch.Tensor
    mult: torch.Tensor

    def __init__(self, members: list[nn.Module], aggregation: str = "mean",
                 transform: dict[str, Any] | None = None) -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise InvalidParameterError(
                f"aggregation must be one of {AGGREGATIONS}; got {aggregation!r}.")
        if not members:
            raise InvalidParameterError("An exported classifier needs at least one member.")
        self.members = nn.ModuleList(members)
        self.aggregation = aggregation
        self.chunk = CHUNK
        self.register_buffer("anchor", torch.empty(0), persistent=False)
        self.transform = dict(transform or {"kind": "identity"})
        kind = self.transform.get("kind")
        sub, div, mult = 0.0, 1.0, 1.0
        if kind == "scale":
            mult = self.transform["factor"]
        elif kind == "normalize":
            sub, div = self.transform["mean"], self.transform["std"]
        elif kind != "identity":
            raise InvalidParameterError(f"Unknown input transform record {self.transform!r}.")
        for name, value in (("sub", sub), ("div", div), ("mult", mult)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32),
                                 persistent=False)
        self.eval()

    def _per_channel(self, value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if value.dim() == 1:  # one value per channel (dimension 1 of the batch)
            return value.view([1, -1] + [1] * (x.dim() - 2))
        return value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # written out (not via chunked_softmax) so that torch.jit.script compiles it
        x = x.to(device=self.anchor.device, dtype=torch.float32)
        x = ((x - self._per_channel(self.sub, x)) / self._per_channel(self.div, x)) \
            * self._per_channel(self.mult, x)
        probas: list[torch.Tensor] = []
        for member in self.members:
            outs: list[torch.Tensor] = []
            for start in range(0, max(x.shape[0], 1), self.chunk):
                outs.append(member(x[start:start + self.chunk]))
            probas.append(torch.softmax(torch.cat(outs), dim=1))
        if self.aggregation == "vote":
            votes = torch.zeros_like(probas[0])
            for proba in probas:
                winner = proba.argmax(dim=1)
                votes = votes + nn.functional.one_hot(winner, proba.shape[1]).to(proba.dtype)
            return votes / len(probas)
        return torch.stack(probas).mean(dim=0)


def save_exported(module: ExportedClassifier, path: str | Path, recipe: dict[str, Any]) -> Path:
    """Write ``module`` to the folder ``path`` (weights first, then the recipe; each atomic)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InvalidParameterError(f"export path {str(folder)!r} is a file; give a folder.")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(tensors))
    full = {"format": _FORMAT, "version": _VERSION, "expunge_version": __version__,
            "torch_version": torch.__version__, "aggregation": module.aggregation,
            "n_members": len(module.members), **recipe}
    atomic_write_bytes(folder / RECIPE_FILE, json.dumps(full, indent=2, sort_keys=True).encode())
    return folder


def load_exported(path: str | Path, model: Any = None) -> ExportedClassifier:
    """Rebuild an :func:`~UnlearningStrategy.export`-ed classifier from its folder (on CPU).

    Args:
        path: the folder ``export(path)`` wrote.
        model: the model factory, needed when the store was fitted with a Python callable
            (the recipe records its name, which must match); a registered name or an import
            string is found again by itself.

    Raises:
        InvalidParameterError: ``path`` holds no export. StoreMismatchError: a custom model
            is needed, or ``model`` is not the recorded one.
    """
    folder = Path(path)
    try:
        recipe = json.loads((folder / RECIPE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InvalidParameterError(
            f"{str(folder)!r} holds no readable export ({RECIPE_FILE}: {err}); export with "
            "strategy.export(path) first.") from err
    if recipe.get("format") != _FORMAT or recipe.get("version") != _VERSION:
        raise InvalidParameterError(
            f"{str(folder / RECIPE_FILE)!r} is not an expunge export of version {_VERSION}.")
    spec = recipe["model"]
    if isinstance(spec, dict) and "callable" in spec:
        if model is None:
            raise StoreMismatchError(
                f"The export at {str(folder)!r} was fitted with a custom model "
                f"({spec['callable']}); pass it: load_exported({str(folder)!r}, model=...).")
        if callable_name(model) != spec["callable"]:
            raise StoreMismatchError(
                f"The export was fitted with model={spec['callable']}; got "
                f"{callable_name(model)}. Pass the same function.")
        spec = model
    shape, n_classes = tuple(recipe["input_shape"]), int(recipe["n_classes"])
    members = [build_model(spec, shape, n_classes, recipe.get("model_params"))
               for _ in range(int(recipe["n_members"]))]
    module = ExportedClassifier(members, str(recipe["aggregation"]), recipe.get("transform"))
    module.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    return module.eval()


def unsupported(strategy: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{strategy} cannot be exported as one module: export() supports the strategies whose "
        "sub-models are plain classifiers (retrain, sisa). Use predict_proba, or its "
        "checkpoints."
    )

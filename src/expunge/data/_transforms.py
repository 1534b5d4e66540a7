"""Input transforms: how stored inputs (uint8 pixels, say) become the model's float32 inputs.

A dataset keeps its inputs in their stored dtype (a 28x28 uint8 image is 784 bytes, not
3,136) and records a transform that is applied per batch, when the rows are gathered for
training or prediction. Transforms are part of what a model *is*: the store's manifest
records them (as JSON, never as pickled code) and ``predict_proba`` applies the fitted one
to raw inputs, so a model is always fed the way it was trained.

Every transform here is a fixed elementwise function computed with correctly rounded IEEE
float32 operations, so a sample's transformed bits never depend on which other samples
share its batch: exactness (``fit(D).forget(F)`` bitwise ``fit(D.drop(F))``) is unaffected.

Built-ins (a user-defined callable is refused: it could not be recorded without pickling):

* :class:`Identity` -- ``x.to(float32)`` (the default; float32 inputs pass unchanged);
* :class:`Scale` -- ``x.to(float32) * factor`` (``Scale(1/255)`` for 8-bit images);
* :class:`Normalize` -- ``(x.to(float32) - mean) / std``, scalars or one value per channel
  (dimension 1 of the batch). ``Normalize(0, 255)`` divides by 255, the same bits as the
  float32 MNIST loader, which divides by 255 when it converts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from expunge.exceptions import DatasetError


class Transform:
    """Base of the recorded input transforms (see the module docstring)."""

    kind: str = ""

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable record of this transform (inverse: :func:`transform_from_dict`)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def spec(self) -> str:
        """A canonical string of :meth:`to_dict` (for fingerprints and comparisons)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def is_identity(self) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transform) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(self.spec())


def _finite_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DatasetError(f"{name} must be a finite number; got {value!r}.")
    return float(value)


@dataclass(frozen=True, eq=False)
class Identity(Transform):
    """``x.to(float32)``: what the model sees is the stored value."""

    kind = "identity"

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.to(torch.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @property
    def is_identity(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "Identity()"


@dataclass(frozen=True, eq=False)
class Scale(Transform):
    """``x.to(float32) * factor`` (one float32 multiplication per element).

    Example:
        >>> Scale(0.5)(torch.tensor([2], dtype=torch.uint8)).tolist()
        [1.0]
    """

    factor: float
    kind = "scale"

    def __post_init__(self) -> None:
        factor = _finite_float(self.factor, "Scale's factor")
        if factor == 0.0:
            raise DatasetError("Scale's factor must not be 0 (every input would become 0).")
        object.__setattr__(self, "factor", factor)

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.to(torch.float32) * torch.tensor(self.factor, dtype=torch.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "factor": self.factor}

    def __repr__(self) -> str:
        return f"Scale({self.factor!r})"


@dataclass(frozen=True, eq=False)
class Normalize(Transform):
    """``(x.to(float32) - mean) / std``, with one value, or one per channel (dimension 1).

    Example:
        >>> Normalize(1.0, 2.0)(torch.tensor([5], dtype=torch.uint8)).tolist()
        [2.0]
    """

    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    kind = "normalize"

    def __post_init__(self) -> None:
        mean = self._values(self.mean, "Normalize's mean")
        std = self._values(self.std, "Normalize's std")
        if any(s <= 0 for s in (std if isinstance(std, tuple) else (std,))):
            raise DatasetError(f"Normalize's std must be > 0; got {self.std!r}.")
        if isinstance(mean, tuple) and isinstance(std, tuple) and len(mean) != len(std):
            raise DatasetError(
                f"Normalize's mean and std must have one value per channel each; got "
                f"{len(mean)} means and {len(std)} stds."
            )
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @staticmethod
    def _values(value: Any, name: str) -> float | tuple[float, ...]:
        if isinstance(value, (list, tuple)) or (isinstance(value, Sequence)
                                                and not isinstance(value, str)):
            values = tuple(_finite_float(v, name) for v in value)
            if not values:
                raise DatasetError(f"{name} must not be empty.")
            return values
        if isinstance(value, torch.Tensor) or hasattr(value, "tolist"):
            return Normalize._values(value.tolist(), name)
        return _finite_float(value, name)

    def _channels(self) -> int | None:
        for value in (self.mean, self.std):
            if isinstance(value, tuple):
                return len(value)
        return None

    def _broadcast(self, value: float | tuple[float, ...], ndim: int) -> torch.Tensor:
        tensor = torch.tensor(value, dtype=torch.float32)
        if tensor.ndim == 1:  # per channel: (1, C, 1, ...)
            tensor = tensor.reshape((1, -1) + (1,) * (ndim - 2))
        return tensor

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        channels = self._channels()
        if channels is not None and (raw.ndim < 2 or raw.shape[1] != channels):
            raise DatasetError(
                f"Normalize has {channels} per-channel values but the inputs have shape "
                f"{tuple(raw.shape[1:])} (channels are dimension 1 of a batch, (N, C, ...)). "
                "Give one value per channel, or scalars."
            )
        x = raw.to(torch.float32)
        return (x - self._broadcast(self.mean, x.ndim)) / self._broadcast(self.std, x.ndim)

    def to_dict(self) -> dict[str, Any]:
        listed = [list(v) if isinstance(v, tuple) else v for v in (self.mean, self.std)]
        return {"kind": self.kind, "mean": listed[0], "std": listed[1]}

    def __repr__(self) -> str:
        return f"Normalize({self.mean!r}, {self.std!r})"


_KINDS: dict[str, type[Transform]] = {"identity": Identity, "scale": Scale,
                                      "normalize": Normalize}


def transform_from_dict(record: dict[str, Any] | None) -> Transform:
    """The transform recorded by :meth:`Transform.to_dict` (``None``: :class:`Identity`).

    Raises:
        DatasetError: the record names no known transform (a store edited, or written by a
            newer expunge).
    """
    if record is None:
        return Identity()
    if not isinstance(record, dict) or record.get("kind") not in _KINDS:
        raise DatasetError(
            f"Unknown input transform record {record!r}; known kinds: {sorted(_KINDS)}."
        )
    fields = {k: v for k, v in record.items() if k != "kind"}
    try:
        return _KINDS[record["kind"]](**fields)
    except TypeError as err:
        raise DatasetError(f"Input transform record {record!r} is malformed ({err}).") from None


def as_transform(value: Any) -> Transform:
    """``value`` as a :class:`Transform`: a built-in instance, its dict record, or ``None``.

    Raises:
        DatasetError: for anything else (a plain function cannot be recorded in the manifest
            without pickling, which stores never do).
    """
    if value is None:
        return Identity()
    if isinstance(value, Transform):
        return value
    if isinstance(value, dict):
        return transform_from_dict(value)
    raise DatasetError(
        f"transform must be one of expunge.data.Identity(), Scale(factor) or "
        f"Normalize(mean, std); got {value!r}. A custom function cannot be recorded in the "
        "store's manifest (stores never hold pickled code): apply it to the data first and "
        "store the result, or express it as Scale/Normalize."
    )

"""ARCANE's deletion prior: one number per id, from metadata, that sorts the blocks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from expunge.exceptions import InvalidParameterError

#: what ``deletion_prior`` may be (see :class:`~expunge.strategies.exact.arcane.ARCANE`)
DeletionPrior = Callable[[np.ndarray], Any] | Mapping[int, float] | np.ndarray | Sequence[float]


def is_prior(value: Any) -> bool:
    # torch tensors are refused: the manifest records arrays by digest, tensors it cannot
    return callable(value) or isinstance(value, (Mapping, np.ndarray, list, tuple))


def prior_values(prior: Any, sorting: bool, ids: np.ndarray) -> np.ndarray | None:
    """The deletion prior of each id (float64), or ``None`` without sorting by prior.

    Raises :class:`InvalidParameterError` for a prior that is a recorded digest (pass it
    again on reopen), gives one value per id but not for these ids, or is not finite.
    """
    if prior is None or not sorting:
        return None
    ids = np.asarray(ids, dtype=np.int64)
    if isinstance(prior, Mapping):
        if "array_sha256" in prior or "callable" in prior:
            raise InvalidParameterError(
                "deletion_prior was recorded in the store as a digest, not its values; pass "
                "it again when reopening: expunge.open(path, deletion_prior=...)."
            )
        try:
            table = {int(k): float(v) for k, v in prior.items()}
        except (TypeError, ValueError) as err:
            raise InvalidParameterError(
                f"deletion_prior as a mapping must map integer ids to numbers: {err}."
            ) from None
        values = np.array([table.get(int(i), 0.0) for i in ids.tolist()], dtype=np.float64)
    elif callable(prior):
        values = np.asarray(prior(ids.copy()), dtype=np.float64).reshape(-1)
        if values.shape[0] != ids.shape[0]:
            raise InvalidParameterError(
                f"deletion_prior(ids) must return one value per id; got {values.shape[0]} "
                f"values for {ids.shape[0]} ids."
            )
    else:
        table_array = np.asarray(prior, dtype=np.float64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= table_array.shape[0]):
            raise InvalidParameterError(
                f"deletion_prior as an array is indexed by id, but it has "
                f"{table_array.shape[0]} entries and the data has ids up to {int(ids.max())}"
                f" (min {int(ids.min())}). Pass an array of length > max id, or a mapping "
                "{id: value}."
            )
        values = table_array[ids]
    if not np.isfinite(values).all():
        bad = ids[~np.isfinite(values)][:5].tolist()
        raise InvalidParameterError(
            f"deletion_prior must be finite; ids {bad} have non-finite values."
        )
    return values


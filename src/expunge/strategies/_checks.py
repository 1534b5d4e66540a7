"""Checks on what users pass to the verbs, before anything is written.

Each raises an :class:`~expunge.exceptions.ExpungeError` subclass whose message names the
bad value and the fix; none of them changes anything. ``fit`` needs samples of at least two
classes, and so does what a ``forget`` leaves behind, since ``forget(F)`` must equal
``fit(D.drop(F))``: a request that would leave no data, or one class, is refused too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from expunge.data import IndexedDataset, as_id_array
from expunge.exceptions import (
    DatasetError,
    InvalidParameterError,
    InvalidRequestError,
)


def check_store_param(store: Any) -> None:
    """``store`` must be ``None`` or a non-empty path (``''`` would be the current folder)."""
    if store is None:
        return
    text = str(store) if isinstance(store, (str, Path)) or hasattr(store, "__fspath__") else None
    if text is None or not text.strip() or text.strip() == ".":
        raise InvalidParameterError(
            f"store={store!r} is not a store folder: pass a directory path such as 'runs/sisa' "
            "(created if missing), or store=None to keep everything in memory."
        )


def check_finite(X: torch.Tensor, what: str, *, offset: int = 0) -> None:
    """Refuse NaN and infinite inputs (training would diverge or fit noise silently).

    Cost: one pass for the minimum and maximum (``torch.aminmax``, ~2 ms per million values
    on one thread; NaN propagates through both); the rows are located only when one is bad.
    """
    if not X.is_floating_point() or X.numel() == 0:
        return
    low, high = torch.aminmax(X)
    if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
        return
    rows = X.reshape(X.shape[0], -1) if X.ndim > 1 else X.reshape(-1, 1)
    finite = torch.isfinite(rows).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).reshape(-1)
        raise DatasetError(
            f"{what} contains NaN or infinite values (rows at positions "
            f"{(bad[:5] + offset).tolist()}"
            f"{' ...' if len(bad) > 5 else ''}). Impute or drop them first "
            "(e.g. np.nan_to_num, or IndexedDataset.drop of those ids)."
        )


def check_training_data(data: IndexedDataset) -> None:
    """What ``fit`` accepts: an IndexedDataset with samples of at least 2 classes, finite."""
    if not isinstance(data, IndexedDataset):
        raise InvalidParameterError(
            f"fit expects an IndexedDataset; got {type(data).__name__}. "
            "Wrap arrays with expunge.data.IndexedDataset(X, y)."
        )
    if len(data) == 0:
        raise InvalidParameterError("fit needs at least one sample; the dataset is empty.")
    present = [k for k, count in enumerate(data.class_counts()) if count > 0]
    if len(present) < 2:
        raise DatasetError(
            f"fit needs samples of at least 2 classes; all {len(data)} samples have label "
            f"{present[0]}. A classifier of one class predicts it always: add samples of "
            "other classes."
        )
    if data.dtype.is_floating_point:  # integer inputs are finite; chunks: data may be on disk
        chunk = 1 << 14
        for k, rows in enumerate(data.iter_stored(chunk)):
            check_finite(rows, "The training data X", offset=k * chunk)


def check_retained(data: IndexedDataset, n_request: int) -> None:
    """What a ``forget`` may leave: at least one sample, of at least 2 classes."""
    if len(data) == 0:
        raise InvalidRequestError(
            f"This request forgets all {n_request} remaining samples, which would leave no "
            "training data and a store that cannot be reopened. Forget fewer ids; to erase "
            "everything, delete the store folder."
        )
    present = [k for k, count in enumerate(data.class_counts()) if count > 0]
    if len(present) < 2:
        raise InvalidRequestError(
            f"This request would leave samples of only class {present[0]} ({len(data)} "
            "samples), which fit refuses (a classifier of one class), so forget does too. "
            "Forget fewer ids; to erase everything, delete the store folder."
        )


def parse_request(ids: Iterable[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    """A request's ids as a sorted int64 array: integers, at least one, each once."""
    request = as_id_array(ids)
    if request.size == 0:
        raise InvalidRequestError("The request is empty: pass at least one sample id.")
    values, counts = np.unique(request, return_counts=True)
    if (counts > 1).any():
        raise InvalidRequestError(
            f"Ids {values[counts > 1][:10].tolist()} appear more than once in the request; "
            "pass each id once."
        )
    return np.sort(request)

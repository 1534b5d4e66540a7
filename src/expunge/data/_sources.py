"""Where a dataset's inputs live: a tensor in memory, a (memory-mapped) numpy array, or a
torch ``Dataset``. Each source gathers rows by position, in their stored dtype, on demand.

An :class:`~expunge.data.IndexedDataset` holds one source (its *root*) and the positions of
its rows in it; nothing but the gathered rows is ever read. A memory-mapped array is read
page by page by the operating system, so a dataset larger than memory trains with a
batch's rows in memory at a time; a torch ``Dataset`` is asked for one item per row.

Sources are read-only: gathering copies the rows out, so nothing downstream can write into
a user's file or dataset.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from expunge.exceptions import DatasetError

#: inputs whose stored dtype is kept; any other real dtype is stored as float32
KEPT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float32)


class InputSource(Protocol):
    """Rows of inputs, gathered by position (see the module docstring)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def gather(self, positions: np.ndarray) -> torch.Tensor: ...


def stored_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype inputs of ``dtype`` are stored in: kept if integer or float32, else float32.

    Raises:
        DatasetError: for complex inputs.
    """
    if dtype in KEPT_DTYPES:
        return dtype
    if dtype == torch.bool:
        return torch.uint8
    if dtype.is_complex:
        raise DatasetError(f"X must be real-valued; got dtype {dtype}.")
    return torch.float32


class TensorSource:
    """Inputs held in memory as one tensor."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype

    def gather(self, positions: np.ndarray) -> torch.Tensor:
        return self.tensor[torch.from_numpy(np.asarray(positions, dtype=np.int64))]


class ArraySource:
    """Inputs in a numpy array, typically a read-only ``np.memmap`` (``np.load(path,
    mmap_mode="r")``): rows are read from the file when gathered, never all at once."""

    __slots__ = ("_dtype", "array")

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim == 0:
            raise DatasetError("X must have a sample dimension; got a scalar array.")
        if array.dtype.kind not in "biuf":
            raise DatasetError(
                f"X must be numeric; got a memory-mapped array of dtype {array.dtype}."
            )
        self.array = array
        probe = torch.from_numpy(np.zeros(0, dtype=array.dtype.newbyteorder("=")))
        self._dtype = stored_dtype(probe.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def gather(self, positions: np.ndarray) -> torch.Tensor:
        rows = self.array[np.asarray(positions, dtype=np.int64)]  # a copy, in memory
        rows = np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("="))
        return torch.from_numpy(rows).to(self._dtype)


class TorchDatasetSource:
    """Inputs of a torch ``Dataset`` (``ds[i]`` returns ``(x, label, ...)`` or ``x``): each
    gathered row is one ``ds[i]`` call; every item must have the first item's shape."""

    __slots__ = ("_dtype", "_shape", "dataset", "n")

    def __init__(self, dataset: Any, n: int) -> None:
        self.dataset = dataset
        self.n = n
        first = self._item(0) if n else torch.zeros(0)
        self._shape = (n, *first.shape)
        self._dtype = stored_dtype(first.dtype)

    def _item(self, index: int) -> torch.Tensor:
        item = self.dataset[int(index)]
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
            except (TypeError, ValueError) as err:
                raise DatasetError(
                    f"item {index} of the torch Dataset has inputs of type {type(x).__name__}, "
                    f"which are not numeric ({err}). Return a tensor or an array."
                ) from None
        return x.detach().cpu()

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def gather(self, positions: np.ndarray) -> torch.Tensor:
        positions = np.asarray(positions, dtype=np.int64)
        out = torch.empty((len(positions), *self._shape[1:]), dtype=self._dtype)
        for row, index in enumerate(positions.tolist()):
            x = self._item(index)
            if tuple(x.shape) != self._shape[1:]:
                raise DatasetError(
                    f"item {index} of the torch Dataset has inputs of shape {tuple(x.shape)}; "
                    f"item 0 has {self._shape[1:]}. Every sample must have one shape."
                )
            out[row] = x.to(self._dtype)
        return out


def as_source(X: Any) -> InputSource:
    """The source for inputs ``X``: a memory-mapped array stays on disk, anything else is
    converted to a tensor in memory (in its stored dtype, see :func:`stored_dtype`)."""
    if isinstance(X, (TensorSource, ArraySource, TorchDatasetSource)):
        return X
    if isinstance(X, np.memmap):
        return ArraySource(X)
    if isinstance(X, torch.Tensor):
        tensor = X.detach().cpu()
    else:
        try:
            array = np.asarray(X)
        except Exception as err:  # pragma: no cover - numpy's own message is enough
            raise DatasetError(f"X could not be converted to an array: {err}") from err
        if array.dtype == object:
            raise DatasetError("X must be numeric; got an array of Python objects.")
        if array.dtype.kind not in "biuf":
            raise DatasetError(f"X must be numeric; got an array of dtype {array.dtype}.")
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
        if array.dtype == np.uint16 or array.dtype == np.uint32 or array.dtype == np.uint64:
            array = array.astype(np.float32)  # torch has no general unsigned wide dtypes
        tensor = torch.from_numpy(array)
    return TensorSource(tensor.to(stored_dtype(tensor.dtype)).contiguous())

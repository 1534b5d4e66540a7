"""IndexedDataset: samples with stable integer ids.

An id names a sample for its whole life: in requests, the ledger, reports and partitions.
``drop`` and ``select`` return new datasets that keep the ids; nothing is ever renumbered.

Subsets are views until their inputs are needed: ``drop``, ``select`` and ``where`` copy
the labels and ids (8 bytes a sample) and keep, for the inputs, the root tensor and the
row positions in it. ``X`` gathers those rows on first access and keeps them. A request
that forgets one id from a 60,000-image set therefore does not copy the other 59,999
images, and code that needs a few rows (one class, one storage bucket) gathers only those.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from expunge.data._sources import InputSource, TensorSource, TorchDatasetSource, as_source
from expunge.data._transforms import Transform, as_transform, transform_from_dict
from expunge.exceptions import DatasetError, InvalidRequestError, UnknownSampleError

ArrayLike = Any  # numpy array, torch tensor or nested sequence

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _as_tensor(values: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu()
    try:
        array = np.asarray(values)
    except Exception as err:  # pragma: no cover - numpy's own message is enough
        raise DatasetError(f"{name} could not be converted to an array: {err}") from err
    if array.dtype == object:
        raise DatasetError(f"{name} must be numeric; got an array of Python objects.")
    return torch.from_numpy(np.ascontiguousarray(array))


def as_subject_array(subjects: ArrayLike, n: int) -> np.ndarray:
    """Validate subject keys: one per sample, each a non-empty ``str``, an ``int`` or ``None``.

    Ints are turned into their decimal text (``17`` and ``"17"`` name the same subject);
    ``None`` marks a sample that belongs to no subject. Returns a read-only object array.
    """
    if isinstance(subjects, (str, bytes)):
        raise DatasetError(
            "subjects must be one key per sample (a list of strings); got a single string."
        )
    try:
        items = list(subjects)
    except TypeError:
        raise DatasetError(
            f"subjects must be a sequence of keys, one per sample; got {type(subjects).__name__}."
        ) from None
    if len(items) != n:
        raise DatasetError(f"subjects has {len(items)} entries but there are {n} samples.")
    out = np.empty(n, dtype=object)
    for position, key in enumerate(items):
        if key is None:
            out[position] = None
        elif isinstance(key, str) and key:
            out[position] = key
        elif isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            out[position] = str(int(key))
        else:
            raise DatasetError(
                f"subject keys must be non-empty strings, ints or None; sample at position "
                f"{position} has {key!r}. Pass e.g. a user id or an e-mail address."
            )
    out.setflags(write=False)
    return out


def as_id_array(ids: Iterable[int] | np.ndarray | torch.Tensor, *, what: str = "ids") -> np.ndarray:
    """Validate and convert ids to a 1-D int64 array, refusing anything that is not an integer.

    Floats (even 3.0), booleans and strings are refused rather than coerced: an id that
    arrives as a float usually means a bug upstream (for example a sampled fraction). Ids
    must fit in int64: larger values (Python ints, uint64 arrays) are refused, not wrapped.
    """
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    if ids is None:
        raise InvalidRequestError(
            f"{what} must be a sequence of integers; got None. Pass sample ids, e.g. [3, 17]."
        )
    if isinstance(ids, (str, bytes)):
        raise InvalidRequestError(f"{what} must be a sequence of integers; got the string {ids!r}.")
    if isinstance(ids, (int, np.integer)) and not isinstance(ids, (bool, np.bool_)):
        ids = np.asarray([int(ids)], dtype=np.int64) if -(2**63) <= int(ids) < 2**63 \
            else [int(ids)]
    if isinstance(ids, np.ndarray):
        array = ids
        if array.dtype.kind == "u" and array.size and int(array.max()) > _INT64_MAX:
            raise InvalidRequestError(
                f"{what} must fit in int64; got {int(array.max())} (an unsigned value above "
                f"{_INT64_MAX}). Ids are signed 64-bit integers."
            )
    else:
        try:
            items = list(ids)
        except TypeError:
            raise InvalidRequestError(
                f"{what} must be a sequence of integers; got {type(ids).__name__} {ids!r}. "
                "Pass sample ids, e.g. [3, 17]."
            ) from None
        bad = [v for v in items if isinstance(v, (bool, np.bool_))
               or not isinstance(v, (int, np.integer))]
        if bad:
            raise InvalidRequestError(
                f"{what} must be integers; got {bad[:5]!r}"
                f"{' and more' if len(bad) > 5 else ''}. Pass sample ids as ints, e.g. [3, 17]."
            )
        huge = [int(v) for v in items if not _INT64_MIN <= int(v) <= _INT64_MAX]
        if huge:
            raise InvalidRequestError(
                f"{what} must fit in int64 (from {_INT64_MIN} to {_INT64_MAX}); got "
                f"{huge[:5]}. Ids are signed 64-bit integers."
            )
        array = np.asarray([int(v) for v in items], dtype=np.int64)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise InvalidRequestError(
            f"{what} must be integers; got an array of dtype {array.dtype}. "
            "Pass sample ids as ints, e.g. [3, 17]."
        )
    if array.ndim != 1:
        array = array.reshape(-1)
    return array.astype(np.int64, copy=False)


class IndexedDataset:
    """Inputs ``X``, integer labels ``y`` and a stable int64 id per sample.

    Inputs keep their stored dtype (uint8 images stay uint8: 784 bytes per MNIST image, not
    3,136) and a recorded ``transform`` turns gathered rows into the model's float32 inputs,
    one batch at a time (see :mod:`expunge.data._transforms`). The inputs may live in memory,
    in a memory-mapped numpy array (``np.load(path, mmap_mode="r")``: rows are read from the
    file when a batch needs them) or in a torch ``Dataset`` (:meth:`from_torch`).

    Args:
        X: inputs, first dimension = samples (any trailing shape). Integer dtypes (uint8,
            int8, int16, int32, int64) and float32 are kept, booleans become uint8, other
            floats float32. A ``np.memmap`` stays on disk.
        y: integer class labels in ``0..n_classes-1``.
        ids: unique int64 ids; ``0..n-1`` when omitted.
        subjects: optional subject key per sample (the person the sample is about: a user
            id, an e-mail address; ``None`` for none), so that ``forget_subject(key)`` can
            forget every sample of one person. Keys stay in memory: a store keeps only a
            keyed hash of them (docs/operations.md).
        n_classes: number of classes; inferred as ``max(y) + 1`` when omitted. Give it when
            a subset may lack the last class, so that models keep their output size.
        transform: how stored inputs become model inputs: ``None`` (``x.to(float32)``),
            :class:`~expunge.data.Scale` or :class:`~expunge.data.Normalize`.

    Example:
        >>> ds = IndexedDataset([[0.0], [1.0], [2.0]], [0, 1, 1])
        >>> ds.drop([1]).ids.tolist()
        [0, 2]
    """

    __slots__ = ("_X", "_id_to_position", "_root", "_rows", "ids", "n_classes", "subjects",
                 "transform", "y")

    def __init__(
        self,
        X: ArrayLike,
        y: ArrayLike,
        ids: ArrayLike | None = None,
        subjects: ArrayLike | None = None,
        *,
        n_classes: int | None = None,
        transform: Transform | None = None,
    ) -> None:
        root = as_source(X)
        y_t = _as_tensor(y, "y")
        if y_t.ndim != 1:
            raise DatasetError(
                f"y must be 1-D (one label per sample); got shape {tuple(y_t.shape)}."
            )
        if y_t.is_floating_point() and not (torch.isfinite(y_t).all()
                                            and torch.equal(y_t, y_t.round())):
            raise DatasetError(
                "y must hold integer class labels; got non-integer values (NaN, inf or "
                "fractions). Encode classes as 0, 1, ..."
            )
        y_t = y_t.to(torch.int64).contiguous()
        if len(root.shape) == 0 or root.shape[0] != y_t.shape[0]:
            raise DatasetError(
                f"X and y must have the same number of samples; got X {tuple(root.shape)} "
                f"and y {tuple(y_t.shape)}."
            )
        n = y_t.shape[0]
        if ids is None:
            ids_a = np.arange(n, dtype=np.int64)
        else:
            ids_a = as_id_array(ids if not isinstance(ids, torch.Tensor) else ids.numpy())
            if ids_a.shape[0] != n:
                raise DatasetError(f"ids has {ids_a.shape[0]} entries but there are {n} samples.")
            if np.unique(ids_a).shape[0] != n:
                values, counts = np.unique(ids_a, return_counts=True)
                repeated = values[counts > 1][:5].tolist()
                raise DatasetError(f"ids must be unique; repeated: {repeated}.")
        if n and int(y_t.min()) < 0:
            raise DatasetError(f"labels must be >= 0; got {int(y_t.min())}.")
        inferred = int(y_t.max()) + 1 if n else 0
        if n_classes is None:
            n_classes = inferred
        elif n_classes < inferred:
            raise DatasetError(f"n_classes={n_classes} but y contains label {inferred - 1}.")
        self.transform: Transform = as_transform(transform)
        self._root: InputSource = root  # the inputs that subsets gather their rows from
        self._X: torch.Tensor | None = root.tensor if isinstance(root, TensorSource) else None
        self._rows: np.ndarray | None = None  # this dataset's rows of ``_root`` (None: all)
        self.y: torch.Tensor = y_t
        self.ids: np.ndarray = ids_a
        self.ids.setflags(write=False)
        self.n_classes: int = int(n_classes)
        #: subject key per sample (object array of str or None), or None without subjects
        self.subjects: np.ndarray | None = (
            None if subjects is None else as_subject_array(subjects, n))
        self._id_to_position: dict[int, int] | None = None

    @classmethod
    def from_torch(
        cls,
        dataset: Any,
        *,
        ids: ArrayLike | None = None,
        labels: ArrayLike | None = None,
        subjects: ArrayLike | None = None,
        n_classes: int | None = None,
        transform: Transform | None = None,
    ) -> IndexedDataset:
        """Wrap a torch ``Dataset`` (``dataset[i]`` is ``(x, label, ...)``); rows are read
        with ``dataset[i]`` only when a batch (or :attr:`X`) needs them.

        Args:
            dataset: any object with ``__len__`` and ``__getitem__`` returning ``(x, label)``
                (or ``x`` alone when ``labels`` is given); ``x`` a tensor or array.
            ids: one stable id per item, in the dataset's order (``0..n-1`` when omitted).
                An id must keep naming the same sample for the store's whole life.
            labels: the labels, in the dataset's order; when omitted they are read from
                ``dataset.targets`` if it has them, else from every item once.
            subjects, n_classes, transform: as for the constructor.

        Cost: one ``dataset[i]`` call to find the input shape, plus one per item when the
        labels must be read from the items.
        """
        try:
            n = len(dataset)
        except TypeError:
            raise DatasetError(
                f"from_torch needs a map-style dataset with __len__ and __getitem__; got "
                f"{type(dataset).__name__}."
            ) from None
        if labels is None:
            labels = getattr(dataset, "targets", None)
        if labels is None:
            labels = []
            for i in range(n):
                item = dataset[i]
                if not isinstance(item, (tuple, list)) or len(item) < 2:
                    raise DatasetError(
                        f"item {i} of the torch Dataset is not (x, label, ...); pass "
                        "labels=... to from_torch."
                    )
                label = item[1]
                labels.append(int(label.item() if hasattr(label, "item") else label))
        return cls(TorchDatasetSource(dataset, n), labels, ids, subjects, n_classes=n_classes,
                   transform=transform)

    # ------------------------------------------------------------------ basics
    @property
    def X(self) -> torch.Tensor:  # noqa: N802 - the established name of the inputs
        """The stored inputs, in their stored dtype, ``(n, *input_shape)``, all in memory.

        A subset gathers its rows once and keeps them. Training and prediction never call
        this on a whole dataset: they gather batches (:meth:`inputs`), so that data on disk
        stays there. Model inputs are ``transform(X)`` (:meth:`inputs`).
        """
        if self._X is None:
            positions = self._rows if self._rows is not None else np.arange(len(self))
            self._X = self._root.gather(positions)
        return self._X

    def gather(self, positions: np.ndarray) -> torch.Tensor:
        """The stored inputs of the rows at ``positions`` (of this dataset), not kept."""
        positions = np.asarray(positions, dtype=np.int64)
        if self._X is not None:
            return self._X[torch.from_numpy(positions)]
        return self._root.gather(positions if self._rows is None else self._rows[positions])

    def inputs(self, positions: np.ndarray | torch.Tensor | slice | None = None
               ) -> torch.Tensor:
        """The model's float32 inputs, ``transform(stored rows)``, for ``positions`` (an
        index array or tensor, or a slice; all rows when ``None``). Only the rows asked
        for are read."""
        if positions is None:
            raw = self._X if self._X is not None else self.gather(np.arange(len(self)))
        elif isinstance(positions, slice):
            raw = self.gather(np.arange(len(self))[positions])
        elif isinstance(positions, torch.Tensor):
            raw = self.gather(positions.numpy())
        else:
            raw = self.gather(positions)
        return self.transform(raw)

    def batches(self) -> InputBatches:
        """An indexable view ``view[positions] == inputs(positions)`` for training loops."""
        return InputBatches(self)

    def iter_inputs(self, chunk: int = 4096) -> Iterator[torch.Tensor]:
        """The model inputs in consecutive chunks of ``chunk`` rows (bounded memory)."""
        for start in range(0, len(self), chunk):
            yield self.inputs(np.arange(start, min(start + chunk, len(self))))

    def iter_stored(self, chunk: int = 4096) -> Iterator[torch.Tensor]:
        """The stored inputs in consecutive chunks of ``chunk`` rows (bounded memory)."""
        for start in range(0, len(self), chunk):
            yield self.gather(np.arange(start, min(start + chunk, len(self))))

    @property
    def dtype(self) -> torch.dtype:
        """The stored dtype of the inputs."""
        return self._root.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of this dataset's stored inputs (what a copy of them takes)."""
        itemsize = torch.empty(0, dtype=self.dtype).element_size()
        return len(self) * math.prod(self.input_shape) * itemsize

    def with_n_classes(self, n_classes: int) -> IndexedDataset:
        """The same samples (a view) with ``n_classes`` classes (at least ``max(y) + 1``)."""
        if len(self) and n_classes <= int(self.y.max()):
            raise DatasetError(f"n_classes={n_classes} but y contains label {int(self.y.max())}.")
        subset = self._subset(np.arange(len(self)))
        subset._X = self._X
        subset.n_classes = int(n_classes)
        return subset

    def with_transform(self, transform: Transform | None) -> IndexedDataset:
        """The same samples (a view) with another input transform."""
        subset = self._subset(np.arange(len(self)))
        subset._X = self._X
        subset.transform = as_transform(transform)
        return subset

    def __reduce__(self) -> tuple[Any, ...]:
        # a view pickles as its own rows, never as the tensor it was cut from
        return (_rebuild, (self.X, self.y, self.ids, self.n_classes, self.transform.to_dict(),
                           self.subjects))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        dtype = "" if self.dtype == torch.float32 else f", dtype={str(self.dtype)[6:]}"
        transform = "" if self.transform.is_identity else f", transform={self.transform!r}"
        return (
            f"IndexedDataset(n={len(self)}, input_shape={self.input_shape}, "
            f"n_classes={self.n_classes}{dtype}{transform})"
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (without the sample dimension)."""
        return tuple(self._root.shape[1:])

    def positions(self, ids: ArrayLike) -> np.ndarray:
        """Positions of ``ids`` in this dataset; raises :class:`UnknownSampleError` if absent."""
        ids_a = as_id_array(ids)
        if self._id_to_position is None:
            self._id_to_position = {int(i): p for p, i in enumerate(self.ids.tolist())}
        lookup = self._id_to_position
        missing = [int(i) for i in ids_a.tolist() if int(i) not in lookup]
        if missing:
            raise UnknownSampleError(
                f"Ids {missing[:10]}{' ...' if len(missing) > 10 else ''} are not in this "
                f"dataset ({len(self)} samples, ids {self._id_range()})."
            )
        return np.fromiter(
            (lookup[int(i)] for i in ids_a.tolist()), dtype=np.int64, count=len(ids_a)
        )

    def _id_range(self) -> str:
        if len(self) == 0:
            return "none"
        return f"from {int(self.ids.min())} to {int(self.ids.max())}"

    def contains(self, ids: ArrayLike) -> np.ndarray:
        """Boolean mask: which of ``ids`` are in this dataset."""
        return np.isin(as_id_array(ids), self.ids)

    # ------------------------------------------------------------ new datasets
    def _subset(self, positions: np.ndarray) -> IndexedDataset:
        """The samples at ``positions`` (a view: inputs are gathered on first access).

        The parts of a valid dataset are valid, so nothing is checked again.
        """
        positions = np.asarray(positions, dtype=np.int64)
        subset = IndexedDataset.__new__(IndexedDataset)
        subset._root = self._root
        subset.transform = self.transform
        subset._rows = positions if self._rows is None else self._rows[positions]
        subset._X = None
        subset.y = self.y[torch.from_numpy(positions)]
        ids = self.ids[positions]
        ids.setflags(write=False)
        subset.ids = ids
        subset.n_classes = self.n_classes
        subset.subjects = None if self.subjects is None else self.subjects[positions]
        subset._id_to_position = None
        return subset

    def drop(self, ids: ArrayLike) -> IndexedDataset:
        """A new dataset without ``ids`` (each must be present); other ids are kept as they are."""
        self.positions(ids)  # validates presence
        keep = ~np.isin(self.ids, as_id_array(ids))
        return self._subset(np.flatnonzero(keep))

    def select(self, ids: ArrayLike) -> IndexedDataset:
        """A new dataset with only ``ids``, in the order given."""
        return self._subset(self.positions(ids))

    def where(self, mask: ArrayLike) -> IndexedDataset:
        """A new dataset with the samples where the boolean ``mask`` (by position) is true."""
        mask_a = np.asarray(mask, dtype=bool)
        if mask_a.shape != (len(self),):
            raise DatasetError(f"mask must have shape ({len(self)},); got {mask_a.shape}.")
        return self._subset(np.flatnonzero(mask_a))

    def with_labels(self, y: ArrayLike) -> IndexedDataset:
        """The same samples and ids with other labels (e.g. to plant label noise)."""
        labelled = IndexedDataset(np.zeros((len(self), 0), np.uint8), y, self.ids,
                                  n_classes=self.n_classes)
        view = self._subset(np.arange(len(self)))  # the inputs stay where they are
        view._X, view.y = self._X, labelled.y
        return view

    def ids_of_subject(self, subject: str | int) -> np.ndarray:
        """Ids of the samples whose subject key is ``subject`` (empty if none)."""
        if self.subjects is None:
            return np.empty(0, dtype=np.int64)
        key = as_subject_array([subject], 1)[0]
        return self.ids[self.subjects == key]

    def ids_of_class(self, label: int) -> np.ndarray:
        """Ids of the samples labelled ``label``."""
        return self.ids[(self.y == int(label)).numpy()]

    # -------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        """SHA-256 over ids, labels, inputs (with shapes and dtypes), ``n_classes`` and the
        transform. Inputs are hashed in their stored dtype, in chunks (data on disk is read
        once, never held whole). Float32 inputs without a transform hash as they always did.

        Subject keys, when given, are part of it (a store fitted on other subject keys holds
        other data); a dataset without subjects hashes exactly as before they existed.
        Computed once per ``fit`` (the store's keyed dataset fingerprint is an HMAC of it).
        """
        h = hashlib.sha256()
        header = f"n_classes={self.n_classes};X{(len(self), *self.input_shape)}"
        if self.dtype != torch.float32:
            header += f";dtype={self.dtype}"
        if not self.transform.is_identity:
            header += f";transform={self.transform.spec()}"
        h.update(header.encode())
        h.update(np.ascontiguousarray(self.ids, dtype="<i8").tobytes())
        h.update(self.y.numpy().astype("<i8").tobytes())
        for chunk in self.iter_stored(1 << 14):
            array = chunk.numpy()
            h.update(array.astype(array.dtype.newbyteorder("<")).tobytes())
        if self.subjects is not None:
            h.update(b"subjects")
            for key in self.subjects.tolist():
                text = b"\x00" if key is None else b"s" + key.encode("utf-8")
                h.update(len(text).to_bytes(8, "little") + text)
        return h.hexdigest()

    def class_counts(self) -> list[int]:
        """Samples per class, for classes ``0..n_classes-1``."""
        return torch.bincount(self.y, minlength=self.n_classes).tolist()

    @staticmethod
    def concat(parts: Sequence[IndexedDataset]) -> IndexedDataset:
        """Concatenate datasets with disjoint ids."""
        if not parts:
            raise DatasetError("concat needs at least one dataset.")
        transforms = {p.transform for p in parts}
        if len(transforms) > 1:
            raise DatasetError(
                "concat needs datasets with one input transform; got "
                f"{sorted(map(repr, transforms))}."
            )
        subjects = None
        if any(p.subjects is not None for p in parts):
            subjects = np.concatenate([p.subjects if p.subjects is not None
                                       else np.full(len(p), None, dtype=object) for p in parts])
        return IndexedDataset(
            torch.cat([p.X for p in parts]),
            torch.cat([p.y for p in parts]),
            np.concatenate([p.ids for p in parts]),
            subjects,
            n_classes=max(p.n_classes for p in parts),
            transform=parts[0].transform,
        )


class InputBatches:
    """``view[positions]``: the model inputs of a dataset's rows (what a training loop
    indexes; only the rows of each batch are gathered and transformed)."""

    __slots__ = ("data",)

    def __init__(self, data: IndexedDataset) -> None:
        self.data = data

    def __getitem__(self, positions: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(positions, torch.Tensor):
            positions = positions.numpy()
        return self.data.inputs(positions)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.data), *self.data.input_shape)


def _rebuild(X: torch.Tensor, y: torch.Tensor, ids: np.ndarray, n_classes: int,
             transform: dict[str, Any] | None = None,
             subjects: np.ndarray | None = None) -> IndexedDataset:
    """Unpickle an :class:`IndexedDataset` (validated again, as any new one)."""
    return IndexedDataset(X, y, ids, subjects, n_classes=n_classes,
                          transform=transform_from_dict(transform))

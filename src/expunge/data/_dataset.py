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
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

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

    Args:
        X: inputs, first dimension = samples (any trailing shape; stored as float32).
        y: integer class labels in ``0..n_classes-1``.
        ids: unique int64 ids; ``0..n-1`` when omitted.
        subjects: optional subject key per sample (the person the sample is about: a user
            id, an e-mail address; ``None`` for none), so that ``forget_subject(key)`` can
            forget every sample of one person. Keys stay in memory: a store keeps only a
            keyed hash of them (docs/operations.md).
        n_classes: number of classes; inferred as ``max(y) + 1`` when omitted. Give it when
            a subset may lack the last class, so that models keep their output size.

    Example:
        >>> ds = IndexedDataset([[0.0], [1.0], [2.0]], [0, 1, 1])
        >>> ds.drop([1]).ids.tolist()
        [0, 2]
    """

    __slots__ = ("_X", "_id_to_position", "_root", "_rows", "ids", "n_classes", "subjects", "y")

    def __init__(
        self,
        X: ArrayLike,
        y: ArrayLike,
        ids: ArrayLike | None = None,
        subjects: ArrayLike | None = None,
        *,
        n_classes: int | None = None,
    ) -> None:
        X_t = _as_tensor(X, "X").to(torch.float32).contiguous()
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
        if X_t.ndim == 0 or X_t.shape[0] != y_t.shape[0]:
            raise DatasetError(
                f"X and y must have the same number of samples; got X {tuple(X_t.shape)} "
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
        self._X: torch.Tensor | None = X_t
        self._root: torch.Tensor = X_t  # the inputs that subsets gather their rows from
        self._rows: np.ndarray | None = None  # this dataset's rows of ``_root`` (None: all)
        self.y: torch.Tensor = y_t
        self.ids: np.ndarray = ids_a
        self.ids.setflags(write=False)
        self.n_classes: int = int(n_classes)
        #: subject key per sample (object array of str or None), or None without subjects
        self.subjects: np.ndarray | None = (
            None if subjects is None else as_subject_array(subjects, n))
        self._id_to_position: dict[int, int] | None = None

    # ------------------------------------------------------------------ basics
    @property
    def X(self) -> torch.Tensor:  # noqa: N802 - the established name of the inputs
        """The inputs, float32 ``(n, *input_shape)`` (a subset gathers its rows once)."""
        if self._X is None:
            assert self._rows is not None
            self._X = self._root[torch.from_numpy(self._rows)]
        return self._X

    def __reduce__(self) -> tuple[Any, ...]:
        # a view pickles as its own rows, never as the tensor it was cut from
        return (_rebuild, (self.X, self.y, self.ids, self.n_classes, self.subjects))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return (
            f"IndexedDataset(n={len(self)}, input_shape={self.input_shape}, "
            f"n_classes={self.n_classes})"
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
        return IndexedDataset(self.X, y, self.ids, self.subjects, n_classes=self.n_classes)

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
        """SHA-256 over ids, labels, inputs (with shapes and dtypes) and ``n_classes``.

        Subject keys, when given, are part of it (a store fitted on other subject keys holds
        other data); a dataset without subjects hashes exactly as before they existed.
        Computed once per ``fit`` (the store's keyed dataset fingerprint is an HMAC of it).
        Cost: one SHA-256 pass over the data, ~0.3 s for MNIST's 188 MB.
        """
        h = hashlib.sha256()
        h.update(f"n_classes={self.n_classes};X{tuple(self.X.shape)}".encode())
        # hashed in place: ``ascontiguousarray`` copies only when the dtype, byte order or
        # layout differs (``astype(...).tobytes()`` copied the inputs twice: 0.8 s instead of
        # 0.3 s for MNIST's 188 MB)
        h.update(np.ascontiguousarray(self.ids, dtype="<i8").data)
        h.update(np.ascontiguousarray(self.y.numpy(), dtype="<i8").data)
        h.update(np.ascontiguousarray(self.X.numpy(), dtype="<f4").data)
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
        )


def _rebuild(X: torch.Tensor, y: torch.Tensor, ids: np.ndarray, n_classes: int,
             subjects: np.ndarray | None = None) -> IndexedDataset:
    """Unpickle an :class:`IndexedDataset` (validated again, as any new one)."""
    return IndexedDataset(X, y, ids, subjects, n_classes=n_classes)

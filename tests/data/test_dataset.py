"""IndexedDataset: stable ids, validation and fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expunge.data import IndexedDataset, as_id_array
from expunge.exceptions import (
    DatasetError,
    ExpungeError,
    InvalidRequestError,
    UnknownSampleError,
)


def make(n: int = 6, *, ids: list[int] | None = None) -> IndexedDataset:
    X = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    y = np.arange(n) % 3
    return IndexedDataset(X, y, ids)


# ------------------------------------------------------------------ construction
def test_defaults_and_dtypes() -> None:
    ds = make(4)
    assert len(ds) == 4
    assert ds.ids.tolist() == [0, 1, 2, 3]
    assert ds.ids.dtype == np.int64
    assert ds.X.dtype == torch.float32
    assert ds.y.dtype == torch.int64
    assert ds.n_classes == 3
    assert ds.input_shape == (2,)


def test_ids_are_read_only() -> None:
    ds = make(3)
    with pytest.raises(ValueError):
        ds.ids[0] = 7


def test_explicit_n_classes_kept_in_subsets() -> None:
    ds = IndexedDataset(np.zeros((3, 1)), [0, 0, 1], n_classes=5)
    assert ds.drop([2]).n_classes == 5
    assert ds.class_counts() == [2, 1, 0, 0, 0]


def test_n_classes_smaller_than_labels_is_refused() -> None:
    with pytest.raises(DatasetError, match=r"n_classes=2"):
        IndexedDataset(np.zeros((3, 1)), [0, 1, 2], n_classes=2)


def test_mismatched_lengths() -> None:
    with pytest.raises(DatasetError, match=r"same number of samples"):
        IndexedDataset(np.zeros((3, 2)), [0, 1])


def test_ids_length_mismatch() -> None:
    with pytest.raises(DatasetError, match=r"ids has 2 entries"):
        IndexedDataset(np.zeros((3, 2)), [0, 1, 0], [5, 6])


def test_duplicate_ids_named() -> None:
    with pytest.raises(DatasetError, match=r"repeated: \[7\]"):
        IndexedDataset(np.zeros((3, 2)), [0, 1, 0], [7, 7, 8])


@pytest.mark.parametrize("bad_ids", [[0.0, 1.0, 2.0], np.array([0.5, 1.0, 2.0]), ["a", "b", "c"]])
def test_non_integer_ids_refused(bad_ids: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"integers"):
        IndexedDataset(np.zeros((3, 2)), [0, 1, 0], bad_ids)


def test_boolean_ids_refused() -> None:
    with pytest.raises(InvalidRequestError):
        as_id_array([True, False])
    with pytest.raises(InvalidRequestError):
        as_id_array(np.array([True, False]))


def test_as_id_array_accepts_ints_and_tensors() -> None:
    assert as_id_array(3).tolist() == [3]
    assert as_id_array(torch.tensor([4, 5])).tolist() == [4, 5]
    assert as_id_array(np.array([[1, 2]], dtype=np.int32)).dtype == np.int64
    with pytest.raises(InvalidRequestError, match=r"string"):
        as_id_array("12")


def test_non_integer_labels_and_negative_labels() -> None:
    with pytest.raises(DatasetError, match=r"integer"):
        IndexedDataset(np.zeros((2, 1)), [0.5, 1.0])
    with pytest.raises(DatasetError, match=r">= 0"):
        IndexedDataset(np.zeros((2, 1)), [-1, 1])
    with pytest.raises(DatasetError, match=r"1-D"):
        IndexedDataset(np.zeros((2, 1)), [[0], [1]])


def test_object_arrays_refused() -> None:
    with pytest.raises(DatasetError, match=r"numeric"):
        IndexedDataset(np.array([["a"], [None]], dtype=object), [0, 1])


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        IndexedDataset(np.zeros((3, 2)), [0, 1])
    assert issubclass(DatasetError, ExpungeError)


# ------------------------------------------------------------------ ids survive subsets
def test_drop_keeps_ids() -> None:
    ds = make(6, ids=[10, 11, 12, 13, 14, 15])
    kept = ds.drop([11, 14])
    assert kept.ids.tolist() == [10, 12, 13, 15]
    np.testing.assert_array_equal(kept.X.numpy(), ds.X.numpy()[[0, 2, 3, 5]])
    np.testing.assert_array_equal(kept.y.numpy(), ds.y.numpy()[[0, 2, 3, 5]])
    # dropping again works on the surviving ids, nothing was renumbered
    assert kept.drop([15]).ids.tolist() == [10, 12, 13]


def test_select_keeps_ids_in_given_order() -> None:
    ds = make(5, ids=[50, 40, 30, 20, 10])
    sub = ds.select([10, 50])
    assert sub.ids.tolist() == [10, 50]
    np.testing.assert_array_equal(sub.X.numpy(), ds.X.numpy()[[4, 0]])


def test_where_and_positions() -> None:
    ds = make(4, ids=[9, 8, 7, 6])
    assert ds.positions([7, 9]).tolist() == [2, 0]
    assert ds.where([True, False, True, False]).ids.tolist() == [9, 7]
    with pytest.raises(DatasetError, match=r"mask"):
        ds.where([True, False])
    assert ds.contains([9, 100]).tolist() == [True, False]


def test_unknown_ids_named() -> None:
    ds = make(4)
    with pytest.raises(UnknownSampleError, match=r"\[17, 99\]"):
        ds.drop([1, 17, 99])
    with pytest.raises(UnknownSampleError, match=r"99"):
        ds.select([99])
    with pytest.raises(LookupError):
        ds.positions([42])


def test_with_labels_and_ids_of_class() -> None:
    ds = make(6, ids=[5, 6, 7, 8, 9, 10])
    assert ds.ids_of_class(1).tolist() == [6, 9]
    flipped = ds.with_labels(np.zeros(6, dtype=np.int64))
    assert flipped.ids.tolist() == ds.ids.tolist()
    assert flipped.n_classes == ds.n_classes
    assert flipped.class_counts() == [6, 0, 0]


def test_concat_disjoint_and_overlapping() -> None:
    a = make(3)
    b = make(2, ids=[100, 101])
    both = IndexedDataset.concat([a, b])
    assert both.ids.tolist() == [0, 1, 2, 100, 101]
    with pytest.raises(DatasetError, match=r"unique"):
        IndexedDataset.concat([a, a])
    with pytest.raises(DatasetError):
        IndexedDataset.concat([])


# ------------------------------------------------------------------ fingerprint
def test_fingerprint_is_stable() -> None:
    assert make(5).fingerprint() == make(5).fingerprint()
    assert len(make(5).fingerprint()) == 64


def test_fingerprint_bytes_are_those_of_the_stored_format() -> None:
    """The in-place hash (no copies) gives the digest of the documented byte layout:
    little-endian int64 ids and labels, float32 inputs, for any layout of the tensors."""
    import hashlib

    X = torch.arange(40, dtype=torch.float32).reshape(5, 8).t()  # not contiguous
    ds = IndexedDataset(X, np.arange(8) % 3, ids=np.arange(10, 18)[::-1])
    h = hashlib.sha256()
    h.update(f"n_classes={ds.n_classes};X{tuple(ds.X.shape)}".encode())
    h.update(np.asarray(ds.ids).astype("<i8").tobytes())
    h.update(ds.y.numpy().astype("<i8").tobytes())
    h.update(ds.X.numpy().astype("<f4").tobytes())
    assert ds.fingerprint() == h.hexdigest()


def test_fingerprint_changes_with_content() -> None:
    base = make(5)
    fp = base.fingerprint()
    X = base.X.clone()
    X[0, 0] += 1.0
    assert IndexedDataset(X, base.y, base.ids).fingerprint() != fp
    y = base.y.clone()
    y[0] = 2
    assert IndexedDataset(base.X, y, base.ids).fingerprint() != fp
    assert make(5, ids=[0, 1, 2, 3, 5]).fingerprint() != fp
    assert IndexedDataset(base.X, base.y, base.ids, n_classes=4).fingerprint() != fp
    assert base.drop([4]).fingerprint() != fp
    # same values, different shape
    assert IndexedDataset(base.X.reshape(5, 2, 1), base.y, base.ids).fingerprint() != fp


def test_repr_mentions_size() -> None:
    assert "n=5" in repr(make(5))


# ---------------------------------------------------------------------- views
def test_subsets_gather_their_inputs_only_when_read() -> None:
    ds = IndexedDataset(np.random.default_rng(0).random((50, 3)), np.arange(50) % 4)
    sub = ds.drop([3, 7]).where(np.arange(48) % 2 == 0).select([10, 0, 22])
    assert sub._X is None  # nothing gathered yet
    assert sub.input_shape == (3,) and len(sub) == 3
    assert sub.ids.tolist() == [10, 0, 22]
    eager = ds.X[torch.tensor([10, 0, 22])]
    assert torch.equal(sub.X, eager)  # the same rows as an eager copy
    assert torch.equal(sub.y, ds.y[torch.tensor([10, 0, 22])])
    assert sub.fingerprint() == IndexedDataset(eager, sub.y, sub.ids, n_classes=4).fingerprint()
    assert sub.X.data_ptr() != ds.X.data_ptr()  # a copy once read, never a view of the parent
    sub.X.zero_()
    assert not torch.equal(ds.X[10], torch.zeros(3))  # writing to it leaves the parent alone


def test_a_pickled_view_carries_its_own_rows_only() -> None:
    import pickle

    ds = IndexedDataset(np.zeros((1000, 10)), np.arange(1000) % 3)
    sub = ds.select([5, 6])
    restored = pickle.loads(pickle.dumps(sub))
    assert len(pickle.dumps(sub)) < 10_000  # not the 40 KB of the parent's inputs
    assert torch.equal(restored.X, sub.X) and restored.ids.tolist() == [5, 6]
    assert restored.n_classes == 3 and not restored.ids.flags.writeable

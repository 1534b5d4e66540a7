"""The retained training data on disk: buckets by keyed hash of the id, original row order.

Claims: a request rewrites only the buckets that held a forgotten id; the store holds
exactly the retained rows; reading gives the rows in the order of ``D.drop(F)`` even when
ids are not sorted (row order is part of what is computed).
"""

from __future__ import annotations

import numpy as np
import torch

import expunge
from expunge.data import IndexedDataset
from expunge.store import DirectoryStore
from expunge.strategies._stored_data import (
    DATA_BUCKETS,
    data_buckets,
    read_training_data,
    write_training_data,
)

PARAMS = dict(model="logreg", epochs=2, batch_size=16, lr=0.1, momentum=0.9, seed=1)


def _shuffled(data: IndexedDataset, seed: int = 0) -> IndexedDataset:
    """The same samples in another row order (ids no longer sorted)."""
    order = np.random.default_rng(seed).permutation(len(data))
    return data.select(data.ids[order])


def test_buckets_depend_only_on_the_id():
    ids = np.arange(5000, dtype=np.int64)
    buckets = data_buckets(ids)
    assert buckets.min() == 0 and buckets.max() == DATA_BUCKETS - 1
    counts = np.bincount(buckets, minlength=DATA_BUCKETS)
    assert counts.min() > 0.7 * 5000 / DATA_BUCKETS  # roughly uniform
    assert (data_buckets(ids[::-7]) == buckets[::-7]).all()


def test_single_id_request_rewrites_one_bucket(small_digits, tmp_path):
    model = expunge.Retrain(**PARAMS, store=tmp_path / "s").fit(small_digits)
    before = set(model.store_.read_state()["data"])
    assert len(before) == DATA_BUCKETS
    target = int(small_digits.ids[17])
    report = model.forget([target])
    after = set(model.store_.read_state()["data"])
    assert len(before - after) == 1 and len(after - before) == 1
    (old,) = before - after
    assert old.startswith(f"data/train-{data_buckets(np.array([target]))[0]:02d}-")
    assert old in report.purged and not model.store_.has_blob(old)
    model.close()


def test_reopened_data_keeps_the_row_order_of_the_dropped_dataset(small_digits, tmp_path):
    data = _shuffled(small_digits)
    gone = [int(data.ids[3]), int(data.ids[150])]
    model = expunge.SISA(**PARAMS, n_shards=2, n_slices=2, store=tmp_path / "s").fit(data)
    model.forget(gone)
    model.close()
    reopened = expunge.open(tmp_path / "s")
    expected = data.drop(gone)
    assert (reopened.data_.ids == expected.ids).all()
    assert torch.equal(reopened.data_.X, expected.X) and torch.equal(reopened.data_.y, expected.y)
    # and forgetting goes on exactly: reopen-then-forget == fit on the twice-dropped data
    more = [int(expected.ids[40])]
    reopened.forget(more)
    twin = expunge.SISA(**PARAMS, n_shards=2, n_slices=2).fit(data.drop(gone + more))
    assert reopened.fingerprint() == twin.fingerprint()
    reopened.close()


def test_round_trip(small_digits, tmp_path):
    store = DirectoryStore(tmp_path / "s", create=True)
    with store.writing():
        store.ensure_key()
    data = _shuffled(small_digits, seed=3)
    positions = np.arange(len(data), dtype=np.int64)
    names = write_training_data(store, data, positions, "fp")
    assert names == sorted(names) and len(set(names)) == len(names)
    back, back_positions = read_training_data(store, names)
    assert (back.ids == data.ids).all() and torch.equal(back.X, data.X)
    assert (back_positions == positions).all() and back.n_classes == data.n_classes
    # an unchanged bucket is not written again: same names, nothing new on disk
    assert write_training_data(store, data, positions, "fp") == names
    store.close()

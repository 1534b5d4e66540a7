"""SISA: the paper's claims checked directly, bitwise (opacus's 'obviously correct, but slow')."""

from __future__ import annotations

import numpy as np
import pytest

import expunge
from expunge.exceptions import InvalidParameterError
from expunge.store import unpack
from expunge.strategies.exact.sisa import sisa_partition
from expunge.training import epoch_schedule

PARAMS = dict(model="mlp", model_params={"hidden_sizes": [16]}, n_shards=4, n_slices=3,
              epochs=3, batch_size=16, lr=0.05, momentum=0.9, seed=3)


@pytest.fixture(scope="module")
def data(digits):
    train, _ = digits
    return train.select(train.ids[:400])


@pytest.fixture(scope="module")
def layout(data):
    shard, slice_ = sisa_partition(PARAMS["seed"], data.ids, PARAMS["n_shards"], PARAMS["n_slices"])
    return {int(i): (int(s), int(r)) for i, s, r in zip(data.ids, shard, slice_)}


def ids_where(layout, shard=None, slice_=None, n=1):
    found = [i for i, (s, r) in layout.items()
             if (shard is None or s == shard) and (slice_ is None or r == slice_)]
    return found[:n]


def assert_identical(a, b, data):
    assert a.fingerprint() == b.fingerprint()
    assert np.array_equal(a.predict_proba(data.X).numpy(), b.predict_proba(data.X).numpy())


@pytest.mark.parametrize("with_store", [False, True])
@pytest.mark.parametrize("case", ["one id", "several shards", "first slice", "last slice"])
def test_forget_equals_fit_without(case, with_store, data, layout, tmp_path):
    if case == "one id":
        request = ids_where(layout, shard=1, slice_=1)
    elif case == "several shards":
        request = [ids_where(layout, shard=s)[0] for s in range(PARAMS["n_shards"])]
    elif case == "first slice":
        request = ids_where(layout, shard=2, slice_=0, n=2)
    else:
        request = ids_where(layout, shard=0, slice_=PARAMS["n_slices"] - 1)
    store = tmp_path / "s" if with_store else None
    sisa = expunge.SISA(**PARAMS, store=store).fit(data)
    report = sisa.forget(request)
    twin = expunge.SISA(**PARAMS).fit(data.drop(request))
    assert_identical(sisa, twin, data)
    assert sorted(report.submodels_retrained) == sorted({layout[i][0] for i in request})


def test_three_requests_in_a_row_with_reopen(data, layout, tmp_path):
    requests = [ids_where(layout, shard=0, slice_=2), ids_where(layout, shard=0, slice_=0),
                ids_where(layout, shard=3, slice_=1, n=3)]
    sisa = expunge.SISA(**PARAMS, store=tmp_path / "s").fit(data)
    gone: list[int] = []
    for k, request in enumerate(requests):
        if k == 1:  # continue from disk halfway through
            sisa.close()
            sisa = expunge.open(tmp_path / "s")
        sisa.forget(request)
        gone += request
        assert_identical(sisa, expunge.SISA(**PARAMS).fit(data.drop(gone)), data)


def test_only_affected_shard_retrains_from_its_slice(data, layout):
    sisa = expunge.SISA(**PARAMS).fit(data)
    before = {s.index: s.keys for s in sisa.fitted_.submodels}
    [target] = ids_where(layout, shard=2, slice_=1)
    report = sisa.forget([target])
    after = {s.index: s.keys for s in sisa.fitted_.submodels}
    assert report.submodels_retrained == [2]
    assert report.details["from_block"] == {"2": 1}
    for shard in range(PARAMS["n_shards"]):
        if shard != 2:
            assert after[shard] == before[shard]
    assert after[2][0] == before[2][0]  # slice 0 reused
    assert after[2][1] != before[2][1] and after[2][2] != before[2][2]
    # cost = cumulative slices 1..R-1 of that shard, times their epochs
    schedule = epoch_schedule(PARAMS["epochs"], PARAMS["n_slices"])
    retained = {i for i, (s, _) in layout.items() if s == 2 and i != target}
    expected = sum(
        len([i for i in retained if layout[i][1] <= r]) * schedule[r]
        for r in range(1, PARAMS["n_slices"])
    )
    assert report.sample_passes == expected
    assert report.samples_retrained == len(retained)
    # purged: exactly the checkpoints of shard 2 from slice 1 on, and the old copy of the
    # one data bucket that held the id
    checkpoints = [p for p in report.purged if p.startswith("ckpt/")]
    assert len(checkpoints) == PARAMS["n_slices"] - 1
    assert all(p.startswith("ckpt/sub-002/block-00") for p in checkpoints)
    assert [p for p in report.purged if not p.startswith("ckpt/")] == [
        p for p in report.purged if p.startswith("data/train-")
    ] and len(report.purged) == len(checkpoints) + 1


def test_no_checkpoint_trained_on_a_forgotten_id_remains(data, layout, tmp_path):
    sisa = expunge.SISA(**PARAMS, store=tmp_path / "s").fit(data)
    request = [ids_where(layout, shard=s, slice_=0)[0] for s in (0, 3)]
    sisa.forget(request)
    store = sisa.store_
    checkpoints = [b for b in store.list_blobs() if b.startswith("ckpt/")]
    assert len(checkpoints) == PARAMS["n_shards"] * PARAMS["n_slices"]
    for name in checkpoints:
        trained = unpack(*store.read_blob(name)).ids_trained
        assert not np.isin(request, trained).any(), name
    data_blobs = [b for b in store.list_blobs() if b.startswith("data/")]
    assert set(data_blobs) == set(store.read_state()["data"])  # no stale bucket is left
    parts = [store.read_blob(b)[0] for b in data_blobs]
    # rows forgotten in place are holes: position -1, id 0
    holes = np.concatenate([t["positions"].numpy() < 0 for t in parts])
    stored = np.concatenate([t["ids"].numpy() for t in parts])
    assert holes.sum() == len(request) and not stored[holes].any()
    stored = stored[~holes]
    assert sorted(stored.tolist()) == sorted(sisa.data_.ids.tolist())
    assert not np.isin(request, stored).any()
    on_disk = {p.suffix for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert on_disk <= {".safetensors", ".sqlite", ".json", ".sqlite-wal", ".sqlite-shm", "",
                       ".key", ".lock", ".pem"}  # the store's secret, lock files, signing key
    assert (tmp_path / "s" / "write.lock").stat().st_size == 0  # no holder recorded now


def test_partition_depends_only_on_seed_and_id():
    ids = np.arange(1000, dtype=np.int64)
    shard, slice_ = sisa_partition(7, ids, 5, 4)
    sub = ids[::3][::-1]  # other ids present, different order
    shard_sub, slice_sub = sisa_partition(7, sub, 5, 4)
    assert np.array_equal(shard_sub, shard[sub]) and np.array_equal(slice_sub, slice_[sub])
    counts = np.bincount(shard, minlength=5)
    assert counts.min() > 150  # balanced in expectation (200 each)
    assert not np.array_equal(shard, sisa_partition(8, ids, 5, 4)[0])


def test_vote_aggregation_counts_votes_and_ties_go_low(data):
    sisa = expunge.SISA(**{**PARAMS, "aggregation": "vote"}).fit(data)
    proba = sisa.predict_proba(data.X[:50])
    votes = proba * PARAMS["n_shards"]
    assert np.allclose(votes.numpy(), np.round(votes.numpy()))
    mean = expunge.SISA(**{**PARAMS, "aggregation": "mean"}).fit(data)
    assert mean.fingerprint() == sisa.fingerprint()  # aggregation does not change training
    assert not np.array_equal(mean.predict_proba(data.X[:50]).numpy(), proba.numpy())


def test_checkpoint_carries_optimizer_state(data, tmp_path):
    sisa = expunge.SISA(**PARAMS, store=tmp_path / "s").fit(data)
    name = sorted(b for b in sisa.store_.list_blobs() if b.startswith("ckpt/sub-000/block-000"))[0]
    checkpoint = unpack(*sisa.store_.read_blob(name))
    assert checkpoint.optimizer is not None
    buffers = [v["momentum_buffer"] for v in checkpoint.optimizer["state"].values()]
    assert buffers and all(b.abs().sum() > 0 for b in buffers)


def test_bad_parameters_name_the_value(data):
    with pytest.raises(InvalidParameterError, match="'n_shards' parameter of SISA must be an int"):
        expunge.SISA(n_shards=0).fit(data)
    with pytest.raises(InvalidParameterError, match="'aggregation'.*'vote', 'mean'.*'max'"):
        expunge.SISA(aggregation="max").fit(data)
    with pytest.raises(InvalidParameterError, match="n_slices=9 with epochs=2"):
        expunge.SISA(n_slices=9, epochs=2).fit(data)

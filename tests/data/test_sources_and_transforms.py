"""Stored dtypes, input transforms and lazy sources (memmap, torch Dataset), and the exactness
of every exact strategy on them: ``fit(D).forget(F)`` is bitwise ``fit(D.drop(F))``."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import expunge
from expunge.data import (
    Identity,
    IndexedDataset,
    Normalize,
    Scale,
    as_transform,
    load_dataset,
    transform_from_dict,
)
from expunge.exceptions import DatasetError
from expunge.strategies._stored_data import DATA_BLOB_PREFIX

EXACT = [n for n in expunge.available_strategies()
         if expunge.get_strategy(n).guarantee == "exact"]


def make(name: str, **overrides):
    cls = expunge.get_strategy(name)
    return cls(**{**cls._test_params(), **overrides})


@pytest.fixture(scope="module")
def raw_digits() -> tuple[IndexedDataset, IndexedDataset]:
    """The digits as uint8 pixel counts with ``Scale(1/16)``, 240 training samples."""
    train, test = load_dataset("digits", raw=True)
    return train.select(train.ids[:240]), test


@pytest.fixture(scope="module")
def float_digits() -> IndexedDataset:
    train, _ = load_dataset("digits")
    return train.select(train.ids[:240])


class ItemDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """A map-style torch Dataset that counts how many items were read."""

    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X, self.targets, self.reads = X, y, 0

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int):
        self.reads += 1
        return torch.from_numpy(self.X[i]), int(self.targets[i])


# ------------------------------------------------------------------ transforms
def test_transforms_compute_their_closed_forms():
    x = torch.tensor([[0, 1, 254, 255]], dtype=torch.uint8)
    assert torch.equal(Scale(0.5)(x), torch.tensor([[0.0, 0.5, 127.0, 127.5]]))
    assert torch.equal(Identity()(x), x.to(torch.float32))
    # (x - 0) / 255 is correctly rounded x / 255, as the float loader computes it
    assert torch.equal(Normalize(0, 255)(x), x.to(torch.float32) / 255)
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).reshape(2, 3, 2, 2)
    out = Normalize([1.0, 2.0, 3.0], [2.0, 4.0, 8.0])(images)
    for c, (m, s) in enumerate(zip([1.0, 2.0, 3.0], [2.0, 4.0, 8.0])):
        assert torch.equal(out[:, c], (images[:, c].float() - m) / s)


def test_a_sample_transforms_to_the_same_bits_in_any_batch():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (50, 3, 4, 4), dtype=np.uint8))
    for t in (Scale(1 / 255), Normalize([0.1, 0.2, 0.3], [0.7, 0.8, 0.9])):
        whole = t(x)
        assert all(torch.equal(t(x[i:i + 1]), whole[i:i + 1]) for i in range(50))


def test_transform_records_round_trip_as_json():
    for t in (Identity(), Scale(1 / 255), Normalize(0.5, 2.0), Normalize([0.1, 0.2], [1.0, 3.0])):
        record = json.loads(json.dumps(t.to_dict()))
        assert transform_from_dict(record) == t
        assert as_transform(record) == t
    assert Scale(0.5) != Scale(0.25) and Scale(1.0) != Identity()


@pytest.mark.parametrize("bad, match", [
    (lambda x: x / 2, "cannot be recorded"),
    ("scale", "cannot be recorded"),
    ({"kind": "pickle"}, "Unknown input transform"),
    ({"kind": "scale"}, "malformed"),
])
def test_unrecordable_transforms_are_refused(bad, match):
    with pytest.raises(DatasetError, match=match):
        IndexedDataset(np.zeros((2, 1), np.uint8), [0, 1], transform=bad)


@pytest.mark.parametrize("make_bad, match", [
    (lambda: Scale(0), "must not be 0"),
    (lambda: Scale(float("nan")), "finite"),
    (lambda: Normalize(0, 0), "std must be > 0"),
    (lambda: Normalize([0, 0], [1, 1, 1]), "one value per channel"),
])
def test_bad_transform_values_are_refused(make_bad, match):
    with pytest.raises(DatasetError, match=match):
        make_bad()


def test_per_channel_normalize_names_a_shape_it_does_not_fit():
    with pytest.raises(DatasetError, match="3 per-channel values"):
        Normalize([0, 0, 0], [1, 1, 1])(torch.zeros((2, 1, 4, 4), dtype=torch.uint8))


# ---------------------------------------------------------------- stored dtype
def test_inputs_keep_their_stored_dtype():
    ds = IndexedDataset(np.arange(8, dtype=np.uint8).reshape(4, 2), [0, 1, 0, 1],
                        transform=Scale(0.5))
    assert ds.X.dtype == torch.uint8 and ds.nbytes == 8
    assert ds.drop([1]).X.dtype == torch.uint8
    assert torch.equal(ds.select([3, 0]).inputs(), torch.tensor([[3.0, 3.5], [0.0, 0.5]]))
    assert ds.drop([1]).transform == Scale(0.5)
    # floats other than float32 are stored as float32, as before
    assert IndexedDataset(np.zeros((2, 1)), [0, 1]).X.dtype == torch.float32
    assert IndexedDataset(np.zeros((2, 1), bool), [0, 1]).X.dtype == torch.uint8


def test_mnist_raw_gives_the_same_model_inputs_as_the_float_loader(shared_datasets):
    a, _ = load_dataset("mnist", shared_datasets / "mnist", limit_train=3000, limit_test=10)
    b, _ = load_dataset("mnist", shared_datasets / "mnist", limit_train=3000, limit_test=10,
                        raw=True)
    assert b.X.dtype == torch.uint8 and b.nbytes * 4 == a.nbytes
    assert torch.equal(a.X, b.inputs())


def test_digits_raw_gives_the_same_model_inputs(raw_digits, float_digits):
    assert torch.equal(raw_digits[0].inputs(), float_digits.X)


def test_fingerprint_covers_dtype_and_transform(raw_digits):
    train = raw_digits[0]
    assert train.fingerprint() != train.with_transform(Scale(1 / 17)).fingerprint()
    assert train.fingerprint() != IndexedDataset(train.inputs(), train.y, train.ids).fingerprint()
    assert train.fingerprint() == pickle.loads(pickle.dumps(train)).fingerprint()


# ------------------------------------------------------------------- sources
def test_memmap_rows_are_read_only_when_needed(tmp_path, raw_digits):
    train = raw_digits[0]
    np.save(tmp_path / "x.npy", train.X.numpy())
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    ds = IndexedDataset(mm, train.y, train.ids, transform=train.transform)
    assert ds._X is None  # nothing gathered yet
    assert ds.fingerprint() == train.fingerprint()
    sub = ds.drop(train.ids[:5])
    assert torch.equal(sub.inputs(np.array([0, 7])), train.drop(train.ids[:5]).inputs()[[0, 7]])
    assert sub._X is None and ds._X is None
    assert sub.X.dtype == torch.uint8 and not np.shares_memory(sub.X.numpy(), mm)


def test_torch_dataset_adapter_reads_items_lazily(raw_digits):
    train = raw_digits[0]
    source = ItemDataset(train.X.numpy(), train.y.numpy())
    ds = IndexedDataset.from_torch(source, ids=train.ids, transform=train.transform)
    assert source.reads == 1  # the first item, for the input shape
    assert ds.fingerprint() == train.fingerprint()
    source.reads = 0
    assert torch.equal(ds.select(train.ids[[3, 9]]).inputs(), train.inputs()[[3, 9]])
    assert source.reads == 2


def test_torch_dataset_adapter_reads_labels_from_items_without_targets():
    class NoTargets(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int):
            return torch.full((2,), i, dtype=torch.uint8), i % 2

    ds = IndexedDataset.from_torch(NoTargets(), ids=[10, 11, 12, 13])
    assert ds.y.tolist() == [0, 1, 0, 1] and ds.ids.tolist() == [10, 11, 12, 13]
    with pytest.raises(DatasetError, match="__len__"):
        IndexedDataset.from_torch(iter([]))


def test_torch_dataset_items_of_another_shape_are_refused():
    class Ragged(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int):
            return torch.zeros(2 + (i == 2)), 0

    ds = IndexedDataset.from_torch(Ragged(), labels=[0, 1, 0])
    with pytest.raises(DatasetError, match="item 2 .* shape"):
        ds.X  # noqa: B018 - gathering the rows is what fails


# ------------------------------------------------------------ with strategies
def _sources(train: IndexedDataset, kind: str, tmp_path) -> IndexedDataset:
    if kind == "memory":
        return train
    if kind == "memmap":
        np.save(tmp_path / "x.npy", train.X.numpy())
        return IndexedDataset(np.load(tmp_path / "x.npy", mmap_mode="r"), train.y, train.ids,
                              n_classes=train.n_classes, transform=train.transform)
    return IndexedDataset.from_torch(ItemDataset(train.X.numpy(), train.y.numpy()),
                                     ids=train.ids, n_classes=train.n_classes,
                                     transform=train.transform)


@pytest.mark.parametrize("kind", ["memory", "memmap", "torch"])
@pytest.mark.parametrize("name", EXACT)
def test_exact_forget_is_bitwise_retraining_on_uint8_sources(name, kind, raw_digits,
                                                             float_digits, tmp_path):
    """uint8 + Scale, on memory, memmap and torch-Dataset sources: forget = retrain without,
    and (the transform giving the same bits) the very model fitted on the float32 data."""
    train = _sources(raw_digits[0], kind, tmp_path)
    ids = train.ids
    strategy = make(name).fit(train)
    if kind == "memory":
        assert strategy.fingerprint() == make(name).fit(float_digits).fingerprint()
    dropped: list[int] = []
    for request in ([int(ids[0])], [int(ids[17]), int(ids[150])]):
        strategy.forget(request)
        dropped += request
        twin = make(name).fit(train.drop(dropped))
        assert strategy.fingerprint() == twin.fingerprint()
    assert strategy.training_data.X.dtype == torch.uint8


@pytest.mark.parametrize("name", EXACT)
def test_predict_proba_takes_raw_inputs_and_the_store_keeps_uint8(name, raw_digits,
                                                                  float_digits, tmp_path):
    train, test = raw_digits
    path = tmp_path / "store"
    strategy = make(name, store=path).fit(train)
    reference = make(name).fit(float_digits)
    expected = reference.predict_proba(test.inputs()).numpy()
    assert np.array_equal(strategy.predict_proba(test.X).numpy(), expected)
    assert np.array_equal(strategy.predict_proba(test.X.numpy()).numpy(), expected)
    assert np.array_equal(strategy.predict_proba(test).numpy(), expected)
    with pytest.raises(DatasetError, match="transform"):
        strategy.predict_proba(test.with_transform(None))
    strategy.forget([int(train.ids[3])])
    store = strategy.store_
    blobs = [b for b in store.list_blobs() if b.startswith(DATA_BLOB_PREFIX)]
    assert blobs and all(store.read_blob(b)[0]["X"].dtype == torch.uint8 for b in blobs)
    manifest = store.read_manifest()
    assert manifest["dataset"]["dtype"] == "uint8"
    assert manifest["dataset"]["transform"] == {"kind": "scale", "factor": 1 / 16}
    proba = strategy.predict_proba(test.X).numpy()
    strategy.close()
    reopened = expunge.open(path)
    assert reopened.input_transform == Scale(1 / 16)
    assert reopened.training_data.X.dtype == torch.uint8
    assert np.array_equal(reopened.predict_proba(test.X).numpy(), proba)
    reopened.forget([int(train.ids[4])])
    twin = make(name).fit(train.drop([int(train.ids[3]), int(train.ids[4])]))
    assert reopened.fingerprint() == twin.fingerprint()
    assert reopened.verify() == 3
    reopened.close()


def test_a_store_refuses_the_same_data_with_another_transform(raw_digits, tmp_path):
    train = raw_digits[0]
    path = tmp_path / "store"
    make("retrain", store=path).fit(train).close()
    with pytest.raises(expunge.exceptions.StoreMismatchError, match="other data"):
        make("retrain", store=path).fit(train.with_transform(Scale(1 / 15)))


@pytest.mark.parametrize("name", expunge.available_strategies())
def test_every_strategy_fits_uint8_data_as_its_float32_twin(name, raw_digits, float_digits):
    """The transform gives the float32 loader's bits, so every strategy (approximate ones
    too) fits the very same model, and forgets the same way, from the uint8 data."""
    raw, floats = make(name).fit(raw_digits[0]), make(name).fit(float_digits)
    assert raw.fingerprint() == floats.fingerprint()
    raw.forget([int(raw_digits[0].ids[5])])
    floats.forget([int(raw_digits[0].ids[5])])
    assert raw.fingerprint() == floats.fingerprint()
    test = raw_digits[1]
    assert np.array_equal(raw.predict_proba(test.X).numpy(),
                          floats.predict_proba(test.inputs()).numpy())


def test_process_workers_get_the_stored_dtype_and_the_transform(raw_digits, float_digits):
    """Workers receive uint8 rows and the transform's record: the serial bits."""
    params = {**expunge.SISA._test_params(), "model": "logreg"}
    serial = expunge.SISA(**params).fit(float_digits).fingerprint()
    pool = expunge.SISA(**params, executor="process", n_jobs=2).fit(raw_digits[0])
    assert pool.fingerprint() == serial


@pytest.mark.parametrize("transform", [Scale(1 / 16), Normalize([0.0], [16.0])])
def test_export_takes_the_raw_inputs_predict_proba_takes(transform, raw_digits, tmp_path):
    from expunge.export import load_exported

    train, test = raw_digits[0].with_transform(transform), raw_digits[1]
    strategy = expunge.SISA("logreg", n_shards=2, n_slices=1, epochs=1).fit(train)
    expected = strategy.predict_proba(test.X)
    module = strategy.export(tmp_path / "out")
    assert torch.equal(module(test.X), expected)  # uint8 in, the fitted transform inside
    assert torch.equal(load_exported(tmp_path / "out")(test.X), expected)
    assert torch.equal(torch.jit.script(module)(test.X), expected)

"""Store: atomic writes, crash safety at every step of a request, manifest checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import expunge
from expunge.exceptions import StoreError, StoreMismatchError
from expunge.store._atomic import atomic_write, atomic_write_bytes
from expunge.store._layout import blob_path

PARAMS = dict(model="logreg", n_shards=3, n_slices=3, epochs=3, batch_size=16, lr=0.1,
              momentum=0.9, seed=0)


class Crash(RuntimeError):
    pass


def crash_after(n: int, action: str):
    calls = {"n": 0}

    def hook(kind: str, name: str) -> None:
        if kind == action:
            calls["n"] += 1
            if calls["n"] > n:
                raise Crash(f"simulated crash at {kind} {name}")

    return hook


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def failing(tmp):
        tmp.write_bytes(b"half")
        raise Crash("disk full")

    with pytest.raises(Crash):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left


@pytest.mark.parametrize("writes_before_crash", [0, 1, 3])
def test_crash_before_commit_leaves_previous_state(small_digits, tmp_path, writes_before_crash):
    path = tmp_path / "s"
    sisa = expunge.SISA(**PARAMS, store=path).fit(small_digits)
    request = [int(i) for i in small_digits.ids[:6]]  # several shards, early slices
    before = (sisa.fingerprint(), len(sisa.ledger), sorted(sisa.store_.list_blobs()))
    sisa.store_.write_hook = crash_after(writes_before_crash, "write")
    with pytest.raises(Crash):
        sisa.forget(request)
    sisa.store_.write_hook = None
    # in memory: unchanged
    assert (sisa.fingerprint(), len(sisa.ledger)) == before[:2]
    sisa.close()
    # on disk: reopens at the previous state; orphaned new checkpoints are collected
    reopened = expunge.open(path)
    assert reopened.fingerprint() == before[0]
    assert len(reopened.ledger) == before[1]
    assert sorted(reopened.store_.list_blobs()) == before[2]
    assert not list(path.rglob("*.tmp"))
    reopened.forget(request)
    twin = expunge.SISA(**PARAMS).fit(small_digits.drop(request))
    assert reopened.fingerprint() == twin.fingerprint()
    reopened.close()


def test_crash_during_purge_is_finished_on_reopen(small_digits, tmp_path):
    path = tmp_path / "s"
    sisa = expunge.SISA(**PARAMS, store=path).fit(small_digits)
    request = [int(small_digits.ids[0])]
    sisa.store_.write_hook = crash_after(0, "delete")
    with pytest.raises(Crash):
        sisa.forget(request)  # committed, then crashed while deleting stale checkpoints
    sisa.store_.write_hook = None
    sisa.close()
    reopened = expunge.open(path)
    twin = expunge.SISA(**PARAMS).fit(small_digits.drop(request))
    assert reopened.fingerprint() == twin.fingerprint()
    entry = reopened.ledger.entries()[-1]
    assert entry.kind == "forget" and entry.ids == request
    # everything the entry lists as purged is gone now
    assert not set(entry.purged) & reopened.store_.list_blobs()
    assert reopened.verify() == 2
    reopened.close()


def test_interrupted_fit_resumes_and_reuses_checkpoints(small_digits, tmp_path):
    path = tmp_path / "s"
    sisa = expunge.SISA(**PARAMS, store=path)
    original = expunge.store.DirectoryStore.write_blob
    written: list[str] = []

    def flaky(self, name, tensors, metadata=None, **options):
        if len(written) == 4:
            raise Crash("power cut")
        written.append(name)
        return original(self, name, tensors, metadata, **options)

    expunge.store.DirectoryStore.write_blob = flaky
    try:
        with pytest.raises(Crash):
            sisa.fit(small_digits)
    finally:
        expunge.store.DirectoryStore.write_blob = original
    with pytest.raises(StoreMismatchError, match="no committed fit"):
        expunge.open(path)
    resumed = expunge.SISA(**PARAMS, store=path).fit(small_digits)
    assert resumed.fingerprint() == expunge.SISA(**PARAMS).fit(small_digits).fingerprint()
    assert len(resumed.ledger) == 1


def test_manifest_records_params_and_versions(small_digits, tmp_path):
    expunge.SISA(**PARAMS, store=tmp_path / "s").fit(small_digits).close()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["strategy"] == "sisa" and manifest["params"]["n_shards"] == 3
    assert manifest["dataset"]["n_samples"] == len(small_digits)
    assert {"expunge_version", "torch_version", "format_version"} <= set(manifest)
    assert "store" not in manifest["params"]


def test_open_refuses_non_stores_and_other_format_versions(tmp_path, small_digits):
    with pytest.raises(StoreError, match="not an expunge store"):
        expunge.open(tmp_path)
    expunge.Retrain(**{k: v for k, v in PARAMS.items() if k not in ("n_shards", "n_slices")},
                    store=tmp_path / "r").fit(small_digits).close()
    manifest_file = tmp_path / "r" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["format_version"] = 99
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(StoreMismatchError, match="format version 99"):
        expunge.open(tmp_path / "r")


def test_refit_after_forget_is_refused(small_digits, tmp_path):
    sisa = expunge.SISA(**PARAMS, store=tmp_path / "s").fit(small_digits)
    sisa.forget([int(small_digits.ids[0])])
    sisa.close()
    with pytest.raises(StoreMismatchError, match="already forgotten samples"):
        expunge.SISA(**PARAMS, store=tmp_path / "s").fit(small_digits)


def test_custom_model_callable_must_be_passed_again(small_digits, tmp_path):
    import torch.nn as nn

    def tiny(input_shape, n_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, n_classes))

    params = {k: v for k, v in PARAMS.items() if k not in ("n_shards", "n_slices", "model")}
    fitted = expunge.Retrain(tiny, **params, store=tmp_path / "r").fit(small_digits)
    fingerprint = fitted.fingerprint()
    fitted.close()
    with pytest.raises(StoreMismatchError, match="custom model.*expunge.open"):
        expunge.open(tmp_path / "r")
    assert expunge.open(tmp_path / "r", model=tiny).fingerprint() == fingerprint


def test_blob_names_cannot_escape_the_store(tmp_path):
    with pytest.raises(ValueError):
        blob_path(tmp_path, "../outside")
    with pytest.raises(ValueError):
        blob_path(tmp_path, "/etc/passwd")


def test_memory_store_checkpoints_are_isolated_from_training(small_digits):
    """Reading a checkpoint must not alias it: later training would corrupt the store."""
    sisa = expunge.SISA(**PARAMS).fit(small_digits)
    store = sisa.store_
    name = sorted(b for b in store.list_blobs() if b.startswith("ckpt/"))[0]
    tensors, _ = store.read_blob(name)
    for t in tensors.values():
        t.add_(1) if t.is_floating_point() else None
    again, _ = store.read_blob(name)
    assert not all(np.array_equal(again[k].numpy(), tensors[k].numpy()) for k in tensors
                   if tensors[k].is_floating_point())


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int8, torch.int16,
                                   torch.int32, torch.int64, torch.float16, torch.bfloat16,
                                   torch.float32, torch.float64])
def test_blob_encoding_is_valid_safetensors_and_round_trips_bitwise(dtype):
    # the store writes safetensors bytes itself (the library's save copies several times);
    # the library must read every one of them back, bit for bit, metadata included
    from safetensors.torch import load, save

    from expunge.store._blobs import decode, encode

    g = torch.Generator().manual_seed(0)
    base = torch.randn(7, 5, generator=g) * 100
    tensors = {"matrix": base.to(dtype), "scalar": torch.tensor(3).to(dtype),
               "empty": torch.zeros(0, 4, dtype=dtype), "strided": base.to(dtype).T,
               "a_vector": torch.arange(11).to(dtype)}
    data = encode(tensors, {"kind": "test", "n": "3"})
    loaded = load(data)
    assert loaded.keys() == tensors.keys()
    for key, tensor in tensors.items():
        assert loaded[key].dtype == dtype and torch.equal(loaded[key], tensor), key
    back, metadata = decode(data, "test")
    assert metadata == {"kind": "test", "n": "3"} and back.keys() == tensors.keys()
    # the same content the library writes (its bytes may order the header differently)
    reference = load(save({k: v.contiguous() for k, v in tensors.items()}))
    assert all(torch.equal(reference[k], loaded[k]) for k in tensors)


def test_compressed_blobs_round_trip_and_uncompressed_ones_still_read(small_digits, tmp_path):
    """``compress=True`` stores one zstd frame; the store (and ``load_blob_file``) reads it
    and a plain safetensors blob alike, so stores written before compression still open."""
    from expunge.store import load_blob_file
    from expunge.store._blobs import ZSTD_MAGIC
    from expunge.store._layout import blob_path

    images = torch.zeros(64, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    images[:, :, 10:18, 10:18] = torch.rand(64, 1, 8, 8, generator=g)
    tensors = {"X": images, "ids": torch.arange(64)}
    model = expunge.SISA(**PARAMS, store=tmp_path / "s").fit(small_digits)
    # the stored training data is not compressed: requests overwrite its rows in place
    data_blobs = [b for b in model.store_.list_blobs() if b.startswith("data/")]
    assert data_blobs and all(blob_path(tmp_path / "s", b).read_bytes()[:4] != ZSTD_MAGIC
                              for b in data_blobs)
    store = model.store_
    store.write_blob("data/packed", tensors, {"kind": "x"}, compress=True)
    store.write_blob("data/plain", tensors, {"kind": "x"})
    packed = blob_path(tmp_path / "s", "data/packed")
    plain = blob_path(tmp_path / "s", "data/plain")
    assert packed.read_bytes()[:4] == ZSTD_MAGIC and plain.read_bytes()[:4] != ZSTD_MAGIC
    assert packed.stat().st_size * 5 < plain.stat().st_size  # mostly-zero images compress
    for name, path in (("data/packed", packed), ("data/plain", plain)):
        for back, metadata in (store.read_blob(name), load_blob_file(path)):
            assert metadata == {"kind": "x"}
            assert all(torch.equal(back[k], tensors[k]) for k in tensors), name
    model.close()


def test_a_truncated_compressed_blob_is_refused_by_name(tmp_path):
    from expunge.exceptions import StoreIntegrityError
    from expunge.store._blobs import decode, encode

    data = encode({"X": torch.zeros(100, 100)}, compress=True)
    with pytest.raises(StoreIntegrityError, match="where.bin.*truncated or corrupted"):
        decode(data[: len(data) // 2], "where.bin")

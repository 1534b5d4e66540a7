"""In-place rewrites of the stored training data: a request overwrites the forgotten rows
where they lie and renames the bucket, instead of writing every retained row again; the
data read back is the retained data, a crash at any point of the rewrite is finished on
reopen, tampering is refused, and a bucket that is mostly holes is written anew."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import expunge
from expunge.exceptions import StoreIntegrityError
from expunge.store import StoreKey, open_store
from expunge.store._layout import blob_path
from expunge.store._rewrite import (
    Rewrite,
    apply_to_file,
    check_patches,
    patched_parts,
    row_patches,
    tensor_regions,
)
from expunge.strategies import _stored_data
from expunge.strategies._stored_data import DATA_BLOB_PREFIX, MAX_HOLES

PARAMS = dict(model="logreg", epochs=2, batch_size=32, lr=0.1, seed=0)


class Crash(RuntimeError):
    pass


def _data_files(path):
    return {p.name: p for p in (path / "blobs").rglob("*.safetensors")
            if f"/{DATA_BLOB_PREFIX}" in str(p)}


def _same_data(a, b):
    assert np.array_equal(a.ids, b.ids)
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)


def test_patches_cover_exactly_the_rows_and_merge_runs():
    regions = {"X": (100, 100 + 6 * 4), "ids": (124, 124 + 6 * 8)}
    shapes = {"X": (6, 4), "ids": (6,)}
    patches = row_patches(regions, shapes, [4, 1, 2], {"X": 0, "ids": 0xFF})
    assert patches == [(104, 8, 0), (116, 4, 0), (132, 16, 0xFF), (156, 8, 0xFF)]
    data = bytes(range(200))
    out = b"".join(bytes(p) for p in patched_parts(data, tuple(patches)))
    expected = bytearray(data)
    for offset, length, fill in patches:
        expected[offset:offset + length] = bytes([fill]) * length
    assert out == bytes(expected)
    for bad in ([(10, 5, 0), (12, 1, 0)], [(198, 5, 0)], [(0, 0, 0)], [(0, 1, 256)]):
        with pytest.raises(ValueError, match="invalid patch"):
            check_patches(tuple(bad), len(data))


def test_applying_twice_is_harmless_and_the_rename_comes_last(tmp_path):
    source, target = tmp_path / "a", tmp_path / "b"
    source.write_bytes(b"0123456789")
    patches = ((2, 3, 0x41),)
    apply_to_file(source, target, patches)
    assert not source.exists() and target.read_bytes() == b"01AAA56789"
    # a crash after the patches but before the rename: applying again finishes it
    source.write_bytes(b"01AAA56789")
    target.unlink()
    apply_to_file(source, target, patches)
    assert target.read_bytes() == b"01AAA56789"
    r = Rewrite("x", "y", patches)
    assert Rewrite.from_json(r.to_json()) == r


def test_a_request_overwrites_the_forgotten_rows_in_place(small_digits, tmp_path,
                                                          readable_contents):
    path = tmp_path / "s"
    model = expunge.Retrain(**PARAMS, store=path).fit(small_digits)
    before = {name: (p.stat().st_ino, p.stat().st_size) for name, p in _data_files(path).items()}
    forgotten = small_digits.ids[[3, 40, 41, 90]]
    rows = small_digits.X[torch.from_numpy(np.flatnonzero(np.isin(small_digits.ids, forgotten)))]
    report = model.forget(forgotten)
    after = {name: (p.stat().st_ino, p.stat().st_size) for name, p in _data_files(path).items()}
    # the touched buckets are the same files (same inode and size) under new names
    renamed = set(after) - set(before)
    assert renamed and {after[n] for n in renamed} <= set(before.values())
    old_names = {f"data/{n.removesuffix('.safetensors')}" for n in set(before) - set(after)}
    assert old_names and old_names <= set(model.ledger.entries()[-1].purged)
    assert report.details is not None
    # the forgotten rows' bytes are gone from every file
    for file in path.rglob("*"):
        if file.is_file():
            for content in readable_contents(file):
                for row in rows:
                    assert row.numpy().tobytes() not in content, file
    model.close()
    reopened = expunge.open(path)
    _same_data(reopened.training_data, small_digits.drop(forgotten))
    twin = expunge.Retrain(**PARAMS).fit(small_digits.drop(forgotten))
    assert reopened.fingerprint() == twin.fingerprint()
    assert reopened.verify() == 2
    reopened.close()


@pytest.mark.parametrize("where", ["before the patches", "between patches"])
def test_a_crash_after_the_commit_is_finished_on_reopen(small_digits, tmp_path, monkeypatch,
                                                        where):
    from expunge.store import _directory

    path = tmp_path / "s"
    model = expunge.Retrain(**PARAMS, store=path).fit(small_digits)
    forgotten = small_digits.ids[[5, 6, 50, 120]]
    calls = {"n": 0}
    original = _directory.apply_to_files

    def crashing(moves):
        calls["n"] += 1
        assert len(moves) > 1  # the request touched several buckets
        if where == "between patches":  # one file renamed, another half patched
            original(moves[:1])
            source, _, patches = moves[1]
            fd = os.open(source, os.O_RDWR)
            for offset, length, fill in patches[: max(1, len(patches) // 2)]:
                os.pwrite(fd, bytes([fill]) * length, offset)
            os.close(fd)
        raise Crash("power lost")

    monkeypatch.setattr(_directory, "apply_to_files", crashing)
    with pytest.raises(Crash):
        model.forget(forgotten)
    monkeypatch.setattr(_directory, "apply_to_files", original)
    model.close()
    assert calls["n"] == 1
    reopened = expunge.open(path)  # recovery applies the committed rewrites
    assert len(reopened.ledger) == 2 and reopened.ledger.entries()[-1].ids == forgotten.tolist()
    _same_data(reopened.training_data, small_digits.drop(forgotten))
    assert reopened.verify() == 2
    reopened.forget(small_digits.ids[[7]])  # and requests go on
    gone = np.append(forgotten, small_digits.ids[7])
    twin = expunge.Retrain(**PARAMS).fit(small_digits.drop(gone))
    assert reopened.fingerprint() == twin.fingerprint()
    reopened.close()


def test_a_tampered_bucket_is_refused_before_anything_changes(small_digits, tmp_path):
    path = tmp_path / "s"
    model = expunge.Retrain(**PARAMS, store=path).fit(small_digits)
    forgotten = small_digits.ids[[10]]
    bucket = _stored_data.data_buckets(forgotten)[0]
    victim = next(p for n, p in _data_files(path).items() if n.startswith(f"train-{bucket:02d}-"))
    content = bytearray(victim.read_bytes())
    content[-1] ^= 1
    victim.write_bytes(bytes(content))
    head = (model.fingerprint(), len(model.ledger))
    with pytest.raises(StoreIntegrityError, match="does not match the digest"):
        model.forget(forgotten)
    assert (model.fingerprint(), len(model.ledger)) == head
    assert victim.read_bytes() == bytes(content)  # not patched, not renamed
    model.close()


def test_a_bucket_mostly_holes_is_written_anew(small_digits, tmp_path):
    path = tmp_path / "s"
    model = expunge.Retrain(**PARAMS, store=path).fit(small_digits)
    bucket = _stored_data.data_buckets(small_digits.ids)
    ids = small_digits.ids[bucket == 0]
    size = next(p.stat().st_size for n, p in _data_files(path).items() if n.startswith("train-00-"))
    half = int(MAX_HOLES * len(ids))
    model.forget(ids[:half - 1])  # just under the limit: holes, same size
    in_place = next(p.stat().st_size for n, p in _data_files(path).items()
                    if n.startswith("train-00-"))
    assert in_place == size
    model.forget(ids[half - 1:half + 2])  # over it: written anew without holes
    compact = next(p.stat().st_size for n, p in _data_files(path).items()
                   if n.startswith("train-00-"))
    assert compact < 0.6 * size
    model.close()
    reopened = expunge.open(path)
    _same_data(reopened.training_data, small_digits.drop(ids[:half + 2]))
    reopened.close()


def _entry(kind, ids):
    return {"kind": kind, "strategy": "t", "guarantee": "exact", "ids": ids,
            "fingerprint_before": None, "fingerprint_after": "f", "samples_retrained": 0,
            "sample_passes": 0, "seconds": 0.0}


def test_stores_that_cannot_rewrite_decline(small_digits, tmp_path):
    """The memory store and a compressed blob decline: the caller writes a new blob."""
    memory = open_store(None, create=True)
    plan_calls = []

    def plan(tensors, metadata, regions):
        plan_calls.append(1)
        return []

    assert memory.rewrite_blob("a", "b", plan) is False
    store = open_store(tmp_path / "s", create=True)
    with store.writing():
        store.ensure_key()
        store.write_manifest({"store_id": "rewrite-test"})
        store.write_blob("data/packed", {"x": torch.zeros(8, 4)}, compress=True)
        store.write_blob("data/plain", {"x": torch.zeros(8, 4)})
        store.commit({"data": []}, _entry("fit", []),
                     live={"data/packed", "data/plain"}, expected=store.committed_head())
        assert store.rewrite_blob("data/packed", "data/packed2", plan) is False
        assert store.rewrite_blob("data/absent", "data/x", plan) is False
        assert not plan_calls
        # a plain committed blob is staged; the target appears only with the commit
        assert store.rewrite_blob(
            "data/plain", "data/plain2",
            lambda t, m, r: row_patches(r, {"x": (8, 4)}, [1], {"x": 0xFF})) is True
        assert not store.has_blob("data/plain2")
        store.commit({"data": []}, _entry("forget", [1]),
                     live={"data/packed", "data/plain2"}, expected=store.committed_head())
        store.collect_garbage({"data/packed", "data/plain2"})
        assert store.list_blobs() == {"data/packed", "data/plain2"}
        x = store.read_blob("data/plain2")[0]["x"]
        assert torch.isnan(x[1]).all() and (x[[0, 2, 3, 4, 5, 6, 7]] == 0).all()
        assert tensor_regions(blob_path(tmp_path / "s", "data/plain2").read_bytes())["x"][1] - \
            tensor_regions(blob_path(tmp_path / "s", "data/plain2").read_bytes())["x"][0] == 128
    store.close()


def test_a_bucket_changed_after_the_handle_hashed_it_is_hashed_again(small_digits, tmp_path,
                                                                    monkeypatch):
    """The rewrite trusts a bucket this handle hashed only while the file's inode, size
    and times are unchanged: an unchanged one is not hashed again, a changed one is, and
    a tampered one is refused."""
    import time

    path = tmp_path / "s"
    expunge.Retrain(**PARAMS, store=path).fit(small_digits).close()
    time.sleep(0.1)  # past the racy window: the stamps read below are trusted
    model = expunge.open(path)
    hashed: list[int] = []
    digest = StoreKey.digest

    def counting(key, purpose, *chunks):
        if purpose == "blob":
            hashed.append(sum(len(memoryview(c)) for c in chunks if not isinstance(c, str)))
        return digest(key, purpose, *chunks)

    monkeypatch.setattr(StoreKey, "digest", counting)
    first, second = small_digits.ids[[10]], small_digits.ids[[11]]
    sizes = {p.stat().st_size for p in _data_files(path).values()}
    model.forget(first)
    # one bucket staged: its new digest only (the old file was hashed when loaded)
    assert len([n for n in hashed if n in sizes]) == 1
    bucket = _stored_data.data_buckets(second)[0]
    victim = next(p for n, p in _data_files(path).items() if n.startswith(f"train-{bucket:02d}-"))
    content = bytearray(victim.read_bytes())
    content[-1] ^= 1
    victim.write_bytes(bytes(content))
    with pytest.raises(StoreIntegrityError, match="does not match the digest"):
        model.forget(second)
    model.close()


@pytest.mark.parametrize("failures", [1, 2])
def test_a_disk_error_after_the_commit_says_the_request_stands_and_is_finished_later(
        small_digits, tmp_path, monkeypatch, failures):
    """The rewrite runs after the commit: a disk error there cannot undo the request. One
    failure is retried before the request returns; two leave it pending with an error that
    says the request is committed (not "nothing was committed"), while the handle serves
    the new state; the next request on the handle finishes it, with Retrain's bits."""
    import errno

    from expunge.exceptions import UnfinishedRewriteError
    from expunge.store import _directory

    path = tmp_path / "s"
    model = expunge.Retrain(**PARAMS, store=path).fit(small_digits)
    forgotten = small_digits.ids[[5, 6, 50, 120]]
    original = _directory.apply_to_files
    calls = {"n": 0}

    def full_disk(moves):
        calls["n"] += 1
        if calls["n"] <= failures:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(moves)

    monkeypatch.setattr(_directory, "apply_to_files", full_disk)
    if failures == 1:
        model.forget(forgotten)
        assert calls["n"] == 2 and not model.store_.pending_rewrite_sources()
    else:
        with pytest.raises(UnfinishedRewriteError, match=r"Request #2 .* is committed") as err:
            model.forget(forgotten)
        assert "nothing was committed" not in str(err.value)
        assert "No space left on device" in str(err.value)
        assert model.receipt(2)["ids"] == sorted(forgotten.tolist())  # signed all the same
        assert model.store_.pending_rewrite_sources() and len(model.ledger) == 2
        _same_data(model.training_data, small_digits.drop(forgotten))  # the new state
        model.forget(small_digits.ids[[7]])  # finishes the rewrite first, then goes on
        forgotten = np.append(forgotten, small_digits.ids[7])
    assert model.verify() == len(model.ledger)
    twin = expunge.Retrain(**PARAMS).fit(small_digits.drop(forgotten))
    assert model.fingerprint() == twin.fingerprint()
    model.close()
    reopened = expunge.open(path)
    _same_data(reopened.training_data, small_digits.drop(forgotten))
    assert reopened.fingerprint() == twin.fingerprint()
    reopened.close()

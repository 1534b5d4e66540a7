"""Tampering with a store is detected: verify() names the first file or entry that fails,
and no request trains from a file whose digest does not match.

Each case edits a store the way an attacker or a bad disk would, then checks that
``verify()`` (on a handle opened before), ``expunge.open`` or the next request refuses,
naming what changed. The ledger-row cases live in ``test_ledger.py``.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import expunge
from expunge.exceptions import (
    LedgerIntegrityError,
    StoreError,
    StoreIntegrityError,
    StoreMismatchError,
)
from expunge.store import load_blob_file
from expunge.store._integrity import StoreKey
from expunge.store._layout import blob_path

PARAMS = dict(model="logreg", n_shards=2, n_slices=3, epochs=2, batch_size=16, lr=0.1,
              momentum=0.9, seed=0)


@pytest.fixture
def fitted(small_digits, tmp_path):
    """A SISA store after one forget, and a handle opened on it before any tampering."""
    path = tmp_path / "s"
    strategy = expunge.SISA(**PARAMS, store=path).fit(small_digits)
    strategy.forget([int(small_digits.ids[0])])
    yield path, strategy
    strategy.close()


def sql(path: Path, statement: str, *args) -> None:
    db = sqlite3.connect(path / "expunge.sqlite")
    db.execute(statement, args)
    db.commit()
    db.close()


def state_of(path: Path) -> dict:
    db = sqlite3.connect(path / "expunge.sqlite")
    value = db.execute("SELECT value FROM state WHERE name = 'current'").fetchone()[0]
    db.close()
    return json.loads(value)


def flip_byte(file: Path, offset: int = -20) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x01
    file.write_bytes(bytes(data))


def blobs(path: Path, prefix: str) -> list[str]:
    return sorted(name for name in state_of(path)["blobs"] if name.startswith(prefix))


def detected(path: Path, strategy, error: type[Exception], message: str) -> None:
    """verify() on the open handle and on a fresh open both refuse, naming the cause."""
    with pytest.raises(error, match=message):
        strategy.verify()
    with pytest.raises(error, match=message):
        expunge.open(path).verify()


# ------------------------------------------------------------------- the ledger
def test_deleting_the_whole_ledger_is_detected(fitted):
    path, strategy = fitted
    sql(path, "DELETE FROM ledger")
    sql(path, "DELETE FROM state WHERE name = 'ledger_head'")
    detected(path, strategy, LedgerIntegrityError, "ledger is empty but the store has a")


def test_deleting_every_row_but_keeping_the_head_is_detected(fitted):
    path, strategy = fitted
    sql(path, "DELETE FROM ledger")
    detected(path, strategy, LedgerIntegrityError, "ledger is empty")


def test_replacing_the_fit_entry_is_detected(fitted):
    path, strategy = fitted
    sql(path, "DELETE FROM ledger WHERE seq = 1")
    sql(path, "UPDATE ledger SET seq = 1 WHERE seq = 2")
    detected(path, strategy, LedgerIntegrityError, "entry 1 is a 'forget', not the store's fit")


def test_a_ledger_of_another_store_is_detected(fitted, small_digits, tmp_path):
    path, strategy = fitted
    strategy.close()
    other = tmp_path / "other"
    twin = expunge.SISA(**PARAMS, store=other).fit(small_digits)
    twin.forget([int(small_digits.ids[0])])
    twin.close()
    (path / "expunge.sqlite").write_bytes((other / "expunge.sqlite").read_bytes())
    for suffix in ("-wal", "-shm"):
        (path / f"expunge.sqlite{suffix}").unlink(missing_ok=True)
    # its committed state names another manifest digest (keyed with the other store's key)
    with pytest.raises(LedgerIntegrityError, match="manifest.json was modified"):
        expunge.open(path)


def test_a_rewritten_head_without_the_key_is_detected(fitted):
    path, strategy = fitted
    db = sqlite3.connect(path / "expunge.sqlite")
    anchor = json.loads(db.execute(
        "SELECT value FROM state WHERE name = 'ledger_head'").fetchone()[0])
    db.close()
    anchor["mac"] = "0" * 64
    sql(path, "UPDATE state SET value = ? WHERE name = 'ledger_head'", json.dumps(anchor))
    detected(path, strategy, LedgerIntegrityError, "MAC mismatch")


def test_editing_the_committed_state_is_detected(fitted):
    path, strategy = fitted
    state = state_of(path)
    name = sorted(state["blobs"])[0]
    state["blobs"][name] = "f" * 64
    sql(path, "UPDATE state SET value = ? WHERE name = 'current'", json.dumps(state,
                                                                              sort_keys=True))
    detected(path, strategy, StoreIntegrityError, "state_digest mismatch")


# -------------------------------------------------------------------- the files
def test_a_flipped_byte_in_an_intermediate_checkpoint_is_detected_and_never_trained_from(
        fitted, small_digits):
    path, strategy = fitted
    # an id of slice 2 of shard 0: its request resumes from shard 0's block-1 checkpoint
    plan = strategy._plans(strategy.training_data)[0]
    target = int(plan.blocks[2][0])
    (resume_from,) = blobs(path, "ckpt/sub-000/block-001-")
    flip_byte(blob_path(path, resume_from))
    detected(path, strategy, StoreIntegrityError, f"{resume_from}.*does not match")
    before = (strategy.fingerprint(), strategy.ledger.head)
    with pytest.raises(StoreIntegrityError, match="block-001.*nothing is trained from it"):
        strategy.forget([target])
    assert (strategy.fingerprint(), strategy.ledger.head) == before


def test_a_flipped_byte_in_the_training_data_is_detected(fitted):
    path, strategy = fitted
    name = blobs(path, "data/")[3]
    flip_byte(blob_path(path, name))
    detected_at_open = pytest.raises(StoreIntegrityError, match=f"{name}.*does not match")
    with pytest.raises(StoreIntegrityError, match=f"{name}.*does not match"):
        strategy.verify()
    with detected_at_open:
        expunge.open(path)  # reopening reads (and checks) the data: nothing trains from it


def test_a_forgotten_sample_written_back_into_a_data_blob_is_detected(fitted, small_digits):
    path, strategy = fitted
    gone = int(small_digits.ids[0])
    row = small_digits.select([gone])
    from expunge.strategies._stored_data import data_buckets

    bucket = int(data_buckets(np.array([gone]))[0])
    name = blobs(path, f"data/train-{bucket:02d}-")[0]
    file = blob_path(path, name)
    tensors, metadata = load_blob_file(file)  # a compressed safetensors file
    tensors = {"X": torch.cat([tensors["X"], row.X]), "y": torch.cat([tensors["y"], row.y]),
               "ids": torch.cat([tensors["ids"], torch.tensor([gone])]),
               "positions": torch.cat([tensors["positions"], torch.tensor([0])])}
    save_file(tensors, str(file), metadata=metadata)
    detected(path, strategy, StoreIntegrityError, f"{name}.*does not match")


def test_the_retained_data_must_be_the_fitted_data_minus_the_forgotten(fitted, small_digits):
    """The semantic check behind the digests: even a consistent rewrite of the data blobs
    and their digests (by someone holding the key) cannot hide a forgotten id."""
    from expunge.strategies._stored_data import check_training_ids

    path, strategy = fitted
    fit = strategy.ledger.entries()[0]
    forgotten = dict(strategy.ledger.forgotten())
    retained = strategy.training_data.ids
    check_training_ids(strategy.store_, retained, forgotten,
                       n_samples=fit.details["n_samples"], digest=fit.details["ids_digest"])
    back = np.concatenate([retained, list(forgotten)])
    with pytest.raises(StoreIntegrityError, match="ledger lists them as forgotten"):
        check_training_ids(strategy.store_, back, forgotten,
                           n_samples=fit.details["n_samples"], digest=fit.details["ids_digest"])
    with pytest.raises(StoreIntegrityError, match="not the data the store was fitted on"):
        check_training_ids(strategy.store_, retained[1:], forgotten,
                           n_samples=fit.details["n_samples"], digest=fit.details["ids_digest"])


def test_a_truncated_blob_is_detected(fitted):
    path, strategy = fitted
    name = blobs(path, "ckpt/sub-001/")[-1]
    file = blob_path(path, name)
    file.write_bytes(file.read_bytes()[:100])
    detected(path, strategy, StoreIntegrityError, f"{name}")


def test_a_deleted_blob_is_detected(fitted):
    path, strategy = fitted
    name = blobs(path, "ckpt/sub-000/")[0]
    blob_path(path, name).unlink()
    with pytest.raises(StoreIntegrityError, match=f"{name}.*missing"):
        strategy.verify()


def test_editing_the_manifest_is_detected(fitted):
    path, strategy = fitted
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["params"]["seed"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreIntegrityError, match="manifest.json was modified"):
        strategy.verify()
    with pytest.raises(StoreIntegrityError, match="manifest.json was modified"):
        expunge.open(path)


def test_a_manifest_without_params_is_refused_cleanly(fitted):
    path, _ = fitted
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["params"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="malformed.*'params'"):
        expunge.open(path)


def test_a_replaced_or_missing_key_is_detected(fitted):
    path, strategy = fitted
    (path / "secret.key").write_bytes(StoreKey.generate().to_bytes())
    with pytest.raises(StoreIntegrityError):
        expunge.open(path)
    (path / "secret.key").unlink()
    with pytest.raises(StoreIntegrityError, match="secret.key.*missing"):
        expunge.open(path)


def test_a_changed_model_in_memory_is_detected(fitted):
    path, strategy = fitted
    module = strategy.fitted_.submodels[0].module
    with torch.no_grad():
        next(module.parameters()).add_(1.0)
    with pytest.raises(LedgerIntegrityError, match="fingerprint"):
        strategy.verify()


def test_a_recorded_parameter_cannot_be_overridden_on_open(fitted):
    path, _ = fitted
    with pytest.raises(StoreMismatchError, match="seed is recorded.*seed=0.*got seed=99"):
        expunge.open(path, seed=99)
    with pytest.raises(StoreMismatchError, match="threads_per_job is recorded"):
        expunge.open(path, threads_per_job=2)
    reopened = expunge.open(path, seed=0, executor="serial", n_jobs=1, show_progress=False)
    assert reopened.seed == 0 and reopened.verify() == 2
    reopened.close()


def test_memory_store_detects_a_mutated_checkpoint(small_digits):
    """In memory too: a stored tensor changed in place (an aliasing bug) fails verify."""
    strategy = expunge.SISA(**PARAMS).fit(small_digits)
    assert strategy.verify() == 1
    name = sorted(b for b in strategy.store_.list_blobs() if b.startswith("ckpt/"))[0]
    tensors, _ = strategy.store_._blobs[name]
    next(t for t in tensors.values() if t.is_floating_point()).add_(1.0)
    with pytest.raises(StoreIntegrityError, match=name):
        strategy.verify()


def test_process_workers_never_train_from_a_changed_checkpoint(fitted):
    """Workers cannot check digests (no key): the caller checks the checkpoints every chain
    resumes from before any job runs."""
    path, strategy = fitted
    strategy.close()
    reopened = expunge.open(path, executor="process", n_jobs=2)
    plans = reopened._plans(reopened.training_data)
    targets = [int(plan.blocks[1][0]) for plan in plans]  # block 1 of both shards
    changed = blobs(path, "ckpt/sub-001/block-000-")[0]
    flip_byte(blob_path(path, changed))
    before = (reopened.fingerprint(), reopened.ledger.head)
    with pytest.raises(StoreIntegrityError, match=f"{changed}.*does not match"):
        reopened.forget(targets)
    assert (reopened.fingerprint(), reopened.ledger.head) == before
    reopened.close()


def test_worker_stores_only_read_and_write_blobs(fitted):
    """A worker's view of a store has the blob methods and nothing else: no commit, delete,
    lock, recovery, state or key (it cannot bypass the caller's write lock)."""
    from expunge.store import WorkerDirectoryStore, WorkerMemoryStore, manifest_digest_of

    path, strategy = fitted
    worker = WorkerDirectoryStore(path, manifest_digest_of(strategy.store_.read_manifest()))
    name = blobs(path, "ckpt/")[0]
    tensors, metadata = worker.read_blob(name)
    worker.write_blob("ckpt/sub-009/block-000-new", tensors, metadata)
    assert worker.has_blob("ckpt/sub-009/block-000-new")
    memory = WorkerMemoryStore({name: (tensors, metadata)})
    for store in (worker, memory):
        for method in ("commit", "delete_blob", "collect_garbage", "recover", "try_recover",
                       "writing", "snapshot", "read_state", "ensure_key", "key", "list_blobs"):
            assert not hasattr(store, method), method

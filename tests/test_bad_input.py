"""Every class of bad input is refused cleanly: an ExpungeError naming the value and the fix,
and nothing changes (model, ledger, store files).

The cases are tables, one row per class of bad input, so that the count of classes tried
and refused is the number of rows (see the closing note of issue 11). Ledger tampering and
concurrent writers have their own files (tests/store/test_integrity.py, test_concurrency.py).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import expunge
from expunge.cli import main
from expunge.data import IndexedDataset
from expunge.exceptions import (
    AlreadyForgottenError,
    DatasetError,
    ExpungeError,
    InvalidParameterError,
    InvalidRequestError,
    NotFittedError,
    StoreError,
    StoreIntegrityError,
    StoreMismatchError,
    UnknownSampleError,
)

PARAMS = dict(model="logreg", n_shards=2, n_slices=2, epochs=2, batch_size=16, lr=0.1,
              momentum=0.9, seed=0)


def disk_state(path: Path) -> tuple:
    """What a refused input must not change on disk: ledger, state, every store file."""
    db = sqlite3.connect(f"file:{path / 'expunge.sqlite'}?mode=ro", uri=True)
    ledger = db.execute("SELECT hash FROM ledger ORDER BY seq").fetchall()
    state = db.execute("SELECT name, value FROM state ORDER BY name").fetchall()
    db.close()
    files = {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in path.rglob("*") if p.is_file()
             and not p.name.startswith("expunge.sqlite") and p.suffix != ".lock"}
    return ledger, state, files


def memory_state(strategy) -> tuple:
    return (strategy.fingerprint(), strategy.ledger.head, len(strategy.ledger),
            strategy.training_data.ids.tolist(), sorted(strategy.store_.list_blobs()))


@pytest.fixture
def store(small_digits, tmp_path):
    """A SISA store after one forget (id of position 0), and its open handle."""
    path = tmp_path / "s"
    strategy = expunge.SISA(**PARAMS, store=path).fit(small_digits)
    strategy.forget([int(small_digits.ids[0])])
    yield path, strategy
    strategy.close()


def refused(call, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as caught:
        call()
    assert isinstance(caught.value, ExpungeError)


# ------------------------------------------------------------------ forget requests
def _few_classes(data: IndexedDataset) -> list[int]:
    """Every retained id except those of class 0: would leave one class."""
    return [int(i) for i in data.ids if int(data.y[data.positions([i])[0]]) != 0]


REQUESTS = [
    ("empty", lambda d: [], InvalidRequestError, "empty"),
    ("unknown id", lambda d: [99_999_999], UnknownSampleError, "99999999"),
    ("already forgotten", lambda d: [int(d.ids[0])], AlreadyForgottenError, "already forgotten"),
    ("fraction", lambda d: [1.5], InvalidRequestError, "1.5"),
    ("integral float", lambda d: [3.0], InvalidRequestError, "3.0"),
    ("float array", lambda d: np.array([3.0, 4.0]), InvalidRequestError, "dtype float64"),
    ("string id", lambda d: ["7"], InvalidRequestError, "must be integers"),
    ("string request", lambda d: "7", InvalidRequestError, "the string '7'"),
    ("bool", lambda d: [True], InvalidRequestError, "True"),
    ("bool array", lambda d: np.array([True, False]), InvalidRequestError, "dtype bool"),
    ("duplicates", lambda d: [3, 3], InvalidRequestError, r"\[3\] appear more than once"),
    ("known and unknown", lambda d: [5, 99_999_998], UnknownSampleError, "99999998"),
    ("None", lambda d: None, InvalidRequestError, "got None"),
    ("not iterable", lambda d: object(), InvalidRequestError, "sequence of integers"),
    ("id >= 2**63", lambda d: [2**63], InvalidRequestError, "int64.*9223372036854775808"),
    ("id < -2**63", lambda d: [-(2**63) - 1], InvalidRequestError, "int64"),
    ("uint64 above int64", lambda d: np.array([2**64 - 1], dtype=np.uint64),
     InvalidRequestError, "int64.*18446744073709551615"),
    ("nested lists", lambda d: [[1, 2]], InvalidRequestError, "must be integers"),
    ("every remaining sample", lambda d: [int(i) for i in d.ids[1:]], InvalidRequestError,
     "forgets all 299 remaining samples.*delete the store folder"),
    ("leaves one class", lambda d: _few_classes(d)[1:] if int(d.y[0]) != 0
     else _few_classes(d), InvalidRequestError, "only class 0"),
]


@pytest.mark.parametrize("ids, error, message",
                         [pytest.param(*row[1:], id=row[0]) for row in REQUESTS])
def test_bad_requests_change_nothing(store, small_digits, ids, error, message):
    path, strategy = store
    before_memory, before_disk = memory_state(strategy), disk_state(path)
    refused(lambda: strategy.forget(ids(small_digits)), error, message)
    assert memory_state(strategy) == before_memory
    assert disk_state(path) == before_disk
    assert strategy.verify() == 2


def test_forget_before_fit_is_refused():
    refused(lambda: expunge.SISA(**PARAMS).forget([1]), NotFittedError, "not fitted yet")


# ------------------------------------------------------------------ datasets
def _xy(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype(np.float32), np.arange(n) % 2


DATASETS = [
    ("X and y lengths differ", lambda: IndexedDataset(np.zeros((5, 2)), [0, 1]), "same number"),
    ("y not 1-D", lambda: IndexedDataset(np.zeros((4, 2)), np.zeros((4, 2))), "must be 1-D"),
    ("negative label", lambda: IndexedDataset(np.zeros((2, 2)), [0, -1]), ">= 0"),
    ("fractional label", lambda: IndexedDataset(np.zeros((2, 2)), [0.0, 0.5]), "integer"),
    ("NaN label", lambda: IndexedDataset(np.zeros((2, 2)), [0.0, np.nan]), "NaN"),
    ("inf label", lambda: IndexedDataset(np.zeros((2, 2)), [0.0, np.inf]), "inf"),
    ("label >= n_classes", lambda: IndexedDataset(np.zeros((2, 2)), [0, 3], n_classes=2),
     "n_classes=2"),
    ("duplicate ids", lambda: IndexedDataset(np.zeros((2, 2)), [0, 1], ids=[4, 4]), "unique"),
    ("ids length", lambda: IndexedDataset(np.zeros((2, 2)), [0, 1], ids=[4]), "2 samples"),
    ("float ids", lambda: IndexedDataset(np.zeros((2, 2)), [0, 1], ids=[0.5, 1.5]),
     "integers"),
    ("ids above int64", lambda: IndexedDataset(np.zeros((2, 2)), [0, 1], ids=[0, 2**64 - 1]),
     "int64"),
    ("object X", lambda: IndexedDataset(np.array([[object()], [object()]]), [0, 1]),
     "numeric"),
]


@pytest.mark.parametrize("build, message", [pytest.param(*r[1:], id=r[0]) for r in DATASETS])
def test_bad_datasets_are_refused(build, message):
    refused(build, ExpungeError, message)


def _with(X: np.ndarray, y: np.ndarray) -> IndexedDataset:
    return IndexedDataset(X, y)


FITS = [
    ("NaN features", lambda: _with(*_nan()), DatasetError, r"NaN or infinite .*positions \[3\]"),
    ("inf features", lambda: _with(*_inf()), DatasetError, "NaN or infinite"),
    ("zero samples", lambda: IndexedDataset(np.zeros((0, 4)), np.zeros(0, dtype=int)),
     InvalidParameterError, "empty"),
    ("one class", lambda: IndexedDataset(_xy()[0], np.full(20, 3)), DatasetError,
     "at least 2 classes.*label 3"),
    ("not a dataset", lambda: _xy()[0], InvalidParameterError, "expects an IndexedDataset"),
]


def _nan() -> tuple[np.ndarray, np.ndarray]:
    X, y = _xy()
    X[3, 1] = np.nan
    return X, y


def _inf() -> tuple[np.ndarray, np.ndarray]:
    X, y = _xy()
    X[7, 0] = -np.inf
    return X, y


@pytest.mark.parametrize("data, error, message", [pytest.param(*r[1:], id=r[0]) for r in FITS])
@pytest.mark.parametrize("name", expunge.available_strategies())
def test_bad_training_data_is_refused_before_a_store_exists(name, data, error, message,
                                                           tmp_path):
    cls = expunge.get_strategy(name)
    refused(lambda: cls(**cls._test_params(), store=tmp_path / "s").fit(data()), error, message)
    assert not (tmp_path / "s").exists()


def test_non_finite_inputs_to_predict_are_refused(store):
    _, strategy = store
    X = np.zeros((3, 64), dtype=np.float32)
    X[1, 2] = np.nan
    refused(lambda: strategy.predict_proba(X), DatasetError, r"NaN or infinite.*\[1\]")


# ------------------------------------------------------------------ parameters, paths
def test_invalid_parameters_are_refused(small_digits, tmp_path):
    refused(lambda: expunge.SISA(**{**PARAMS, "n_shards": 0}).fit(small_digits),
            InvalidParameterError, "'n_shards' parameter of SISA")
    refused(lambda: expunge.SISA(**{**PARAMS, "epochs": "3"}).fit(small_digits),
            InvalidParameterError, "'epochs'.*'3'")


@pytest.mark.parametrize("store_arg", ["", "  ", "."], ids=["empty", "blank", "dot"])
def test_a_store_that_is_not_a_folder_path_is_refused(small_digits, store_arg, tmp_path,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(lambda: expunge.SISA(**PARAMS, store=store_arg).fit(small_digits),
            InvalidParameterError, "not a store folder")
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder


def test_a_store_path_that_is_a_file_is_refused(small_digits, tmp_path):
    target = tmp_path / "file"
    target.write_text("mine")
    refused(lambda: expunge.SISA(**PARAMS, store=target).fit(small_digits), StoreError,
            "is a file, not a store folder")
    refused(lambda: expunge.SISA(**PARAMS, store=target / "sub").fit(small_digits),
            StoreError, "Cannot create the store folder.*not a folder")
    assert target.read_text() == "mine"


def test_a_data_dependent_parameter_error_can_be_retried_with_the_fix(small_digits, tmp_path):
    path = tmp_path / "p"
    refused(lambda: expunge.PUMA(model="mlp", model_params={"hidden_sizes": [256]},
                                 solver="cholesky", epochs=1, store=path).fit(small_digits),
            InvalidParameterError, "solver='cholesky' needs a dense")
    fixed = expunge.PUMA(model="logreg", solver="cholesky", epochs=1, store=path)
    assert fixed.fit(small_digits).verify() == 1  # the uncommitted store is taken over
    fixed.close()


# ------------------------------------------------------------------ open
def tiny(input_shape, n_classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, n_classes))


def other(input_shape, n_classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, n_classes))


OPENS = [
    ("recorded override", {"seed": 99}, StoreMismatchError, "seed is recorded"),
    ("unknown parameter", {"bogus": 1}, InvalidParameterError, "no parameter 'bogus'"),
    ("store override", {"store": "/elsewhere"}, InvalidParameterError, "store="),
    ("bad runtime value", {"n_jobs": 0}, InvalidParameterError, "'n_jobs'"),
]


@pytest.mark.parametrize("overrides, error, message", [pytest.param(*r[1:], id=r[0])
                                                       for r in OPENS])
def test_bad_overrides_on_open_are_refused(store, overrides, error, message):
    path, _ = store
    before = disk_state(path)
    refused(lambda: expunge.open(path, **overrides), error, message)
    assert disk_state(path) == before


def test_a_custom_callable_must_be_the_recorded_one(small_digits, tmp_path):
    params = {k: v for k, v in PARAMS.items() if k not in ("n_shards", "n_slices", "model")}
    expunge.Retrain(tiny, **params, store=tmp_path / "r").fit(small_digits).close()
    refused(lambda: expunge.open(tmp_path / "r"), StoreMismatchError, "custom model.*pass it")
    refused(lambda: expunge.open(tmp_path / "r", model=other), StoreMismatchError,
            r"fitted with model=.*:tiny, but model=.*:other was passed")
    assert expunge.open(tmp_path / "r", model=tiny).verify() == 1


# ------------------------------------------------------------------ store files
def test_a_folder_that_is_not_a_store_is_refused(tmp_path):
    refused(lambda: expunge.open(tmp_path), StoreError, "not an expunge store")
    refused(lambda: expunge.open(tmp_path / "missing"), StoreError, "not an expunge store")


def test_a_garbage_database_is_refused(store):
    path, strategy = store
    strategy.close()
    for suffix in ("-wal", "-shm"):
        (path / f"expunge.sqlite{suffix}").unlink(missing_ok=True)
    (path / "expunge.sqlite").write_bytes(b"this is not a database" * 100)
    refused(lambda: expunge.open(path), StoreError, "expunge.sqlite.*not a database")


def test_a_database_without_expunge_tables_is_refused(store):
    path, strategy = store
    strategy.close()
    for name in ("expunge.sqlite", "expunge.sqlite-wal", "expunge.sqlite-shm"):
        (path / name).unlink(missing_ok=True)
    sqlite3.connect(path / "expunge.sqlite").execute("CREATE TABLE t (x)").connection.close()
    refused(lambda: expunge.open(path), StoreError, "without expunge's tables")


def test_a_manifest_that_is_not_json_is_refused(store):
    path, _ = store
    (path / "manifest.json").write_text("{not json")
    refused(lambda: expunge.open(path), StoreError, "manifest.json is not a readable manifest")


def test_a_store_of_the_previous_format_gets_a_clear_error(store):
    path, _ = store
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    refused(lambda: expunge.open(path), StoreMismatchError,
            "format version 1.*not migrated.*refit into a new store")


def test_a_truncated_checkpoint_is_refused_on_open(store):
    path, _ = store
    last = sorted((path / "blobs" / "ckpt" / "sub-001").iterdir())[-1]
    last.write_bytes(last.read_bytes()[:50])
    refused(lambda: expunge.open(path), StoreIntegrityError, last.name)


def test_a_full_disk_while_writing_blobs_changes_nothing(store, small_digits, monkeypatch):
    path, strategy = store
    before_memory, before_disk = memory_state(strategy), disk_state(path)

    def full(target, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr("expunge.store._atomic.write_all", full)
    refused(lambda: strategy.forget([int(small_digits.ids[1])]), StoreError,
            "No space left on device.*the disk is full")
    monkeypatch.undo()
    assert memory_state(strategy) == before_memory
    assert disk_state(path) == before_disk
    assert not list(path.rglob("*.tmp"))
    strategy.forget([int(small_digits.ids[1])])  # and the retry works once there is space
    assert strategy.verify() == 3


def test_a_full_database_at_commit_changes_nothing(store, small_digits):
    path, strategy = store
    before_memory, before_disk = memory_state(strategy), disk_state(path)
    db = strategy.store_._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # the database may not grow: "disk full"
    refused(lambda: strategy.forget([int(i) for i in small_digits.ids[1:120]], tag="x" * 50_000),
            StoreError, "full.*nothing was committed")
    db.execute("PRAGMA max_page_count = 1073741823")
    # the model, the ledger and the committed state are as they were; the files the request
    # wrote stay as orphans (a retry reuses them, the next commit or recovery deletes them)
    assert memory_state(strategy)[:4] == before_memory[:4]
    assert disk_state(path)[:2] == before_disk[:2]
    assert strategy.verify() == 2
    strategy.forget([int(small_digits.ids[1])])
    assert strategy.verify() == 3
    assert strategy.store_.list_blobs() == set(strategy.store_.read_state()["blobs"])


# ------------------------------------------------------------------ the CLI
def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert err.startswith("expunge: error:") and err.count("\n") == 1, err
    assert message in err or __import__("re").search(message, err), err


def test_cli_ids_outside_int64(store, capsys):
    path, _ = store
    one_line_error(*run(capsys, "forget", "--store", str(path), "--ids", str(2**63)),
                   "must fit in int64")


def test_cli_fit_into_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    one_line_error(*run(capsys, "fit", "--strategy", "retrain", "--store", str(target),
                        "--model", "logreg", "--epochs", "1", "--quiet"), "is a file")


def test_cli_garbage_database(store, capsys):
    path, strategy = store
    strategy.close()
    for suffix in ("-wal", "-shm"):
        (path / f"expunge.sqlite{suffix}").unlink(missing_ok=True)
    (path / "expunge.sqlite").write_bytes(os.urandom(8192))
    one_line_error(*run(capsys, "ledger", "--store", str(path), "--verify"), "not a database")


def test_cli_manifest_without_params(store, capsys):
    path, _ = store
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["params"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(*run(capsys, "forget", "--store", str(path), "--ids", "5"),
                   "malformed.*'params'")


def test_cli_negative_timeout(store, capsys):
    path, _ = store
    with pytest.raises(SystemExit) as exit_:
        main(["forget", "--store", str(path), "--ids", "5", "--timeout", "-1"])
    assert exit_.value.code == 2
    assert ">= 0 seconds" in capsys.readouterr().err


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_cli_disk_full_for_real(small_digits, tmp_path):
    """A real OS error (the file size limit: writes fail with EFBIG) in a child process.

    The limit (40 kB) lets SQLite's 32 kB shared-memory file exist but not a checkpoint of
    a 256-unit MLP (~130 kB), the first file the request writes.
    """
    path = tmp_path / "s"
    params = {**PARAMS, "model": "mlp", "model_params": {"hidden_sizes": [256]}}
    expunge.SISA(**params, store=path).fit(small_digits).close()
    before = disk_state(path)
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000)); "
        "from expunge.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = _python("-c", code, "forget", "--store", str(path), "--ids", "3", "--quiet")
    one_line_error(done.returncode, done.stderr, "File too large")
    assert disk_state(path) == before
    reopened = expunge.open(path)
    assert reopened.verify() == 1
    reopened.close()


def _make_read_only(path: Path) -> bool:
    """Make a store unwritable for this user: modes, or (root ignores modes) the immutable
    attribute. False if neither is possible here."""
    files = [path, *path.rglob("*")]
    if os.geteuid() != 0:
        for p in files:
            p.chmod(p.stat().st_mode & ~0o222)
        return True
    done = subprocess.run(["chattr", "+i", *map(str, files)], capture_output=True)
    return done.returncode == 0


def _make_writable(path: Path) -> None:
    files = [path, *path.rglob("*")]
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", *map(str, files)], capture_output=True)
    else:
        for p in files:
            p.chmod(p.stat().st_mode | 0o200)


def test_cli_read_only_store(small_digits, tmp_path, capsys):
    """A store the user may read but not write: reading works, requests fail cleanly."""
    path = tmp_path / "s"
    expunge.SISA(**PARAMS, store=path).fit(small_digits).close()
    before = disk_state(path)
    if not _make_read_only(path):
        pytest.skip("cannot make a folder read-only for root here (no chattr)")
    try:
        one_line_error(*run(capsys, "forget", "--store", str(path), "--ids", "3", "--quiet"),
                       "write lock.*(Permission denied|Read-only|not permitted)")
        code = main(["ledger", "--store", str(path), "--verify"])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert "ledger verified" in out.out
        reader = expunge.open(path)
        assert reader.verify() == 1 and reader.predict(small_digits.X[:5]).shape == (5,)
        reader.close()
    finally:
        _make_writable(path)
    assert disk_state(path) == before

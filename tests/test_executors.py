"""Executors (issue 7): serial, process pool (and Ray in test_executors_ray.py).

The claim under test: the executor changes where sub-models train, never the bits; a worker
that dies fails the request with WorkerError and leaves model, ledger and store as they were.
The process pool is started once per test worker (~3-5 s on 2 busy cores) and reused.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import expunge
from expunge import parallel
from expunge.data import IndexedDataset
from expunge.exceptions import (
    ExpungeError,
    InvalidParameterError,
    NondeterminismWarning,
    StoreError,
    StoreMismatchError,
    WorkerError,
)
from expunge.parallel import (
    Job,
    ProcessExecutor,
    SerialExecutor,
    make_executor,
    run_chains,
)
from expunge.store import DirectoryStore, WorkerDirectoryStore, manifest_digest_of
from expunge.training import pinned_threads

SMALL = dict(n_shards=3, n_slices=2, epochs=2, batch_size=16, lr=0.1, momentum=0.9, seed=3)


# ----------------------------------------------------------- test-only model factories
_FORWARDS = {"after_switch": 0}


class DyingNet(nn.Module):
    """A linear model that kills its worker process (os._exit) once ``kill_switch`` exists:
    on its ``die_after``-th training forward in that worker. Never in the test process."""

    def __init__(self, n_in: int, n_classes: int, kill_switch: str, driver_pid: int,
                 die_after: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_classes)
        self.kill_switch, self.driver_pid, self.die_after = kill_switch, driver_pid, die_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and os.getpid() != self.driver_pid and os.path.exists(self.kill_switch):
            _FORWARDS["after_switch"] += 1
            if _FORWARDS["after_switch"] >= self.die_after:
                os._exit(17)
        return self.linear(x.flatten(1))


def dying_linear(*, input_shape: tuple[int, ...], n_classes: int, kill_switch: str,
                 driver_pid: int, die_after: int = 20) -> nn.Module:
    return DyingNet(int(np.prod(input_shape)), n_classes, kill_switch, driver_pid, die_after)


def ids_in_first_slice(model: expunge.SISA, data: IndexedDataset, per_shard: int = 1) -> list[int]:
    """``per_shard`` ids in slice 0 of every shard: each shard then retrains in full."""
    shard, slice_ = model.partition(data.ids)
    picked: list[int] = []
    for s in range(model.n_shards):
        picked += data.ids[(shard == s) & (slice_ == 0)][:per_shard].tolist()
    return picked


# ------------------------------------------------------------------ bitwise equality
def _fingerprints(cls: type, params: dict[str, Any], data: IndexedDataset,
                  requests: list[list[int]], runs: list[Any] | None = None,
                  **runtime: Any) -> list[str]:
    """Fingerprints after fit and after each request; ``runs`` collects each one's
    :class:`~expunge.parallel.RunStats` (``None`` where no executor ran)."""
    model = cls(**params, **runtime).fit(data)
    prints = [model.fingerprint()]
    if runs is not None:
        runs.append(model.fitted_.run_stats)
    for ids in requests:
        model.forget(ids)
        prints.append(model.fingerprint())
        if runs is not None:
            runs.append(model.fitted_.run_stats)
    model.close()
    return prints


@pytest.mark.parametrize(("model_name", "store"), [("logreg", "memory"), ("mlp", "directory")])
def test_process_equals_serial_after_fit_and_forgets(digits, tmp_path, model_name, store):
    train, _ = digits
    params = dict(SMALL, model=model_name, model_params={"hidden_sizes": [24]}
                  if model_name == "mlp" else None)
    probe = expunge.SISA(**params)
    first = ids_in_first_slice(probe, train)  # all 3 shards retrain: the pool is used
    requests = [first, [int(train.ids[100])], [int(i) for i in train.ids[200:230]]]
    serial = _fingerprints(expunge.SISA, params, train, requests, executor="serial")
    location = tmp_path / "store" if store == "directory" else None
    runs: list[Any] = []
    process = _fingerprints(expunge.SISA, params, train, requests, executor="process",
                            n_jobs=2, store=location, runs=runs)
    # fit and the first request (all 3 shards) ran on the pool; one id retrains one shard,
    # a single chain, which trains in this process
    assert [None if r is None else (r.executor, r.jobs) for r in runs[:3]] == [
        ("process", 6), ("process", 6), None]
    assert process == serial
    assert len(set(serial)) == len(serial)  # every request changed the model
    # history independence across executors: process forgets == serial fit without the ids
    dropped = train.drop(sorted({i for ids in requests for i in ids}))
    assert expunge.SISA(**params).fit(dropped).fingerprint() == process[-1]


def test_data_goes_through_the_pipe_when_shared_memory_is_short(digits, monkeypatch):
    train, _ = digits
    data = train.select(train.ids[:300])
    from expunge.parallel import _process

    monkeypatch.setattr(_process, "shared_memory_free", lambda: 0)
    shared = ProcessExecutor(n_jobs=2).share((data.X, data.y, data.ids))
    assert isinstance(shared[0], np.ndarray)  # pickled by value, not via /dev/shm
    params = dict(SMALL, model="logreg")
    serial = expunge.SISA(**params).fit(data).fingerprint()
    assert expunge.SISA(**params, executor="process", n_jobs=2).fit(data).fingerprint() == serial


def test_workers_with_other_kernels_are_reported(digits, monkeypatch):
    """A worker whose torch/CPU kernels differ from this process's breaks bitwise claims."""
    from expunge.strategies.exact import _dispatch

    train, _ = digits
    monkeypatch.setattr(_dispatch, "kernel_platform", lambda: "torch 0.0, other kernels")
    model = expunge.SISA(**SMALL, model="logreg", executor="process", n_jobs=2)
    with pytest.warns(NondeterminismWarning, match="other kernels"):
        model.fit(train.select(train.ids[:300]))


def test_process_equals_serial_for_a_convolutional_model(digits):
    train, _ = digits
    data = train.select(train.ids[:400])
    params = dict(SMALL, model="lenet", epochs=2, n_slices=1)
    requests = [ids_in_first_slice(expunge.SISA(**params), data)]
    serial = _fingerprints(expunge.SISA, params, data, requests)
    process = _fingerprints(expunge.SISA, params, data, requests, executor="process", n_jobs=2)
    assert process == serial


def test_arcane_process_equals_serial_when_registered(digits):
    try:
        cls = expunge.get_strategy("arcane")
    except ExpungeError:
        pytest.skip("ARCANE is not registered yet")
    if "executor" not in cls._param_names():
        pytest.skip("ARCANE has no executor parameter")
    train, _ = digits
    data = train.select(train.ids[:600])
    params = cls._test_params()
    requests = [[int(data.ids[0]), int(data.ids[1]), int(data.ids[2])], [int(data.ids[50])]]
    serial = _fingerprints(cls, params, data, requests, executor="serial")
    process = _fingerprints(cls, params, data, requests, executor="process", n_jobs=2)
    assert process == serial


def test_retrain_with_process_executor_trains_in_this_process(digits):
    """One sub-model is one sequential chain: it runs here, and gives the same bits."""
    train, _ = digits
    data = train.select(train.ids[:300])
    params = dict(model="logreg", epochs=2, batch_size=16, lr=0.1, seed=1)
    with_pool = expunge.Retrain(**params, executor="process").fit(data)
    assert with_pool.fitted_.run_stats is None  # no job was sent to a pool
    assert with_pool.fingerprint() == expunge.Retrain(**params).fit(data).fingerprint()


def test_callers_thread_count_does_not_change_the_bits(digits):
    """Training is pinned to threads_per_job (1): without the pin, 1 and 2 intra-op threads
    give different weights on this machine, so this test can fail."""
    train, _ = digits
    data = train.select(train.ids[:500])
    params = dict(SMALL, model="mlp", model_params={"hidden_sizes": [64]})
    before = torch.get_num_threads()
    prints = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            prints.append(expunge.SISA(**params).fit(data).fingerprint())
            assert torch.get_num_threads() == threads  # restored after training
    finally:
        torch.set_num_threads(before)
    assert prints[0] == prints[1]


def test_threads_per_job_is_a_recorded_parameter_and_forget_stays_exact(digits, tmp_path):
    """threads_per_job=2 trains with 2 threads in every executor, is recorded in the store
    (a reopen with another value is refused: it would change the bits), and forget is still
    bit-for-bit fit on the retained data at the same thread count."""
    train, _ = digits
    data = train.select(train.ids[:500])
    params = dict(SMALL, model="mlp", model_params={"hidden_sizes": [64]})
    store = tmp_path / "two-threads"
    two = expunge.SISA(**params, threads_per_job=2, store=store).fit(data)
    gone = [int(i) for i in data.ids[:5]]
    two.forget(gone)
    assert two.fingerprint() == expunge.SISA(**params, threads_per_job=2).fit(
        data.drop(gone)).fingerprint()
    two.close()
    with pytest.raises(StoreMismatchError, match="threads_per_job"):
        expunge.SISA(**params, threads_per_job=1, store=store).fit(data)
    assert expunge.open(store).threads_per_job == 2
    for bad in (0, True, 1.5):
        with pytest.raises(InvalidParameterError, match="threads_per_job"):
            expunge.SISA(**params, threads_per_job=bad).fit(data)


# -------------------------------------------------------------------- worker deaths
def test_killed_worker_fails_cleanly_and_the_store_stays_consistent(digits, tmp_path):
    train, _ = digits
    kill = tmp_path / "kill-switch"
    store = tmp_path / "store"
    params = dict(SMALL, model=dying_linear,
                  model_params={"kill_switch": str(kill), "driver_pid": os.getpid()})

    # 1. a worker dies during fit: nothing is committed, the store has no fit to reopen
    kill.touch()
    model = expunge.SISA(**params, executor="process", n_jobs=2, store=store)
    with pytest.raises(WorkerError, match="died"):
        model.fit(train)
    assert not model.is_fitted
    with pytest.raises(StoreMismatchError, match="no committed fit"):
        expunge.open(store, model=dying_linear)
    kill.unlink()

    # 2. fitting again resumes from the checkpoints written before the crash, exactly
    model = expunge.SISA(**params, executor="process", n_jobs=2, store=store).fit(train)
    reference = expunge.SISA(**params).fit(train)
    assert model.fingerprint() == reference.fingerprint()
    fingerprint, entries = model.fingerprint(), len(model.ledger)
    live = model.store_.list_blobs()

    # 3. a worker dies during forget: model, ledger and committed state are unchanged
    request = ids_in_first_slice(model, train)
    kill.touch()
    with pytest.raises(WorkerError):
        model.forget(request)
    kill.unlink()
    assert model.fingerprint() == fingerprint
    assert len(model.ledger) == entries
    assert model.store_.list_blobs() >= live  # nothing was purged; maybe new orphans
    model.verify()
    model.close()

    # 4. reopening gives the previous state and deletes the orphans
    reopened = expunge.open(store, model=dying_linear, executor="serial")
    assert reopened.fingerprint() == fingerprint
    assert len(reopened.ledger) == entries
    assert reopened.store_.list_blobs() == live
    assert reopened.verify() == entries
    # 5. and the request can be made again: exact, as if the crash never happened
    reopened.forget(request)
    assert reopened.fingerprint() == expunge.SISA(**params).fit(train.drop(request)).fingerprint()
    reopened.close()


def test_unpicklable_model_is_refused_with_a_fix(digits):
    train, _ = digits
    data = train.select(train.ids[:200])
    model = expunge.SISA(**SMALL, model=lambda input_shape, n_classes: nn.Linear(64, n_classes),
                         executor="process", n_jobs=2)
    with pytest.raises(InvalidParameterError, match="module-level function.*executor='serial'"):
        model.fit(data)
    assert not model.is_fitted


def test_missing_ray_is_reported_with_the_install_command(digits, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    train, _ = digits
    model = expunge.SISA(**SMALL, model="logreg", executor="ray")
    with pytest.raises(InvalidParameterError, match=r"expunge\[ray\]"):
        model.fit(train.select(train.ids[:200]))
    with pytest.raises(InvalidParameterError, match=r"expunge\[ray\]"):
        make_executor("ray")


# ------------------------------------------------------------------ executor units
def _threads_and_pid() -> tuple[int, int]:
    return torch.get_num_threads(), os.getpid()


def _fail(message: str) -> None:
    raise ValueError(message)


def test_serial_executor_pins_threads_and_restores_them():
    before = torch.get_num_threads()
    executor = SerialExecutor(threads_per_job=2)
    threads, pid = executor.submit(_threads_and_pid).result()
    assert (threads, pid) == (2, os.getpid())
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="boom"):
        executor.submit(_fail, "boom").result()
    assert torch.get_num_threads() == before


def test_process_executor_runs_jobs_elsewhere_with_pinned_threads():
    executor = ProcessExecutor(n_jobs=2)
    threads, pid = executor.submit(_threads_and_pid).result(timeout=120)
    assert threads == 1 and pid != os.getpid()
    with pytest.raises(ValueError, match="in a worker"):  # a job's own error, as it is
        executor.submit(_fail, "in a worker").result(timeout=120)
    assert executor.submit(_threads_and_pid).result(timeout=120)[1] != os.getpid()


def test_make_executor_validates_its_arguments():
    assert isinstance(make_executor("serial"), parallel.Executor)
    assert make_executor("process", n_jobs=3).n_jobs == 3
    with pytest.raises(InvalidParameterError, match="'thread'"):
        make_executor("thread")
    with pytest.raises(InvalidParameterError, match="n_jobs"):
        make_executor("process", n_jobs=0)
    with pytest.raises(InvalidParameterError, match="threads_per_job"):
        make_executor("serial", threads_per_job=0)
    with pytest.raises(InvalidParameterError, match="fork"):
        ProcessExecutor(start_method="fork")
    with pinned_threads(1):
        assert torch.get_num_threads() == 1


def test_strategy_rejects_an_unknown_executor(digits):
    train, _ = digits
    with pytest.raises(InvalidParameterError, match="executor"):
        expunge.SISA(**SMALL, model="logreg", executor="threads").fit(train)


class _ThreadExecutor:
    """A two-slot executor on threads, to watch the scheduler's invariants."""

    name = "threads"
    threads_per_job = 1

    def __init__(self, n_jobs: int) -> None:
        self.n_jobs = n_jobs
        self.pool = ThreadPoolExecutor(n_jobs)

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        return self.pool.submit(fn, *args)


def test_run_chains_keeps_order_within_chains_and_bounds_concurrency():
    lock = threading.Lock()
    state = {"running": 0, "max": 0}
    in_flight: set[int] = set()
    finished: list[tuple[int, int]] = []

    def job(chain: int, block: int) -> tuple[int, int]:
        with lock:
            assert chain not in in_flight  # never two blocks of one chain at once
            in_flight.add(chain)
            state["running"] += 1
            state["max"] = max(state["max"], state["running"])
        time.sleep(0.01)
        with lock:
            in_flight.discard(chain)
            state["running"] -= 1
        return chain, block

    chains = {k: [Job(job, (k, b)) for b in range(4)] for k in range(5)}

    def on_done(chain: int, index: int, result: tuple[int, int]) -> None:
        assert result == (chain, index)
        finished.append(result)

    stats = run_chains(_ThreadExecutor(2), chains, on_done)
    assert sorted(finished) == [(k, b) for k in range(5) for b in range(4)]
    for k in range(5):
        assert [b for c, b in finished if c == k] == [0, 1, 2, 3]
    assert state["max"] == 2
    assert (stats.executor, stats.slots, stats.jobs) == ("threads", 2, 20)
    assert stats.job_seconds >= 20 * 0.01 and stats.wall_seconds > 0


def _record(label: Any) -> Any:
    return label


def test_run_chains_starts_the_longest_remaining_chain_first():
    order: list[tuple[int, int]] = []
    chains = {0: [Job(_record, (0,), 1.0), Job(_record, (1,), 1.0)], 1: [Job(_record, (0,), 5.0)],
              2: [Job(_record, (3,), 3.0)]}
    run_chains(SerialExecutor(), chains, lambda k, i, label: order.append((k, label)))
    assert order == [(1, 0), (2, 3), (0, 0), (0, 1)]


def _plus_one(value: int, previous: int | None) -> int:
    return value + (previous or 0) + 1


def test_run_chains_pipeline_passes_each_result_to_the_next_job():
    results: dict[int, list[int]] = {0: [], 1: []}
    chains = {k: [Job(_plus_one, (10 * k,)) for _ in range(3)] for k in (0, 1)}
    run_chains(SerialExecutor(), chains, lambda k, i, r: results[k].append(r), pipeline=True)
    assert results == {0: [1, 2, 3], 1: [11, 22, 33]}


def test_planned_offsets_stagger_equal_chains_of_growing_blocks():
    """5 SISA shards of 5 cumulative slices on 2 workers (costs = samples x epochs): plain
    longest-remaining-first leaves the largest blocks of several chains to the end; the
    planned offsets reach a schedule without idle slots (in simulation)."""
    costs = {k: [3.0, 6.0, 12.0, 12.0, 15.0] for k in range(5)}
    ideal = sum(map(sum, costs.values())) / 2
    assert parallel.simulate(costs, 2) > 1.04 * ideal  # 95 % efficiency
    offsets, planned = parallel.plan_offsets(costs, 2)
    assert parallel.simulate(costs, 2, offsets) == pytest.approx(ideal)
    assert planned == pytest.approx(1.0)
    assert parallel.plan_offsets(costs, 2) == (offsets, planned)  # deterministic
    one_slot, _ = parallel.plan_offsets(costs, 1)
    assert set(one_slot.values()) == {0.0}


def test_run_chains_stops_at_the_first_failure():
    started: list[int] = []

    def make(k: int, cost: float) -> Job:
        started.append(k)
        return Job(_fail, ("chain 0 fails",), cost) if k == 0 else Job(_threads_and_pid, (), cost)

    chains = {0: [make(0, 9.0)], 1: [make(1, 1.0)], 2: [make(2, 1.0)]}
    ran: list[int] = []
    with pytest.raises(ValueError, match="chain 0 fails"):
        run_chains(SerialExecutor(), chains, lambda k, i, r: ran.append(k))
    assert ran == []  # chain 0 ran first (most remaining cost) and stopped the run


def _slow_write(path: str) -> str:
    time.sleep(1.5)
    Path(path).write_text("done")
    return path


def test_run_chains_waits_for_running_jobs_after_a_failure(tmp_path):
    """No worker still writes when run_chains raises: running jobs are waited for."""
    marker = tmp_path / "slow-job-finished"
    chains = {0: [Job(_slow_write, (str(marker),), 9.0)], 1: [Job(_fail, ("boom",), 1.0)]}
    with pytest.raises(ValueError, match="boom"):
        run_chains(ProcessExecutor(n_jobs=2), chains)
    assert marker.read_text() == "done"


# ------------------------------------------------------------ worker-side store views
def test_worker_store_refuses_another_store_and_never_commits(digits, tmp_path):
    train, _ = digits
    model = expunge.SISA(**SMALL, model="logreg", store=tmp_path / "a").fit(
        train.select(train.ids[:200]))
    manifest = model.store_.read_manifest()
    model.close()
    digest = manifest_digest_of(manifest or {})
    view = WorkerDirectoryStore(tmp_path / "a", digest)
    view.write_blob("ckpt/test", {"t": torch.ones(2)})
    reader = DirectoryStore(tmp_path / "a", create=False)
    assert reader.has_blob("ckpt/test")
    reader.close()
    assert not hasattr(view, "commit")
    with pytest.raises(StoreError, match="not visible from this worker"):
        WorkerDirectoryStore(tmp_path / "a", "0" * 64)
    with pytest.raises(StoreError, match="not visible from this worker"):
        WorkerDirectoryStore(Path(tmp_path / "missing"), digest)


# ------------------------------------------------------------- the path of a request
#: the engine's and the parallel package's modules: a parallel request crosses each once
_PATH_MODULES = ("expunge.strategies.exact.sharded", "expunge.strategies.exact._plan",
                 "expunge.strategies.exact._dispatch", "expunge.strategies.exact._blocks",
                 "expunge.strategies.exact._model", "expunge.parallel.")


def revisits(stack: list[str]) -> list[str]:
    """Modules of ``_PATH_MODULES`` that a call stack (outermost first) enters twice, with
    another of them in between (consecutive frames of one module count once)."""
    tracked = [m for m in stack if m.startswith(_PATH_MODULES)]
    collapsed = [m for i, m in enumerate(tracked) if i == 0 or tracked[i - 1] != m]
    return sorted({m for m in collapsed if collapsed.count(m) > 1})


def test_revisits_detects_a_round_trip():
    sharded, schedule = _PATH_MODULES[0], "expunge.parallel._schedule"
    assert revisits([sharded, sharded, schedule]) == []
    assert revisits([sharded, schedule, "numpy", sharded]) == [sharded]


class _InlineWorkers(parallel.SerialExecutor):
    """Runs each job through the worker bootstrap, in this process: the call stack then
    holds both sides of a parallel request, the caller's and the worker's."""

    name = "inline"

    def __init__(self, *args: Any) -> None:
        super().__init__(torch.get_num_threads())
        self.n_jobs = 2

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        from expunge.parallel._worker import run_job

        future: Future[Any] = Future()
        future.set_result(run_job(self.threads_per_job, (), fn, *args))
        return future


def test_parallel_forget_visits_each_engine_module_once(digits, monkeypatch):
    """A parallel forget goes down strategy -> engine -> dispatch -> parallel -> worker ->
    blocks and never back up: no engine or parallel module is entered twice on any call
    stack (the caller's loop handles results; the scheduler never calls into it)."""
    import inspect

    from expunge.strategies.exact import _dispatch

    train, _ = digits
    data = train.select(train.ids[:240])
    model = expunge.SISA(**{**SMALL, "epochs": 1}, model="logreg", executor="process").fit(data)
    monkeypatch.setattr(_dispatch, "make_executor", _InlineWorkers)
    seen: set[str] = set()
    found: set[tuple[str, ...]] = set()

    def profile(frame: Any, event: str, arg: Any) -> None:
        name = frame.f_globals.get("__name__", "")
        if event != "call" or not name.startswith(_PATH_MODULES):
            return
        seen.add(name)
        stack = [f.frame.f_globals.get("__name__", "") for f in inspect.stack(0)[::-1]]
        bad = revisits(stack)
        if bad:
            found.add(tuple(bad))

    request = ids_in_first_slice(model, data)
    sys.setprofile(profile)
    try:
        model.forget(request)
    finally:
        sys.setprofile(None)
    assert model.fitted_.run_stats is not None and model.fitted_.run_stats.executor == "inline"
    assert {"expunge.strategies.exact._dispatch", "expunge.parallel._schedule",
            "expunge.parallel._worker", "expunge.strategies.exact._blocks"} <= seen
    assert found == set()

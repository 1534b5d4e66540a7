"""Where the blocks of a build train: in this process, or as jobs on an executor.

The engine (:mod:`~expunge.strategies.exact.sharded`) plans a fit or a forget
(:class:`~expunge.strategies.exact._plan.BuildPlan`); this module trains the plan's chains
and hands back every sub-model it did not reuse:

* ``executor="serial"``, or a plan with a single chain (one sub-model is sequential: a pool
  could not speed it up), trains each sub-model straight through here, with the thread count
  pinned to ``threads_per_job``;
* otherwise every missing block is one job on the executor (:mod:`expunge.parallel`),
  resuming from the previous block's checkpoint as ``forget`` always does, so that workers
  share the last sub-models; this process then loads each final checkpoint.

Both give the same bits: the same computations, with the same thread count, from the same
checkpoints (see ``docs/parallel.md``). The executor parameters are declared here, once, and
read by the engine for every exact strategy.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from expunge._progress import Progress
from expunge._validation import Constraint, Interval, Options
from expunge.data import IndexedDataset
from expunge.exceptions import InvalidParameterError, NondeterminismWarning, StoreError
from expunge.parallel import (
    EXECUTORS,
    Broadcast,
    ChainRun,
    Executor,
    Job,
    RunStats,
    import_ray,
    make_executor,
    preload_in_workers,
)
from expunge.store import DirectoryStore, Store, manifest_digest_of
from expunge.strategies.exact._blocks import (
    BlockHooks,
    BlockJob,
    kernel_platform,
    load_submodel,
    run_block_job,
    train_submodel,
)
from expunge.strategies.exact._model import Submodel
from expunge.strategies.exact._plan import BuildPlan, checkpoint_blob
from expunge.training import pinned_threads

#: the executor parameters of every exact strategy
EXECUTION_CONSTRAINTS: dict[str, list[Constraint]] = {
    "executor": [Options(EXECUTORS)],
    "n_jobs": [None, Interval(int, 1, None)],
    "ray_address": [None, str],
    "threads_per_job": [Interval(int, 1, None)],
}

#: parameters that choose *where* sub-models train, never *what* they compute: runtime
#: parameters (``threads_per_job`` is not one of them: the thread count can change float
#: sums, so it is recorded in the manifest and a reopen with another value is refused)
WHERE_PARAMS = frozenset({"executor", "n_jobs", "ray_address"})

# workers import the strategies (what a job's strategy unpickles into) while they start
preload_in_workers("expunge.strategies")


@dataclass(frozen=True)
class Execution:
    """Where and with how many threads a build's blocks train (the strategy's parameters)."""

    executor: str = "serial"
    n_jobs: int | None = None
    ray_address: str | None = None
    threads_per_job: int = 1


@dataclass
class Trained:
    """The sub-models a build trained or loaded, and how an executor ran them."""

    submodels: dict[int, Submodel]
    run_stats: RunStats | None = None


def train_plan(hooks: BlockHooks, execution: Execution, build: BuildPlan,
               data: IndexedDataset, store: Store, progress: Progress,
               task: int | None) -> Trained:
    """Train every missing block of ``build`` and return each sub-model it did not reuse."""
    chains = build.chains
    if execution.executor == "ray":
        import_ray()  # fail before any training when Ray is missing
    if execution.executor == "serial" or len(chains) < 2:
        with pinned_threads(execution.threads_per_job):
            return Trained({k: train_submodel(hooks, k, build.plans[k], build.keys[k],
                                              build.starts[k], data, store, progress, task)
                            for k in build.todo})
    executor = make_executor(execution.executor, execution.n_jobs, execution.ray_address,
                             execution.threads_per_job)
    try:
        stats = _run_on(executor, hooks, build, data, store, progress, task)
    finally:
        executor.close()
    # the final checkpoints, as a reopen loads them
    return Trained({k: load_submodel(hooks, store, k, build.keys[k], data.input_shape,
                                     data.n_classes, len(build.plans[k].all_ids()))
                    for k in build.todo}, stats)


def _run_on(executor: Executor, hooks: BlockHooks, build: BuildPlan, data: IndexedDataset,
            store: Store, progress: Progress, task: int | None) -> RunStats:
    """Every missing block of the build's chains as a job on ``executor``."""
    strategy = Broadcast(worker_payload(hooks, executor))
    directory = store.location if isinstance(store, DirectoryStore) else None
    manifest = manifest_digest_of(store.read_manifest() or {}) if directory else ""
    # workers read checkpoints without checking digests (they have no key): the ones the
    # chains resume from are committed, so this process checks them before any job runs
    for k in build.chains:
        start = build.starts[k]
        if start > 0:
            store.check_blob(checkpoint_blob(k, start - 1, build.keys[k][start - 1]))
    jobs: dict[int, list[Job]] = {}
    for k in build.chains:
        plan, keys, start = build.plans[k], build.keys[k], build.starts[k]
        # this sub-model's rows only, sent once per sub-model (in position order: the worker
        # selects each block's ids from them, and a mask is faster than select)
        sub = data.where(np.isin(data.ids, plan.all_ids()))
        rows = executor.share((sub.X, sub.y, sub.ids))
        start_blobs = {}
        if directory is None and start > 0:  # memory store: the caller sends the checkpoint
            name = checkpoint_blob(k, start - 1, keys[start - 1])
            start_blobs[name] = store.read_blob(name)
        jobs[k] = [Job(run_block_job, (strategy, BlockJob(
            k, plan, keys, block, data.n_classes, directory, manifest,
            start_blobs if block == start else {}, data.transform.to_dict()), rows),
            build.block_cost(k, block))
            for block in range(start, plan.n_blocks)]
    here, warned = kernel_platform(), set()
    setup = 0.0
    with ChainRun(executor, jobs, pipeline=True) as run:
        for k, index, result in run:
            block = build.starts[k] + index
            for name, (tensors, metadata) in result.blobs.items():
                store.write_blob(name, tensors, metadata)
            name = checkpoint_blob(k, block, build.keys[k][block])
            if not store.has_blob(name):
                raise StoreError(
                    f"A worker reported checkpoint {name} but the store {store.location!r} "
                    "does not have it: the store path is not shared with the workers."
                )
            setup += result.setup_seconds
            progress.advance(task, build.plans[k].epochs[block])
            if result.platform != here and result.platform not in warned:
                warned.add(result.platform)
                warnings.warn(
                    f"A worker trained with {result.platform}, this process runs "
                    f"{here}: other kernels may give other bits, so fit and forget are no "
                    "longer bit-for-bit reproducible. Use nodes of one CPU type and one torch "
                    "version (see docs/parallel.md).", NondeterminismWarning, stacklevel=2)
    assert run.stats is not None
    return replace(run.stats, setup_seconds=setup)


def worker_payload(hooks: BlockHooks, executor: Executor) -> bytes:
    """The strategy's parameters, serialized for workers: a new, unfitted instance built
    from them (no fitted state, store, data or cache travels).

    Raises:
        InvalidParameterError: a parameter the workers could not load (a lambda for the
            process pool, a function defined in an interactive session), naming it.
    """
    params = hooks.get_params()
    clone = type(hooks)(**params)
    main = sys.modules.get("__main__")
    if executor.name == "process" and not hasattr(main, "__file__"):
        for key, value in params.items():
            if callable(value) and getattr(value, "__module__", None) == "__main__":
                raise InvalidParameterError(
                    f"{key}={value!r} is defined in an interactive session, which worker "
                    "processes cannot import. Define it in a module (a .py file) and import "
                    "it, or use executor='serial' (or 'ray', which sends it by value)."
                )
    try:
        return executor.dumps(clone)
    except Exception as err:
        culprit = next((f"{key}={value!r}" for key, value in vars(clone).items()
                        if not _pickles(executor, value)), "a parameter")
        raise InvalidParameterError(
            f"executor={executor.name!r} sends the strategy to worker processes, but "
            f"{culprit} cannot be pickled ({err}). Use a module-level function (def ...) "
            "instead of a lambda or a local function, or use executor='serial'."
        ) from err


def _pickles(executor: Executor, value: Any) -> bool:
    try:
        executor.dumps(value)
    except Exception:
        return False
    return True

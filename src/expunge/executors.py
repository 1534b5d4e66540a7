"""Where independent sub-models train: in this process, in a local process pool, or on Ray.

The exact strategies (:class:`~expunge.Retrain`, :class:`~expunge.SISA`, ARCANE) train
isolated sub-models, each a chain of checkpointed blocks. An :class:`Executor` runs jobs
(one block of one sub-model each) somewhere; the strategy decides *what* every job computes,
so the choice of executor changes where and how fast, never the bits:

* every job trains with the same number of torch intra-op threads, ``threads_per_job``
  (1 unless the strategy says otherwise), in every executor, the serial one included.
  CPU kernels (matrix products, reductions) may sum in another order with another thread
  count, and on this project's reference machine 1 and 2 threads give different weights
  for every reference model, so the thread count is part of *what* is computed;
* a job resumes from the previous block's checkpoint, which holds the model, the optimizer
  state and nothing random (all randomness is keyed by seed, sub-model, block, epoch and
  sample id), so where a block runs does not matter;
* workers write checkpoints with the store's own atomic code; only the calling process
  commits, so a worker that dies fails the request with :class:`~expunge.exceptions.WorkerError`
  and leaves the committed state as it was.

Executors:

``"serial"``
    Jobs run one after another in the calling process (with the thread count pinned to
    ``threads_per_job`` while they run).
``"process"``
    A local pool of ``n_jobs`` worker processes, each pinned to ``threads_per_job`` threads,
    started through a ``forkserver`` (``spawn`` where there is none; never ``fork``: forking
    a process whose OpenMP threads already run is unsafe). The pool is kept for later
    requests of this process (start-up, 2-5 s, is paid once); :func:`shutdown` ends it.
``"ray"``
    Ray tasks with ``num_cpus=threads_per_job`` on an existing cluster (``address``) or on a
    local one started on first use. Needs the optional extra: ``pip install 'expunge[ray]'``.

Cost: a job sends the pickled strategy parameters (once per worker, then cached), the
plan and chain keys of its sub-model, that sub-model's data rows (shared memory for the
process pool, Ray's object store for Ray: once per sub-model, not per block) and, for an
in-memory store only, the starting checkpoint; see ``docs/parallel.md``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from expunge.exceptions import InvalidParameterError, StoreError, WorkerError
from expunge.store import DirectoryStore, MemoryStore

T = TypeVar("T")

EXECUTORS = ("serial", "process", "ray")
RAY_INSTALL_HINT = "pip install 'expunge[ray]'"


# ------------------------------------------------------------------------ threads
def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


@contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; restore the old count after.

    Training is pinned because the number of intra-op threads can change the bits of CPU
    kernels; the rest of the caller's work (prediction, evaluation) keeps its own setting.
    """
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


_WORKER_READY = False


def _prepare_worker() -> None:
    """Pay a worker's one-time costs before its first job (~2 s on first use).

    The first optimizer built in a process imports torch's lazy modules (torch._dynamo);
    doing it here makes that part of the executor's start-up, where it belongs, rather
    than of the first job.
    """
    global _WORKER_READY
    if _WORKER_READY:
        return
    import expunge.strategies  # noqa: F401  (the modules jobs unpickle into)

    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.0)
    weight.sum().backward()
    optimizer.step()
    _WORKER_READY = True


def _run_pinned(threads: int, fn: Callable[..., T], *args: Any) -> T:
    """The body of every job in a worker: pin the thread count, then run ``fn``."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    _prepare_worker()
    return fn(*args)


# ---------------------------------------------------------------------- protocol
@runtime_checkable
class Executor(Protocol):
    """Runs jobs ``fn(*args)`` and hands back :class:`concurrent.futures.Future` objects.

    A future of a job whose worker died fails with :class:`WorkerError`; an exception the
    job itself raised is re-raised as it is. ``fn`` must be a module-level function (it is
    sent by reference) and ``args`` must pickle.
    """

    #: ``"serial"``, ``"process"`` or ``"ray"``
    name: str
    #: how many jobs may run at the same time
    n_jobs: int
    #: torch intra-op threads every job trains with
    threads_per_job: int

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Start ``fn(*args)``; the serial executor runs it before returning."""
        ...

    def share(self, obj: Any) -> Any:
        """A handle to pass as a top-level job argument in place of a large ``obj`` that
        several jobs read (Ray: one object-store copy; otherwise ``obj`` itself)."""
        ...

    def dumps(self, obj: Any) -> bytes:
        """Serialize ``obj`` the way this executor's workers can load with ``pickle.loads``."""
        ...

    def close(self) -> None:
        """Release what this executor holds for this request (cached pools stay warm)."""
        ...


class _ExecutorBase:
    name = "base"
    n_jobs = 1
    threads_per_job = 1

    def share(self, obj: Any) -> Any:
        return obj

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def close(self) -> None:
        pass

    def __enter__(self) -> _ExecutorBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n_jobs={self.n_jobs}, "
                f"threads_per_job={self.threads_per_job})")


def _check_threads(threads_per_job: int) -> int:
    if isinstance(threads_per_job, bool) or not isinstance(threads_per_job, int) \
            or threads_per_job < 1:
        raise InvalidParameterError(
            f"threads_per_job must be an int >= 1; got {threads_per_job!r}."
        )
    return threads_per_job


def _check_n_jobs(n_jobs: int | None) -> int | None:
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int)
                               or n_jobs < 1):
        raise InvalidParameterError(
            f"n_jobs must be None (one per CPU) or an int >= 1; got {n_jobs!r}."
        )
    return n_jobs


# ------------------------------------------------------------------------ serial
class SerialExecutor(_ExecutorBase):
    """Runs each job in the calling process when it is submitted.

    Cost: no start-up, nothing pickled; one job at a time with ``threads_per_job`` threads.
    """

    name = "serial"

    def __init__(self, threads_per_job: int = 1) -> None:
        self.n_jobs = 1
        self.threads_per_job = _check_threads(threads_per_job)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            with pinned_threads(self.threads_per_job):
                result = fn(*args)
        except Exception as err:
            future.set_exception(err)
        else:
            future.set_result(result)
        return future


# ----------------------------------------------------------------------- process
_POOLS: dict[tuple[int, int, str], ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _init_worker(threads: int) -> None:
    """Process-pool initializer: pin torch threads before the worker runs any kernel."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(1)
    _prepare_worker()


#: what the forkserver imports once, so that each worker forked from it starts ready
#: (torch._dynamo is what the first optimizer imports: ~2 s per fresh interpreter)
FORKSERVER_PRELOAD = ["__main__", "expunge.executors", "expunge.strategies", "torch._dynamo"]


def default_start_method() -> str:
    """``forkserver`` where the platform has it (Linux, macOS), else ``spawn``."""
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _reusable_pool(n_jobs: int, threads: int, start_method: str) -> ProcessPoolExecutor:
    import multiprocessing

    key = (n_jobs, threads, start_method)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None or getattr(pool, "_broken", False) or getattr(pool, "_shutdown_thread",
                                                                       False):
            context = multiprocessing.get_context(start_method)
            if start_method == "forkserver":
                # the server imports torch but runs no kernel (no OpenMP threads yet), so
                # forking workers from it is safe; modules that fail to import are skipped
                context.set_forkserver_preload(FORKSERVER_PRELOAD)
            pool = ProcessPoolExecutor(
                max_workers=n_jobs, mp_context=context,
                initializer=_init_worker, initargs=(threads,),
            )
            _POOLS[key] = pool
        return pool


def _discard_pool(pool: ProcessPoolExecutor) -> None:
    """Forget a broken pool (its manager thread has already terminated its workers)."""
    with _POOLS_LOCK:
        for key, cached in list(_POOLS.items()):
            if cached is pool:
                del _POOLS[key]


def _chain(source: Future[Any], translate: Callable[[BaseException], BaseException]) -> Future[Any]:
    """A future that mirrors ``source`` with its exception passed through ``translate``."""
    target: Future[Any] = Future()

    def copy(done: Future[Any]) -> None:
        if done.cancelled():
            target.cancel()
            return
        error = done.exception()
        if error is not None:
            target.set_exception(translate(error))
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)
    return target


class ProcessExecutor(_ExecutorBase):
    """A local process pool: ``n_jobs`` workers with ``threads_per_job`` torch threads each.

    Workers are forked from a ``forkserver`` (``spawn`` where there is none), never from this
    process with ``fork``: torch's OpenMP threads do not survive a fork. The forkserver
    imports torch, expunge and the caller's ``__main__`` once, so workers start in
    milliseconds after it. The pool is cached per ``(n_jobs, threads_per_job, start_method)``
    and reused by later requests; a pool that lost a worker is discarded.

    Cost: start-up ~2-3 s once per process (one interpreter importing torch; ``spawn``: one
    per worker, in parallel); per job, a pickled job description (the strategy's parameters
    only on a worker's first job) and the data rows through shared memory.
    """

    name = "process"

    def __init__(self, n_jobs: int | None = None, threads_per_job: int = 1,
                 start_method: str | None = None) -> None:
        self.threads_per_job = _check_threads(threads_per_job)
        n_jobs = _check_n_jobs(n_jobs)
        self.n_jobs = n_jobs if n_jobs is not None else max(
            1, available_cpus() // self.threads_per_job)
        start_method = start_method or default_start_method()
        if start_method not in ("spawn", "forkserver"):
            raise InvalidParameterError(
                f"start_method must be 'spawn' or 'forkserver'; got {start_method!r} ('fork' "
                "is unsafe once torch has started its threads)."
            )
        self.start_method = start_method
        self._pool: ProcessPoolExecutor | None = None

    @property
    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = _reusable_pool(self.n_jobs, self.threads_per_job, self.start_method)
        return self._pool

    def share(self, obj: Any) -> Any:
        # torch sends tensors through shared memory (no copy through the pipe); a /dev/shm
        # too small for them (64 MB in a default Docker container) would kill the worker
        # with SIGBUS instead, so then they travel as plain arrays, pickled by value
        needed = _nbytes(obj)
        if needed == 0 or _shared_memory_free() >= 2 * needed:
            return obj
        return _as_arrays(obj)

    def warm_up(self) -> float:
        """Start every worker now; returns the seconds it took (0 if they were running)."""
        started = time.perf_counter()
        futures = [self.submit(_noop) for _ in range(self.n_jobs)]
        for future in futures:
            future.result()
        return time.perf_counter() - started

    def _translate(self, error: BaseException) -> BaseException:
        if isinstance(error, BrokenProcessPool):
            if self._pool is not None:
                _discard_pool(self._pool)
                self._pool = None
            worker_error = WorkerError(
                "A worker process of the process pool died while training a sub-model "
                f"({error}); nothing was committed. Likely causes: the OS killed it for memory "
                "(use a smaller n_jobs), a crash in native code, or os._exit/sys.exit in the "
                "model. Retry the request: checkpoints finished before the failure are reused."
            )
            worker_error.__cause__ = error
            return worker_error
        return error

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        try:
            source = self.pool.submit(_run_pinned, self.threads_per_job, fn, *args)
        except BrokenProcessPool as err:
            failed: Future[T] = Future()
            failed.set_exception(self._translate(err))
            return failed
        return _chain(source, self._translate)


def _noop() -> int:
    return os.getpid()


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return int(obj.numel() * obj.element_size())
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(item) for item in obj)
    return 0


def _as_arrays(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_as_arrays(item) for item in obj)
    return obj


def _shared_memory_free() -> int:
    """Free bytes in /dev/shm (0 where there is none: then nothing goes through it)."""
    import shutil

    try:
        return int(shutil.disk_usage("/dev/shm").free)
    except OSError:
        return 0


# --------------------------------------------------------------------------- ray
_RAY_STATE: dict[str, Any] = {"started_here": False, "task": None, "startup_seconds": 0.0}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise InvalidParameterError(
            f"executor='ray' needs Ray, which is not installed: {RAY_INSTALL_HINT} (or use "
            "executor='process' on one machine)."
        ) from err
    return ray


class RayExecutor(_ExecutorBase):
    """Ray tasks, each with ``num_cpus=threads_per_job``, on a cluster or a local one.

    ``address=None`` joins the cluster this process is already connected to, else the one
    in ``RAY_ADDRESS``, else starts a local cluster (once per process; ~3-5 s). Tasks are
    not retried by Ray (``max_retries=0``): a worker that dies fails the request, which can
    simply be retried and resumes from the checkpoints already written.

    Every node needs the same Python environment (expunge, torch of the same version) and,
    for a directory store, the store path mounted at the same place (see docs/parallel.md).
    """

    name = "ray"

    def __init__(self, n_jobs: int | None = None, threads_per_job: int = 1,
                 address: str | None = None) -> None:
        self.threads_per_job = _check_threads(threads_per_job)
        requested = _check_n_jobs(n_jobs)
        self.address = address
        self.ray = _import_ray()
        self.startup_seconds = self._connect()
        if requested is None:
            cpus = int(self.ray.cluster_resources().get("CPU", 1))
            requested = max(1, cpus // self.threads_per_job)
        self.n_jobs = requested

    def _connect(self) -> float:
        ray = self.ray
        if ray.is_initialized():
            return 0.0
        started = time.perf_counter()
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"include_dashboard": False,
                                  "logging_level": logging.WARNING}
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as err:
            raise InvalidParameterError(
                f"Cannot connect to the Ray cluster at ray_address={address!r} ({err}). Start "
                "it with `ray start --head`, pass its address, or use ray_address=None for a "
                "local cluster."
            ) from err
        _RAY_STATE["started_here"] = True
        _RAY_STATE["startup_seconds"] = time.perf_counter() - started
        return float(_RAY_STATE["startup_seconds"])

    def _task(self) -> Any:
        if _RAY_STATE["task"] is None:
            _RAY_STATE["task"] = self.ray.remote(_run_pinned)
        return _RAY_STATE["task"]

    def warm_up(self) -> float:
        """Start ``n_jobs`` workers (each imports torch) now; returns the seconds it took."""
        started = time.perf_counter()
        for future in [self.submit(_noop) for _ in range(self.n_jobs)]:
            future.result()
        return time.perf_counter() - started

    def dumps(self, obj: Any) -> bytes:
        # cloudpickle sends lambdas and functions defined in __main__ by value
        cloudpickle = self.ray.cloudpickle
        return bytes(cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def share(self, obj: Any) -> Any:
        # numpy arrays are read from the object store without a copy; torch tensors are
        # unpickled (measured: 53 ms vs 2.6 ms per task for 12k MNIST rows)
        return self.ray.put(_as_arrays(obj))

    def _translate(self, error: BaseException) -> BaseException:
        exceptions = self.ray.exceptions
        if isinstance(error, exceptions.RayTaskError):
            cause = getattr(error, "cause", None)
            return cause if isinstance(cause, BaseException) else error
        if isinstance(error, exceptions.RayError):
            worker_error = WorkerError(
                f"A Ray worker died while training a sub-model ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}); nothing was committed. "
                "Retry the request: checkpoints finished before the failure are reused."
            )
            worker_error.__cause__ = error
            return worker_error
        return error

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        ref = self._task().options(num_cpus=self.threads_per_job, max_retries=0).remote(
            self.threads_per_job, fn, *args
        )
        return _chain(ref.future(), self._translate)


# ------------------------------------------------------------------------ factory
def make_executor(name: str = "serial", n_jobs: int | None = None,
                  ray_address: str | None = None, threads_per_job: int = 1) -> Executor:
    """The executor called ``name`` (``"serial"``, ``"process"`` or ``"ray"``).

    Args:
        name: where jobs run.
        n_jobs: jobs at once for ``"process"`` and ``"ray"`` (default: CPUs divided by
            ``threads_per_job``); ignored by ``"serial"``.
        ray_address: the Ray cluster to join (``None``: the current one, ``RAY_ADDRESS``, or
            a new local cluster).
        threads_per_job: torch intra-op threads per job; must be the same in every run
            whose results are compared bitwise.
    """
    if name == "serial":
        return SerialExecutor(threads_per_job)
    if name == "process":
        return ProcessExecutor(n_jobs, threads_per_job)
    if name == "ray":
        return RayExecutor(n_jobs, threads_per_job, ray_address)
    raise InvalidParameterError(
        f"executor must be one of {', '.join(repr(e) for e in EXECUTORS)}; got {name!r}."
    )


def shutdown() -> None:
    """End the cached process pools and a Ray cluster this process started."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)
    if _RAY_STATE["started_here"] and "ray" in sys.modules:
        sys.modules["ray"].shutdown()
        _RAY_STATE.update(started_here=False, task=None)


atexit.register(shutdown)


# ----------------------------------------------------------------------- scheduler
#: facts about the last :func:`run_chains` of this process (for benchmarks): executor,
#: slots, jobs, wall_seconds, job_seconds (time spent inside jobs, as the workers measured
#: it; setup_seconds of it loading strategy, data and checkpoint) and
#: utilisation = job_seconds / (slots * wall_seconds)
LAST_RUN: dict[str, Any] = {}


def run_chains(
    executor: Executor,
    chains: Mapping[int, Sequence[tuple[int, float]]],
    make_job: Callable[[int, int], tuple[Callable[..., Any], tuple[Any, ...]]],
    on_done: Callable[[int, int, Any], None],
) -> None:
    """Run every chain's blocks in order, at most ``executor.n_jobs`` jobs at a time.

    Args:
        chains: per chain, its ``(block, cost)`` pairs in the order they must run.
        make_job: ``(chain, block) -> (fn, args)``, called when the block is dispatched
            (so it can use what the previous block returned).
        on_done: ``(chain, block, result)``, called in this process as each block finishes.

    Scheduling: whenever a slot is free, the next block of the idle chain with the most
    remaining cost goes (longest-remaining-first at block granularity). Block-level jobs
    let two workers share the last chains instead of one worker finishing a whole chain
    alone: for 5 equal SISA shards of 5 slices on 2 workers the ideal makespan is 2.5
    chains; whole-chain jobs take 3 (83 % efficiency at best), block jobs about 2.6.

    On the first failure, queued jobs are cancelled, running ones are waited for (so no
    worker still writes when this returns) and the error is raised.
    """
    started = time.perf_counter()
    busy_seconds = 0.0
    setup_seconds = 0.0
    jobs = 0
    next_index = {k: 0 for k in chains}
    remaining = {k: float(sum(cost for _, cost in blocks)) for k, blocks in chains.items()}
    running: dict[Future[Any], tuple[int, int]] = {}
    busy: set[int] = set()
    try:
        while True:
            while len(running) < executor.n_jobs:
                ready = [k for k in chains if k not in busy and next_index[k] < len(chains[k])]
                if not ready:
                    break
                k = max(ready, key=lambda c: (remaining[c], -c))
                block, cost = chains[k][next_index[k]]
                fn, args = make_job(k, block)
                running[executor.submit(fn, *args)] = (k, block)
                busy.add(k)
            if not running:
                wall = time.perf_counter() - started
                LAST_RUN.clear()
                LAST_RUN.update(executor=executor.name, slots=executor.n_jobs, jobs=jobs,
                                wall_seconds=wall, job_seconds=busy_seconds,
                                setup_seconds=setup_seconds,
                                utilisation=busy_seconds / max(wall * executor.n_jobs, 1e-12))
                return
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: running[f]):
                k, block = running.pop(future)
                result = future.result()  # raises the job's error or WorkerError
                busy.discard(k)
                remaining[k] -= chains[k][next_index[k]][1]
                next_index[k] += 1
                on_done(k, block, result)
                jobs += 1
                busy_seconds += float(getattr(result, "seconds", 0.0))
                setup_seconds += float(getattr(result, "setup_seconds", 0.0))
    except BaseException as error:
        for future in running:
            future.cancel()
        pending = [f for f in running if not f.done()]
        if pending and isinstance(error, Exception):  # not on Ctrl-C: return at once
            wait(pending)
        raise


# --------------------------------------------------------- worker-side blob stores
class _BlobsOnly:
    """What a worker may not do with a store: it only reads and writes blobs.

    The calling process holds the store's write lock for the whole request, commits and
    purges; a worker that tried to would bypass that lock, so every such call raises.
    Blob digests are not computed here either: the calling process hashes what workers
    wrote when it commits.
    """

    @staticmethod
    def _refuse(what: str) -> StoreError:
        return StoreError(f"workers never {what}; only the calling process does, under the "
                          "store's write lock")

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("commit")

    def delete_blob(self, name: str) -> None:
        raise self._refuse("delete blobs")

    def collect_garbage(self, live: set[str]) -> list[str]:
        raise self._refuse("delete blobs")

    def recover(self) -> list[str]:
        raise self._refuse("recover a store")

    def try_recover(self) -> bool:
        raise self._refuse("recover a store")

    def writing(self, **_: Any) -> Any:
        raise self._refuse("take the store's write lock")

    def snapshot(self) -> Any:
        raise self._refuse("read the committed state")

    def read_state(self) -> dict[str, Any] | None:
        raise self._refuse("read the committed state")

    def ensure_key(self) -> None:
        raise self._refuse("create a store key")

    def _cache_write_allowed(self) -> bool:
        return False

    def close(self) -> None:
        pass


class WorkerDirectoryStore(_BlobsOnly, DirectoryStore):  # type: ignore[misc]
    """Blob access to a store directory for a worker: read and write blobs, nothing else.

    Reuses :class:`~expunge.store.DirectoryStore`'s atomic blob code but opens no database
    (only the calling process commits), takes no lock (the calling process holds it while
    its workers run) and leaves temp files alone (another worker may be writing one).
    ``manifest_digest`` proves this is the calling process's store and not another
    directory at the same path on another machine.
    """

    _records_digests = False

    def __init__(self, root: str | Path, manifest_digest: str) -> None:  # no super().__init__
        self._init_blob_access(Path(root))
        found = self.read_manifest()
        if found is None or manifest_digest_of(found) != manifest_digest:
            raise StoreError(
                f"The store {str(self.root)!r} is not visible from this worker "
                f"(host {os.uname().nodename}): workers write checkpoints into the store, so its "
                "path must be on storage shared by every node at the same path (NFS, ...). Use a "
                "shared path, or store=None to send checkpoints back through Ray."
            )


class WorkerMemoryStore(_BlobsOnly, MemoryStore):  # type: ignore[misc]
    """A worker's view of an in-memory store: the blobs it was sent plus those it writes.

    The written blobs go back to the calling process, which writes them into its store
    (and records their digests there).
    """

    def __init__(self, blobs: dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]
                 ) -> None:  # no super().__init__: no database, key or lock in workers
        self.write_hook = None
        self._blobs = dict(blobs)
        self._known = {}
        self.written: list[str] = []

    def write_blob(self, name: str, tensors: dict[str, torch.Tensor],
                   metadata: dict[str, str] | None = None, *, shared: bool = False) -> None:
        if name not in self._blobs:
            self._blobs[name] = ({k: v.detach().cpu().contiguous().clone()
                                  for k, v in tensors.items()}, dict(metadata or {}))
        self.written.append(name)

    def new_blobs(self) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]:
        return {name: self._blobs[name] for name in self.written}


def manifest_digest_of(manifest: dict[str, Any]) -> str:
    """A digest naming one store's manifest (to check a worker sees the same store)."""
    import json

    text = json.dumps(manifest, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------- objects cached inside a worker
_LOADED: dict[str, Any] = {}


def load_cached(digest: str, payload: bytes) -> Any:
    """``pickle.loads(payload)``, cached per worker process by ``digest`` (last 4 kept)."""
    obj = _LOADED.get(digest)
    if obj is None:
        obj = pickle.loads(payload)
        if len(_LOADED) >= 4:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[digest] = obj
    return obj

"""A local process pool: ``n_jobs`` workers with ``threads_per_job`` torch threads each."""

from __future__ import annotations

import multiprocessing
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import torch

from expunge.exceptions import InvalidParameterError, WorkerError
from expunge.parallel._base import ExecutorBase, chain_future, check_n_jobs, check_threads
from expunge.parallel._worker import init_worker, noop, run_job, worker_preload
from expunge.training import available_cpus

T = TypeVar("T")

#: what the forkserver imports once, so that each worker forked from it starts ready
#: (torch._dynamo is what the first optimizer imports: ~2 s per fresh interpreter), before
#: the modules registered with :func:`~expunge.parallel.preload_in_workers`
FORKSERVER_PRELOAD = ("__main__", "expunge.parallel", "torch._dynamo")


def default_start_method() -> str:
    """``forkserver`` where the platform has it (Linux, macOS), else ``spawn``."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class _Pools:
    """Process pools kept warm for later requests of this process, one per configuration.

    Start-up (2-5 s) is paid once per process; :func:`expunge.parallel.shutdown` ends them.
    """

    def __init__(self) -> None:
        self._pools: dict[tuple[Any, ...], ProcessPoolExecutor] = {}
        self._lock = threading.Lock()

    def get(self, n_jobs: int, threads: int, start_method: str,
            preload: tuple[str, ...]) -> ProcessPoolExecutor:
        key = (n_jobs, threads, start_method, preload)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None or getattr(pool, "_broken", False) or \
                    getattr(pool, "_shutdown_thread", False):
                context = multiprocessing.get_context(start_method)
                if start_method == "forkserver":
                    # the server imports torch but runs no kernel (no OpenMP threads yet),
                    # so forking workers from it is safe; modules that fail are skipped
                    context.set_forkserver_preload(list(FORKSERVER_PRELOAD + preload))
                pool = ProcessPoolExecutor(
                    max_workers=n_jobs, mp_context=context,
                    initializer=init_worker, initargs=(threads, preload),
                )
                self._pools[key] = pool
            return pool

    def discard(self, pool: ProcessPoolExecutor) -> None:
        """Forget a broken pool (its manager thread has already terminated its workers)."""
        with self._lock:
            for key, cached in list(self._pools.items()):
                if cached is pool:
                    del self._pools[key]

    def shutdown(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


POOLS = _Pools()


class ProcessExecutor(ExecutorBase):
    """A local process pool: ``n_jobs`` workers with ``threads_per_job`` torch threads each.

    Workers are forked from a ``forkserver`` (``spawn`` where there is none), never from this
    process with ``fork``: torch's OpenMP threads do not survive a fork. The forkserver
    imports torch, the modules jobs unpickle into (:func:`~expunge.parallel.preload_in_workers`)
    and the caller's ``__main__`` once, so workers start in milliseconds after it. The pool
    is cached per ``(n_jobs, threads_per_job, start_method)`` (and preload list) and reused
    by later requests; a pool that lost a worker is discarded.

    Cost: start-up ~2-3 s once per process (one interpreter importing torch; ``spawn``: one
    per worker, in parallel); per job, its pickled arguments, tensors through shared memory.
    """

    name = "process"

    def __init__(self, n_jobs: int | None = None, threads_per_job: int = 1,
                 start_method: str | None = None) -> None:
        self.threads_per_job = check_threads(threads_per_job)
        n_jobs = check_n_jobs(n_jobs)
        self.n_jobs = n_jobs if n_jobs is not None else max(
            1, available_cpus() // self.threads_per_job)
        start_method = start_method or default_start_method()
        if start_method not in ("spawn", "forkserver"):
            raise InvalidParameterError(
                f"start_method must be 'spawn' or 'forkserver'; got {start_method!r} ('fork' "
                "is unsafe once torch has started its threads)."
            )
        self.start_method = start_method
        self.preload = worker_preload()
        self._pool: ProcessPoolExecutor | None = None

    @property
    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = POOLS.get(self.n_jobs, self.threads_per_job, self.start_method,
                                   self.preload)
        return self._pool

    def share(self, obj: Any) -> Any:
        # torch sends tensors through shared memory (no copy through the pipe); a /dev/shm
        # too small for them (64 MB in a default Docker container) would kill the worker
        # with SIGBUS instead, so then they travel as plain arrays, pickled by value
        needed = nbytes(obj)
        if needed == 0 or shared_memory_free() >= 2 * needed:
            return obj
        return as_arrays(obj)

    def warm_up(self) -> float:
        """Start every worker now; returns the seconds it took (0 if they were running)."""
        started = time.perf_counter()
        futures = [self.submit(noop) for _ in range(self.n_jobs)]
        for future in futures:
            future.result()
        return time.perf_counter() - started

    def _translate(self, error: BaseException) -> BaseException:
        if isinstance(error, BrokenProcessPool):
            if self._pool is not None:
                POOLS.discard(self._pool)
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
            source = self.pool.submit(run_job, self.threads_per_job, self.preload, fn, *args)
        except BrokenProcessPool as err:
            failed: Future[T] = Future()
            failed.set_exception(self._translate(err))
            return failed
        return chain_future(source, self._translate)


def nbytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (a tensor, or nested tuples and lists of them)."""
    if isinstance(obj, torch.Tensor):
        return int(obj.numel() * obj.element_size())
    if isinstance(obj, (tuple, list)):
        return sum(nbytes(item) for item in obj)
    return 0


def as_arrays(obj: Any) -> Any:
    """``obj`` with every tensor replaced by its numpy array (no copy)."""
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, (tuple, list)):
        return type(obj)(as_arrays(item) for item in obj)
    return obj


def shared_memory_free() -> int:
    """Free bytes in /dev/shm (0 where there is none: then nothing goes through it)."""
    try:
        return int(shutil.disk_usage("/dev/shm").free)
    except OSError:
        return 0

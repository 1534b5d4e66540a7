"""What runs around every job: thread pinning, a worker's one-time warm-up, broadcast values.

Executors send ``run_job(threads, preload, fn, *args)`` to their workers (the serial executor
calls :func:`run_here`). Nothing here knows what a job computes: a caller names the modules
its jobs unpickle into (:func:`preload_in_workers`, once, when it is imported) and wraps
values that many jobs read in :class:`Broadcast` (unpickled once per worker, not per job).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from expunge.training import pinned_threads

T = TypeVar("T")


@dataclass(frozen=True)
class Broadcast:
    """A pickled value that several jobs read: each worker unpickles it once.

    Build it with the executor's own pickler (``Broadcast(executor.dumps(obj))``) and pass
    it as a top-level job argument: the job receives the object, not this wrapper.
    Cost: the bytes travel with every job (a strategy's parameters: a few KB); unpickling
    happens once per worker process (the last 4 values are cached).
    """

    payload: bytes
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", hashlib.sha256(self.payload).hexdigest())


_LOADED: dict[str, Any] = {}


def load(value: Broadcast) -> Any:
    """``pickle.loads(value.payload)``, cached in this process by digest (last 4 kept)."""
    obj = _LOADED.get(value.digest)
    if obj is None:
        obj = pickle.loads(value.payload)
        if len(_LOADED) >= 4:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[value.digest] = obj
    return obj


def _resolve(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(load(a) if isinstance(a, Broadcast) else a for a in args)


#: modules every worker imports before its first job (see :func:`preload_in_workers`)
_PRELOAD: list[str] = []
_READY: set[str] = set()


def preload_in_workers(*modules: str) -> None:
    """Have every worker started from now on import ``modules`` before its first job.

    For the modules jobs unpickle into (the exact engine registers the strategies): their
    import then belongs to the workers' start-up, paid once, not to the first job.
    """
    for name in modules:
        if name not in _PRELOAD:
            _PRELOAD.append(name)


def worker_preload() -> tuple[str, ...]:
    """The modules registered with :func:`preload_in_workers`, in order."""
    return tuple(_PRELOAD)


def prepare(preload: Sequence[str] = ()) -> None:
    """Pay a worker's one-time costs before its first job (~2 s on first use).

    Imports the modules jobs unpickle into, and runs one optimizer step: the first
    optimizer built in a process imports torch's lazy modules (torch._dynamo), which
    belongs to the executor's start-up rather than to the first job.
    """
    for name in preload:
        if name not in _READY:
            importlib.import_module(name)
            _READY.add(name)
    if "torch" not in _READY:
        weight = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.SGD([weight], lr=0.0)
        weight.sum().backward()
        optimizer.step()
        _READY.add("torch")


def init_worker(threads: int, preload: Sequence[str]) -> None:
    """Process-pool initializer: pin torch threads before the worker runs any kernel."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(1)
    prepare(preload)


def run_job(threads: int, preload: Sequence[str], fn: Callable[..., T], *args: Any) -> T:
    """The body of every job in a worker process: pin the thread count, then run ``fn``."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    prepare(preload)
    return fn(*_resolve(args))


def timed(fn: Callable[..., T], *args: Any) -> tuple[float, T]:
    """Run ``fn(*args)``; return (seconds it took where it ran, its result)."""
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def run_here(threads: int, fn: Callable[..., T], *args: Any) -> T:
    """A job in the calling process: pinned to ``threads`` while it runs, then restored."""
    with pinned_threads(threads):
        return fn(*_resolve(args))


def noop() -> int:
    """A job that does nothing (to start workers ahead of time); returns the worker's pid."""
    return os.getpid()

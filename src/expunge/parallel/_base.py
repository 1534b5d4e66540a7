"""The executor protocol and what every executor shares (argument checks, future chaining)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar, runtime_checkable

from expunge.exceptions import InvalidParameterError

T = TypeVar("T")


@runtime_checkable
class Executor(Protocol):
    """Runs jobs ``fn(*args)`` and hands back :class:`concurrent.futures.Future` objects.

    A future of a job whose worker died fails with :class:`~expunge.exceptions.WorkerError`;
    an exception the job itself raised is re-raised as it is. ``fn`` must be a module-level
    function (it is sent by reference) and ``args`` must pickle. Every job runs with
    ``threads_per_job`` torch intra-op threads.
    """

    #: ``"serial"``, ``"process"`` or ``"ray"``
    name: str
    #: how many jobs may run at the same time
    n_jobs: int
    #: torch intra-op threads every job runs with
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


class ExecutorBase:
    """Defaults shared by the executors: nothing to share, plain pickle, nothing to close."""

    name = "base"
    n_jobs = 1
    threads_per_job = 1

    def share(self, obj: Any) -> Any:
        return obj

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def close(self) -> None:
        pass

    def __enter__(self) -> ExecutorBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n_jobs={self.n_jobs}, "
                f"threads_per_job={self.threads_per_job})")


def check_threads(threads_per_job: int) -> int:
    if isinstance(threads_per_job, bool) or not isinstance(threads_per_job, int) \
            or threads_per_job < 1:
        raise InvalidParameterError(
            f"threads_per_job must be an int >= 1; got {threads_per_job!r}."
        )
    return threads_per_job


def check_n_jobs(n_jobs: int | None) -> int | None:
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int)
                               or n_jobs < 1):
        raise InvalidParameterError(
            f"n_jobs must be None (one per CPU) or an int >= 1; got {n_jobs!r}."
        )
    return n_jobs


class _Mirror(Future[Any]):
    """A future that follows another one; cancelling it cancels the source, so that it is
    cancelled only if the source job had not started (a running job is waited for)."""

    def __init__(self, source: Future[Any], cancellable: bool) -> None:
        super().__init__()
        self._source = source
        self._cancellable = cancellable

    def cancel(self) -> bool:
        # the source's callback then marks this one cancelled
        return self._cancellable and self._source.cancel()


def chain_future(source: Future[Any], translate: Callable[[BaseException], BaseException],
                 *, cancellable: bool = True) -> Future[Any]:
    """A future that mirrors ``source`` with its exception passed through ``translate``.

    ``cancellable=False`` for sources whose ``cancel()`` cannot tell a queued job from a
    running one (Ray's): the job then always runs to its end and can be waited for.
    """
    target = _Mirror(source, cancellable)

    def copy(done: Future[Any]) -> None:
        if done.cancelled():
            Future.cancel(target)
            return
        error = done.exception()
        if error is not None:
            target.set_exception(translate(error))
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)
    return target

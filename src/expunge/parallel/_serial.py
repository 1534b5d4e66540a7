"""The serial executor: every job in the calling process, one after another."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from expunge.parallel._base import ExecutorBase, check_threads
from expunge.parallel._worker import run_here

T = TypeVar("T")


class SerialExecutor(ExecutorBase):
    """Runs each job in the calling process when it is submitted.

    Cost: no start-up, nothing pickled; one job at a time with ``threads_per_job`` threads
    (the caller's own count is restored after each job).
    """

    name = "serial"

    def __init__(self, threads_per_job: int = 1) -> None:
        self.n_jobs = 1
        self.threads_per_job = check_threads(threads_per_job)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            result = run_here(self.threads_per_job, fn, *args)
        except Exception as err:
            future.set_exception(err)
        else:
            future.set_result(result)
        return future

"""The executor called by name, and the end of everything executors keep warm."""

from __future__ import annotations

import atexit

from expunge.exceptions import InvalidParameterError
from expunge.parallel._base import Executor
from expunge.parallel._process import POOLS, ProcessExecutor
from expunge.parallel._ray import SESSION, RayExecutor
from expunge.parallel._serial import SerialExecutor

#: the executor names :func:`make_executor` knows
EXECUTORS = ("serial", "process", "ray")


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
    POOLS.shutdown()
    SESSION.shutdown()


atexit.register(shutdown)

"""Where independent jobs run: in this process, in a local process pool, or on Ray.

The exact strategies train isolated sub-models, each a chain of checkpointed blocks; the
engine (:mod:`expunge.strategies.exact`) decides *what* every job computes, this package
only *where* and *when*, so the choice of executor changes how fast, never the bits:

* every job runs with the same number of torch intra-op threads, ``threads_per_job``, in
  every executor, the serial one included (:func:`expunge.training.pinned_threads`);
* a job is a module-level function and its arguments; values many jobs read travel as a
  :class:`Broadcast` (unpickled once per worker) or through :meth:`Executor.share`;
* :class:`ChainRun` (and :func:`run_chains`) runs chains of jobs (blocks of one sub-model in
  order, sub-models side by side), hands each result back to the caller as it arrives and
  ends with its :class:`RunStats`.

Executors: ``"serial"`` (jobs one after another in the calling process), ``"process"`` (a
local pool of ``n_jobs`` workers started through a ``forkserver``, kept warm for later
requests; :func:`shutdown` ends it) and ``"ray"`` (Ray tasks with
``num_cpus=threads_per_job`` on a cluster or a local one; ``pip install 'expunge[ray]'``).
See ``docs/parallel.md`` for what each costs.

This package knows nothing of strategies: it imports only the library's leaves and
:mod:`expunge.training` (thread pinning).
"""

from expunge.parallel._base import Executor
from expunge.parallel._factory import EXECUTORS, make_executor, shutdown
from expunge.parallel._process import ProcessExecutor, default_start_method
from expunge.parallel._ray import RAY_INSTALL_HINT, RayExecutor, import_ray
from expunge.parallel._schedule import (
    ChainRun,
    Job,
    RunStats,
    plan_offsets,
    run_chains,
    simulate,
)
from expunge.parallel._serial import SerialExecutor
from expunge.parallel._worker import Broadcast, preload_in_workers

__all__ = [
    "EXECUTORS",
    "RAY_INSTALL_HINT",
    "Broadcast",
    "ChainRun",
    "Executor",
    "Job",
    "ProcessExecutor",
    "RayExecutor",
    "RunStats",
    "SerialExecutor",
    "default_start_method",
    "import_ray",
    "make_executor",
    "plan_offsets",
    "preload_in_workers",
    "run_chains",
    "shutdown",
    "simulate",
]

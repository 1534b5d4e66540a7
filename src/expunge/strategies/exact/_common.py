"""Parameter constraints shared by the exact strategies."""

from __future__ import annotations

from typing import Any

from torch import nn

from expunge._validation import Check, Constraint, Interval, Options

TRAINING_CONSTRAINTS: dict[str, list[Constraint]] = {
    # a factory, not a module instance: every sub-model needs its own fresh, seeded init
    "model": [str, Check(lambda v: callable(v) and not isinstance(v, nn.Module),
                         "a callable returning an nn.Module (not a module instance)")],
    "model_params": [None, dict],
    "epochs": [Interval(int, 1, None)],
    "batch_size": [Interval(int, 1, None)],
    "lr": [Interval(float, 0, None, closed="neither")],
    "optimizer": [Options(("sgd", "adam", "adamw"))],
    "momentum": [Interval(float, 0, 1, closed="left")],
    "weight_decay": [Interval(float, 0, None)],
    "seed": [Interval(int, 0, 2**63 - 1)],
    "store": [None, str, Check(lambda v: hasattr(v, "__fspath__"), "a path")],
    "show_progress": [bool],
    "executor": [Options(("serial", "process", "ray"))],
    "n_jobs": [None, Interval(int, 1, None)],
    "ray_address": [None, str],
    "threads_per_job": [Interval(int, 1, None)],
}

#: parameters that choose *where* sub-models train, never *what* they compute
#: (``threads_per_job`` is not one of them: the thread count can change float sums, so it is
#: recorded in the manifest and a reopen with another value is refused)
EXECUTOR_PARAMS = frozenset({"executor", "n_jobs", "ray_address"})


def training_params(**values: Any) -> dict[str, Any]:
    return values

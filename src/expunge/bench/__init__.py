"""``expunge bench``: reproduce the papers' experiments from the specs shipped as package data
(``expunge/bench/specs``)."""

from expunge.bench import (  # noqa: F401  (register kinds)
    _kinds_e8,
    _kinds_methods,
    _kinds_tune,
    _kinds_workload,
)
from expunge.bench._kinds import KINDS
from expunge.bench._kinds_tune import choose_over_rounds
from expunge.bench._runner import render_folder, render_results, run_all, run_experiment
from expunge.bench._spec import ExperimentSpec, available_experiments, load_spec, spec_dir

__all__ = ["KINDS", "ExperimentSpec", "available_experiments", "choose_over_rounds",
           "load_spec", "render_folder", "render_results", "run_all", "run_experiment",
           "spec_dir"]

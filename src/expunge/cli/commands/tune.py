"""``expunge tune``: choose an approximate baseline's defaults against Retrain.

Runs the tuning protocol of ``the shipped tune_baselines.toml`` (or ``--spec``) for
the named strategies: a grid per strategy, scored on a tuning problem that shares no data,
seed or class with the evaluation (``docs/baselines.md``, "Tuning"), and prints the chosen
parameters next to the current defaults. The JSON with every grid point goes to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path

import expunge
from expunge.bench import load_spec, run_experiment, spec_dir
from expunge.cli._common import console
from expunge.exceptions import InvalidParameterError

NAME = "tune"
HELP = "tune approximate baselines against Retrain on a separate tuning split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("strategies", nargs="*", metavar="STRATEGY",
                        help="strategies to tune (default: every grid in the spec)")
    parser.add_argument("--spec", default=None,
                        help="tuning spec (default: the shipped tune_baselines.toml)")
    parser.add_argument("--quick", action="store_true", help="the spec's tiny digits version")
    parser.add_argument("--out", required=True, help="folder for the JSON and the plot")
    parser.add_argument("--data-root", default="../shared/datasets",
                        help="folder holding mnist/ (default ../shared/datasets)")


def run(args: argparse.Namespace) -> int:
    out = console(args)
    path = Path(args.spec) if args.spec else spec_dir() / "tune_baselines.toml"
    spec = load_spec(path)
    if spec.kind != "tune":
        raise InvalidParameterError(f"{path} is a {spec.kind!r} spec, not a tuning spec.")
    grids = spec.resolved(args.quick).settings.get("grids", {})
    chosen = list(args.strategies) or list(grids)
    unknown = [s for s in chosen if s not in grids]
    if unknown:
        raise InvalidParameterError(
            f"No tuning grid for {unknown} in {path.name}; grids: {', '.join(grids)}.")
    settings = {**spec.settings, "only": chosen}
    quick = {**spec.quick, "settings": {**spec.quick.get("settings", {}), "only": chosen}}
    spec = dataclasses.replace(spec, settings=settings, quick=quick)
    root = Path(args.data_root)
    result = run_experiment(spec, quick=args.quick, seeds=[0], out=Path(args.out),
                            data_roots={"mnist": root / "mnist", "digits": None},
                            log=out.print)
    for row in result["rows"]:
        if not row.get("grid"):
            continue
        cls = expunge.get_strategy(row["strategy"])
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                    if k in row["chosen_params"]}
        out.print(f"{row['strategy']}: chosen {row['chosen_params']} (mean Avg. Gap "
                  f"{100 * row['objective']:.2f} points, {100 * row['relative_time']:.1f} % of "
                  f"Retrain's time); current defaults {defaults}")
    return 0

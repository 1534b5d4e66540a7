"""``expunge tune``: choose an approximate baseline's defaults against Retrain.

Runs the tuning protocol of ``the shipped tune_baselines.toml`` (or ``--spec``) for
the named strategies: a grid per strategy, scored on a tuning problem that shares no data,
seed or class with the evaluation (``docs/baselines.md``, "Tuning"), and prints the chosen
parameters next to the current defaults. The JSON with every grid point goes to ``--out``.

``--choose-from A.json B.json ...`` runs nothing: it applies the protocol's rule (the
spec's ``tie`` and ``acceptable``) to the grid points of tuning runs already made (the
rounds of a search) and exits 1 if a current default differs from the chosen point.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any

import expunge
from expunge.bench import choose_over_rounds, load_spec, run_experiment, spec_dir
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
    parser.add_argument("--out", help="folder for the JSON and the plot (required to run)")
    parser.add_argument("--choose-from", nargs="+", metavar="JSON", default=None,
                        help="run nothing: choose from these tuning results (the rounds "
                             "of a search) and compare with the current defaults")
    parser.add_argument("--data-root", default="../shared/datasets",
                        help="folder holding mnist/ (default ../shared/datasets)")


def _defaults(label: str, names: Any) -> dict[str, Any]:
    cls = expunge.get_strategy(label)
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if k in names}


def _choose_from(args: argparse.Namespace, spec: Any, out: Any) -> int:
    results = []
    for name in args.choose_from:
        try:
            result = json.loads(Path(name).read_text())
        except (OSError, ValueError) as err:
            raise InvalidParameterError(
                f"--choose-from {name!r} is not a readable JSON result ({err}); pass the "
                "JSON files a tuning run wrote to its --out folder.") from None
        if result.get("kind") != "tune":
            raise InvalidParameterError(
                f"--choose-from {name!r} holds a {result.get('kind')!r} result, not a "
                "tuning run's; pass the JSON of `expunge tune` or `expunge bench "
                "tune_baselines`.")
        results.append(result)
    chosen = choose_over_rounds(results, float(spec.settings.get("tie", 0.001)),
                                spec.settings.get("acceptable"))
    wanted = list(args.strategies) or list(chosen)
    differ = []
    for label in wanted:
        if label not in chosen:
            raise InvalidParameterError(
                f"No grid point of {label!r} in {', '.join(args.choose_from)}; strategies "
                f"there: {', '.join(chosen)}.")
        point = chosen[label]
        defaults = _defaults(label, point["params"])
        same = all(defaults.get(k) == v for k, v in point["params"].items())
        differ += [] if same else [label]
        out.print(f"{label}: chosen {point['params']} from {point['run']} (mean Avg. Gap "
                  f"{100 * point['objective']:.2f} points, acceptable: "
                  f"{point.get('acceptable', 'n/a')}); current defaults {defaults}"
                  + ("" if same else "  <- differs"))
    return 1 if differ else 0


def run(args: argparse.Namespace) -> int:
    out = console(args)
    path = Path(args.spec) if args.spec else spec_dir() / "tune_baselines.toml"
    spec = load_spec(path)
    if spec.kind != "tune":
        raise InvalidParameterError(f"{path} is a {spec.kind!r} spec, not a tuning spec.")
    if args.choose_from:
        return _choose_from(args, spec, out)
    if not args.out:
        raise InvalidParameterError(
            "expunge tune needs --out FOLDER for its JSON and plot (or --choose-from "
            "JSON... to choose from runs already made).")
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
        defaults = _defaults(row["strategy"], row["chosen_params"])
        out.print(f"{row['strategy']}: chosen {row['chosen_params']} (mean Avg. Gap "
                  f"{100 * row['objective']:.2f} points, {100 * row['relative_time']:.1f} % of "
                  f"Retrain's time); current defaults {defaults}")
    return 0

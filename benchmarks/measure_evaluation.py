"""The full evaluation report on MNIST with an MLP, 1 % random forget set (issue 5).

    .venv/bin/python benchmarks/measure_evaluation.py --data-root ../shared/datasets/mnist

For Retrain, SISA and (when registered) PUMA, with one training recipe shared by all:

1. fit on the 60 000 MNIST training images into a temporary store;
2. ``expunge.evaluate(..., forget=True, reference="retrain", attacks="all")``: forget 600
   random ids (1 %, seed 0), then every metric family against Retrain on the retained data
   (trained once per store and cached there), LiRA / U-LiRA with ``--shadow-models``
   shadows;
3. print the report's tables and the seconds spent per metric family; ``--out`` keeps each
   report folder (report.md, report.json, PNGs) and a summary JSON.

Dominated by the shadow models (N fits on half of the 70 000 pooled images, plus N forget
requests for U-LiRA): about 4-5 minutes per strategy with 1 torch thread on a shared
2-core machine. ``--quick`` uses 10 000 training images, 2 000 test images and 4 shadows
(about a minute per strategy).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import expunge
from expunge.data import load_dataset, random_forget_ids
from expunge.evaluation import evaluate

#: one recipe for every strategy, so that each is judged against the same Retrain
RECIPE: dict[str, Any] = {
    "model": "mlp", "model_params": {"hidden_sizes": [256]}, "epochs": 10,
    "batch_size": 128, "lr": 0.05, "momentum": 0.9, "seed": 0,
}
EXTRA: dict[str, dict[str, Any]] = {
    "sisa": {"n_shards": 5, "n_slices": 5},
    # PUMA: its defaults (whole-network K-FAC in float32, docs/puma.md)
}


def build(name: str, store: Path) -> expunge.UnlearningStrategy:
    cls = expunge.get_strategy(name)
    accepted = set(cls._param_names())
    params = {k: v for k, v in {**RECIPE, **EXTRA.get(name, {})}.items() if k in accepted}
    return cls(**params, store=store)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    parser.add_argument("--strategies", default="retrain,sisa,puma",
                        help="comma-separated; unregistered ones (puma before it lands) are "
                             "skipped")
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--shadow-models", type=int, default=8)
    parser.add_argument("--shadow-epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="keep report folders + summary.json here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console(width=120)
    options = {"limit_train": 10_000, "limit_test": 2_000} if args.quick else {}
    train, test = load_dataset("mnist", root=args.data_root, **options)
    shadow_models = 4 if args.quick else args.shadow_models
    forget_ids = random_forget_ids(train, fraction=args.fraction, seed=0)
    available = expunge.available_strategies()
    names = [n for n in args.strategies.split(",") if n]
    skipped = [n for n in names if n not in available]
    names = [n for n in names if n in available]
    console.print(
        f"MNIST {len(train)} train / {len(test)} test, forget {len(forget_ids)} random ids "
        f"({args.fraction:.0%}, seed 0); recipe {RECIPE}; {shadow_models} shadow models; "
        f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or '?'}"
        + (f"; skipped (not registered): {skipped}" if skipped else "")
    )
    summary: dict[str, Any] = {"recipe": RECIPE, "extra": EXTRA, "n_train": len(train),
                               "n_test": len(test), "n_forget": len(forget_ids),
                               "shadow_models": shadow_models, "strategies": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            strategy = build(name, Path(scratch) / name)
            started = time.perf_counter()
            strategy.fit(train)
            fit_seconds = time.perf_counter() - started
            started = time.perf_counter()
            report = evaluate(strategy, test=test, forget_ids=forget_ids, reference="retrain",
                              attacks="all", forget=True, shadow_models=shadow_models,
                              shadow_epochs=args.shadow_epochs)
            evaluate_seconds = time.perf_counter() - started
            strategy.close()
            console.print(report.table())
            console.print(report.timings_table())
            for note in report.notes:
                console.print(f"  note: {note}")
            console.print(f"{name}: fit {fit_seconds:.1f} s, evaluate (incl. forget) "
                          f"{evaluate_seconds:.1f} s\n")
            summary["strategies"][name] = {
                "fit_seconds": fit_seconds, "evaluate_seconds": evaluate_seconds,
                "timings": report.timings,
                "metrics": {r.key: [r.model, r.reference, r.gap] for r in report.metrics},
            }
            if args.out:
                report.write(Path(args.out) / name)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

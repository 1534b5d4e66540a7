"""What the 2026 evaluation costs per evaluation: RMIA, KLoM, the probe, relearn time.

    .venv/bin/python benchmarks/measure_field_metrics.py --data-root ../shared/datasets/mnist

On E8a's memorising model (MNIST, 5 000 training images, MLP 784-256-10, 60 epochs), a
fine-tuned model forgets 250 random ids and is evaluated with ``attacks=["svc", "rmia",
"klom"]``, ``checks="all"`` and ``seeds=[0, 1, 2]`` against Retrain. The script prints the
report's seconds per metric family (summed over the three seeds), the cost of training the
RMIA reference models (the shadows: four per seed, on half of the 15 000 pooled images),
and the same evaluation repeated with the shadows taken from an ``EvaluationCache``
(the benchmark's situation: every method after the first one reuses them).
``--quick`` runs on digits in a minute. One torch thread; ratios, not absolute seconds,
are what transfers to another machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import expunge
from expunge.data import load_dataset, random_forget_ids
from expunge.evaluation import EvaluationCache, evaluate

RECIPE: dict[str, Any] = {"model": "mlp", "model_params": {"hidden_sizes": [256]},
                          "epochs": 60, "batch_size": 128, "lr": 0.05, "momentum": 0.9,
                          "weight_decay": 5e-4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="write the timings as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        train, test = load_dataset("digits")
        recipe = {**RECIPE, "model_params": {"hidden_sizes": [32]}, "epochs": 20,
                  "batch_size": 32}
    else:
        train, test = load_dataset("mnist", root=args.data_root, limit_train=5000)
        recipe = RECIPE
    ids = random_forget_ids(train, fraction=0.05, seed=0)
    template = expunge.get_strategy("finetune")(**recipe)
    cache = EvaluationCache()
    results = {}
    for label in ("first evaluation (trains the shadows)", "with the shadows cached"):
        started = time.perf_counter()
        report = evaluate(template, train=train, test=test, forget_ids=ids,
                          reference="retrain", attacks=["svc", "rmia", "klom"], checks="all",
                          seeds=[0, 1, 2], shadow_models=4, cache=cache)
        total = time.perf_counter() - started
        results[label] = {"total_seconds": total, "timings": report.timings,
                          "cache": cache.summary()}
        print(f"\n{label}: {total:.1f} s in all (3 seeds)")
        for family, seconds in sorted(report.timings.items(), key=lambda kv: -kv[1]):
            print(f"  {family:40s} {seconds:8.2f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

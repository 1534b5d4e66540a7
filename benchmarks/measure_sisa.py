"""Retrain vs SISA on MNIST (issue: foundation): accuracy, fit time, forget time, cost.

    .venv/bin/python benchmarks/measure_sisa.py --data-root ../shared/datasets/mnist

Measures, in one run (speed ratios are only meaningful side by side): test accuracy, time
to fit, median time to forget one random id over 5 sequential requests, sample-passes
retrained per request, and the speed-up retrain/forget next to SISA's theory S*3R/(2R+1).
Prints a markdown table and writes JSON next to it when --out is given.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import expunge
from expunge.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    parser.add_argument("--n-shards", type=int, default=5)
    parser.add_argument("--n-slices", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--out", default=None, help="write results JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_dataset("mnist", root=args.data_root, limit_train=args.limit_train)
    recipe = dict(model="mlp", model_params={"hidden_sizes": [256]}, epochs=args.epochs,
                  batch_size=128, lr=0.05, momentum=0.9, seed=0)
    rng = np.random.default_rng(1)
    request_ids = rng.choice(train.ids, size=args.requests, replace=False).tolist()
    results = {}
    for name, strategy in [
        ("retrain", expunge.Retrain(**recipe)),
        ("sisa", expunge.SISA(**recipe, n_shards=args.n_shards, n_slices=args.n_slices)),
    ]:
        started = time.perf_counter()
        strategy.fit(train)
        fit_seconds = time.perf_counter() - started
        accuracy = strategy.score(test)
        reports = [strategy.forget([int(i)]) for i in request_ids]
        results[name] = {
            "test_accuracy": accuracy, "test_accuracy_after": strategy.score(test),
            "fit_seconds": fit_seconds,
            "forget_seconds": [r.seconds for r in reports],
            "median_forget_seconds": statistics.median(r.seconds for r in reports),
            "median_sample_passes": statistics.median(r.sample_passes for r in reports),
            "median_samples_retrained": statistics.median(r.samples_retrained for r in reports),
        }
    S, R = args.n_shards, args.n_slices
    theory = S * 3 * R / (2 * R + 1)
    retrain, sisa = results["retrain"], results["sisa"]
    speedup_time = retrain["median_forget_seconds"] / sisa["median_forget_seconds"]
    speedup_passes = retrain["median_sample_passes"] / sisa["median_sample_passes"]
    print(f"MNIST {len(train)} train / {len(test)} test, MLP 784-256-10, {args.epochs} epochs, "
          f"torch threads {args.threads}, {args.requests} sequential single-id requests\n")
    print("| strategy | test acc. | fit s | median forget s | sample-passes / request "
          "| distinct samples retrained |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['test_accuracy']:.4f} | {r['fit_seconds']:.1f} | "
              f"{r['median_forget_seconds']:.2f} | {r['median_sample_passes']:.0f} | "
              f"{r['median_samples_retrained']:.0f} |")
    print(f"\nSISA speed-up over Retrain per request: {speedup_time:.2f}x in wall time, "
          f"{speedup_passes:.2f}x in sample-passes; theory S*3R/(2R+1) = {theory:.2f}x")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        Path(args.out).write_text(json.dumps({
            "config": vars(args), "results": results, "theory_speedup": theory,
            "speedup_time": speedup_time, "speedup_passes": speedup_passes,
            "versions": {"expunge": expunge.__version__, "torch": torch.__version__,
                         "python": platform.python_version()}, "git_commit": commit,
        }, indent=2))


if __name__ == "__main__":
    main()

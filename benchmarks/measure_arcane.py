"""ARCANE against Retrain on MNIST (issue 14): accuracy, fit, per-id and 1 % batch speed-ups.

    .venv/bin/python benchmarks/measure_arcane.py --data-root ../shared/datasets/mnist
    .venv/bin/python benchmarks/measure_arcane.py --selection-only     # selection per class
    .venv/bin/python benchmarks/measure_arcane.py --data-root DIR --accuracy-only  # any IDX set

Everything in one process, side by side, so that ratios are comparable (the machine is
noisy; compare ratios, never absolute seconds across runs). Both strategies use directory
stores (as the CLI and ``expunge bench`` do) and one torch thread. Retrain uses the E1
recipe (MLP 784-256-10, 10 epochs of SGD, lr 0.05, momentum 0.9, batch 128).

Measured: test accuracy, fit seconds, ``--requests`` single-id requests on random ids
(Retrain: the first ``--retrain-requests``, each a full retrain), the share of them that
retrained nothing, then one batch of ``--batch-fraction`` of the training set; then the
same single-id requests through a reopened store (``expunge.open`` per request, as every
CLI command does) on a copy fitted the same way; then the greedy selection of every
class with the old settings (128-d pixel projection, 2,000 picks, the numpy loop) and the
new ones (1,000 picks on the 128-d projection of the conv features), numpy vs compiled.
Prints markdown tables; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import expunge
from expunge.data import load_dataset
from expunge.strategies.exact._class_state import selection_features
from expunge.strategies.exact._features import FeatureMap
from expunge.strategies.exact._selection import greedy_logdet, unit_rows
from expunge.strategies.exact.arcane import ARCANE

RECIPE = dict(model="mlp", model_params={"hidden_sizes": [256]}, epochs=10, batch_size=128,
              lr=0.05, momentum=0.9, seed=0)


def measure(make: Any, train: Any, test: Any, singles: list[int], batch: list[int],
            where: Path) -> dict[str, Any]:
    """Fit, forget ``singles`` one by one, then ``batch`` at once; what each cost."""
    strategy = make(store=where)
    started = time.perf_counter()
    strategy.fit(train)
    fit_seconds = time.perf_counter() - started
    accuracy = strategy.score(test)
    reports = []
    for i in singles:
        reports.append(strategy.forget([i]))
    batch_report = strategy.forget(batch)
    seconds = [r.seconds for r in reports]
    out = {
        "test_accuracy": accuracy, "fit_seconds": fit_seconds, "forget_seconds": seconds,
        "mean_forget_seconds": statistics.mean(seconds),
        "median_forget_seconds": statistics.median(seconds),
        "free_requests": sum(r.sample_passes == 0 for r in reports) / len(reports),
        "reselected": sum(bool(r.details.get("classes_reselected")) for r in reports),
        "batch_seconds": batch_report.seconds, "batch_ids": len(batch),
        "test_accuracy_after_batch": strategy.score(test),
    }
    strategy.close()
    return out


def reopened(make: Any, train: Any, singles: list[int], where: Path) -> dict[str, Any]:
    """The same single-id requests, each through ``expunge.open`` (the CLI path)."""
    strategy = make(store=where)
    strategy.fit(train)
    strategy.close()
    opens, forgets = [], []
    for i in singles:
        started = time.perf_counter()
        model = expunge.open(where)
        opened = time.perf_counter()
        model.forget([i])
        forgets.append(time.perf_counter() - opened)
        opens.append(opened - started)
        model.close()
    return {"open_seconds": opens, "forget_seconds": forgets,
            "mean_open_seconds": statistics.mean(opens),
            "mean_forget_seconds": statistics.mean(forgets)}


def selection_times(train: Any) -> list[dict[str, Any]]:
    """Greedy selection per class: old settings (numpy) and new ones (numpy and compiled)."""
    old_map = FeatureMap("projection", 128, 0)
    new_map = FeatureMap("conv", 512, 0)
    rows = []
    for k in range(train.n_classes):
        ids = np.sort(train.ids_of_class(k))
        X = train.select(ids).X
        old_features = unit_rows(old_map.rowwise(X))
        t0 = time.perf_counter()
        density = new_map.rowwise(X)
        new_features = selection_features(density, 0)
        t1 = time.perf_counter()
        row: dict[str, Any] = {"class": k, "n": len(ids), "conv_features_s": t1 - t0}
        for name, features, m, method in [
            ("old_numpy", old_features, 2000, "numpy"), ("new_numpy", new_features, 1000, "numpy"),
            ("new_eager", new_features, 1000, "eager"), ("new_lazy", new_features, 1000, "lazy"),
        ]:
            started = time.perf_counter()
            result = greedy_logdet(features, ids, n_select=m, noise=0.1, method=method)
            row[f"{name}_s"] = time.perf_counter() - started
            row[f"{name}_picks"] = len(result)
        rows.append(row)
        print(f"  class {k}: " + ", ".join(f"{key} {value:.3f}" for key, value in row.items()
                                            if key.endswith("_s")), flush=True)
    return rows


def accuracy_only(train: Any, test: Any) -> dict[str, float]:
    retrain = expunge.Retrain(**RECIPE).fit(train)
    arcane = ARCANE(seed=0).fit(train)
    return {"retrain": retrain.score(test), "arcane": arcane.score(test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--retrain-requests", type=int, default=3)
    parser.add_argument("--reopen-requests", type=int, default=10)
    parser.add_argument("--batch-fraction", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--selection-only", action="store_true")
    parser.add_argument("--accuracy-only", action="store_true")
    parser.add_argument("--out", default=None, help="write results JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_dataset("mnist", root=args.data_root, limit_train=args.limit_train)
    results: dict[str, Any] = {"config": vars(args)}
    if args.accuracy_only:
        results["accuracy"] = accuracy_only(train, test)
        print(json.dumps(results["accuracy"]))
    elif args.selection_only:
        results["selection"] = selection_times(train)
    else:
        rng = np.random.default_rng(1)
        chosen = rng.choice(train.ids, size=args.requests + int(args.batch_fraction * len(train)),
                            replace=False).tolist()
        singles, batch = chosen[:args.requests], chosen[args.requests:]
        scratch = Path(tempfile.mkdtemp(prefix="measure-arcane-"))
        try:
            print("retrain ...", flush=True)
            results["retrain"] = measure(lambda **kw: expunge.Retrain(**RECIPE, **kw), train,
                                         test, singles[:args.retrain_requests], batch,
                                         scratch / "retrain")
            print("arcane ...", flush=True)
            results["arcane"] = measure(lambda **kw: ARCANE(seed=0, **kw), train, test,
                                        singles, batch, scratch / "arcane")
            print("arcane, reopened per request ...", flush=True)
            results["arcane_reopened"] = reopened(lambda **kw: ARCANE(seed=0, **kw), train,
                                                  singles[:args.reopen_requests],
                                                  scratch / "arcane-cli")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        r, a, c = results["retrain"], results["arcane"], results["arcane_reopened"]
        print(f"\nMNIST {len(train)} train / {len(test)} test; torch threads {args.threads}; "
              f"{args.requests} single-id requests (Retrain: the first "
              f"{args.retrain_requests}), then one batch of {len(batch)} ids.\n")
        print("| | Retrain | ARCANE | ratio |\n|---|---|---|---|")
        print(f"| test accuracy | {r['test_accuracy']:.4f} | {a['test_accuracy']:.4f} | "
              f"{a['test_accuracy'] - r['test_accuracy']:+.4f} |")
        print(f"| fit s | {r['fit_seconds']:.1f} | {a['fit_seconds']:.1f} | "
              f"{a['fit_seconds'] / r['fit_seconds']:.2f}x |")
        print(f"| mean s / id | {r['mean_forget_seconds']:.2f} | {a['mean_forget_seconds']:.3f} "
              f"| {r['mean_forget_seconds'] / a['mean_forget_seconds']:.0f}x faster |")
        print(f"| median s / id | {r['median_forget_seconds']:.2f} | "
              f"{a['median_forget_seconds']:.3f} | "
              f"{r['median_forget_seconds'] / a['median_forget_seconds']:.0f}x faster |")
        print(f"| 1 % batch s | {r['batch_seconds']:.2f} | {a['batch_seconds']:.2f} | "
              f"{r['batch_seconds'] / a['batch_seconds']:.1f}x faster |")
        print(f"| requests retraining nothing | 0 % | {a['free_requests']:.0%} | |")
        print(f"| accuracy after the batch | {r['test_accuracy_after_batch']:.4f} | "
              f"{a['test_accuracy_after_batch']:.4f} | |")
        print(f"\nReopened per request (CLI path), {len(c['forget_seconds'])} requests: "
              f"forget {c['mean_forget_seconds']:.3f} s mean (in-process "
              f"{statistics.mean(a['forget_seconds'][:len(c['forget_seconds'])]):.3f} s on "
              f"the same ids), open {c['mean_open_seconds']:.2f} s mean.")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        results["versions"] = {"expunge": expunge.__version__, "torch": torch.__version__,
                               "python": platform.python_version(), "git_commit": commit}
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()

"""ARCANE vs SISA vs Retrain on MNIST (issue 3): accuracy, forget time, retrained samples.

    .venv/bin/python benchmarks/measure_arcane.py --data-root ../shared/datasets/mnist
    .venv/bin/python benchmarks/measure_arcane.py --ablation      # + learner/selection table

Everything in one run, so that the times are comparable side by side (this machine is
noisy; compare ratios). The SGD models share one recipe (MLP 784-256, SGD lr 0.05,
momentum 0.9, batch 128) and the same total epochs: Retrain trains 10 epochs; SISA has
S = K = 10 shards and 5 slices with SISA's schedule (about 10 shard-epochs); ARCANE-SVDD
trains each class 10 epochs over 5 cumulative blocks with the same schedule. ARCANE's
default learner (a Gaussian density) has no SGD.

For each strategy: test accuracy, fit time, median time over ``--requests`` sequential
single-id requests (the same random ids for everyone), sample-passes and distinct samples
retrained per request, and one batch forgetting 1 % of the training set at once. Then the
time to select one class's representative samples. Prints markdown tables; ``--out`` also
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import expunge
from expunge.data import load_dataset
from expunge.strategies.exact._selection import greedy_logdet, unit_rows
from expunge.strategies.exact.arcane import ARCANE


def measure(strategy: Any, train: Any, test: Any, singles: list[int], batch: list[int]) -> dict:
    """Fit, forget ``singles`` one by one, then ``batch`` at once; what each cost."""
    started = time.perf_counter()
    strategy.fit(train)
    fit_seconds = time.perf_counter() - started
    accuracy = strategy.score(test)
    reports = [strategy.forget([i]) for i in singles]
    batch_report = strategy.forget(batch)
    return {
        "test_accuracy": accuracy,
        "fit_seconds": fit_seconds,
        "forget_seconds": [r.seconds for r in reports],
        "median_forget_seconds": statistics.median(r.seconds for r in reports),
        "sample_passes": [r.sample_passes for r in reports],
        "median_sample_passes": statistics.median(r.sample_passes for r in reports),
        "mean_sample_passes": statistics.mean(r.sample_passes for r in reports),
        "median_samples_retrained": statistics.median(r.samples_retrained for r in reports),
        "free_requests": sum(r.sample_passes == 0 for r in reports) / len(reports),
        "n_requests": len(reports),
        "batch_seconds": batch_report.seconds,
        "batch_sample_passes": batch_report.sample_passes,
        "batch_samples_retrained": batch_report.samples_retrained,
        "batch_submodels_retrained": len(batch_report.submodels_retrained),
        "test_accuracy_after_batch": strategy.score(test),
    }


def selection_times(train: Any, arcane: ARCANE) -> list[dict]:
    rows = []
    for k in range(train.n_classes):
        ids = np.sort(train.ids_of_class(k))
        started = time.perf_counter()
        features = unit_rows(arcane.feature_map().rowwise(train.select(ids).X))
        featured = time.perf_counter()
        greedy_logdet(features, ids, n_select=arcane.n_selected,
                      threshold=arcane.selection_threshold, noise=arcane.selection_noise)
        rows.append({"class": k, "n": len(ids), "features_s": featured - started,
                     "greedy_s": time.perf_counter() - featured,
                     "total_s": time.perf_counter() - started})
    return rows


def ablation(train: Any, test: Any, recipe: dict) -> list[dict]:
    """Learner x selection x calibration: accuracy, fit time, share of free deletions."""
    rows = []
    settings = [
        ("gaussian", dict(n_selected=500)), ("gaussian", dict(n_selected=1000)),
        ("gaussian", dict(n_selected=2000)), ("gaussian", dict(n_selected=3000)),
        ("gaussian", dict(selection=False)),
        ("gaussian", dict(n_selected=2000, calibration="zscore")),
        ("gaussian", dict(n_selected=2000, shrinkage=0.1)),
        ("gaussian", dict(n_selected=2000, shrinkage=0.3)),
        ("svdd", dict(n_selected=2000)), ("svdd", dict(selection=False)),
        ("svdd", dict(selection=False, calibration="raw")),
    ]
    for learner, extra in settings:
        params = dict(recipe, learner=learner, **extra) if learner == "svdd" else \
            dict(learner=learner, **extra)
        strategy = ARCANE(**params)
        started = time.perf_counter()
        strategy.fit(train)
        seconds = time.perf_counter() - started
        selected = sum(s.n_trained for s in strategy.fitted_.submodels)
        rows.append({"learner": learner, "setting": extra, "test_accuracy": strategy.score(test),
                     "fit_seconds": seconds, "selected": selected,
                     "free_deletion_share": 1 - selected / len(train)})
        print(f"  ablation {learner} {extra}: acc {rows[-1]['test_accuracy']:.4f}, "
              f"fit {seconds:.1f} s, {selected} selected", flush=True)
    return rows


def order_ablation(train: Any, cls: int = 3, trials: int = 30) -> dict:
    """First block a selected deletion changes, for order="hash" vs order="greedy".

    Uses one class (its plan only; nothing is trained) and ``trials`` random selected ids.
    The retrained share of the class assumes equal epochs per cumulative block.
    """
    data = train.where(train.y.numpy() == cls)
    strategy = ARCANE()

    def plan_blocks(subset: Any, order: str) -> list[set[int]]:
        strategy.order = order
        return [set(b.tolist()) for b in strategy._plans(subset)[cls].blocks]

    full = {order: plan_blocks(data, order) for order in ("hash", "greedy")}
    selected = np.sort(np.concatenate([np.array(sorted(b)) for b in full["hash"]]))
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {"hash": [], "greedy": [], "changed": []}
    n_blocks = strategy.n_blocks
    for x in rng.choice(selected, size=trials, replace=False).tolist():
        reduced = data.drop([x])
        for order in ("hash", "greedy"):
            after = plan_blocks(reduced, order)
            first = next((b for b in range(n_blocks) if after[b] != full[order][b]), n_blocks)
            result[order].append(first)
        before_ids = set().union(*full["hash"])
        result["changed"].append(len(before_ids - set().union(*after)))
    total = sum(range(1, n_blocks + 1))
    for order in ("hash", "greedy"):
        shares = [sum(range(f + 1, n_blocks + 1)) / total for f in result[order]]
        result[f"{order}_retrained_share"] = float(np.mean(shares))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--retrain-requests", type=int, default=3,
                        help="Retrain forgets only the first few ids: each is a full retrain")
    parser.add_argument("--batch-fraction", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--skip", default="", help="comma-separated strategy rows to skip")
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--out", default=None, help="write results JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_dataset("mnist", root=args.data_root, limit_train=args.limit_train)
    recipe = dict(model="mlp", model_params={"hidden_sizes": [256]}, epochs=args.epochs,
                  batch_size=128, lr=0.05, momentum=0.9, seed=0)
    rng = np.random.default_rng(1)
    chosen = rng.choice(train.ids, size=args.requests + int(args.batch_fraction * len(train)),
                        replace=False).tolist()
    singles, batch = chosen[:args.requests], chosen[args.requests:]
    candidates = {
        "retrain": lambda: expunge.Retrain(**recipe),
        "sisa (S=10, R=5)": lambda: expunge.SISA(**recipe, n_shards=10, n_slices=5),
        "arcane gaussian (default)": lambda: ARCANE(),
        "arcane svdd (same recipe)": lambda: ARCANE(**recipe, learner="svdd"),
        "arcane svdd, no selection": lambda: ARCANE(**recipe, learner="svdd", selection=False),
    }
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    results: dict[str, dict] = {}
    for name, make in candidates.items():
        if any(s in name for s in skip):
            continue
        print(f"running {name} ...", flush=True)
        ids = singles[:args.retrain_requests] if name == "retrain" else singles
        results[name] = measure(make(), train, test, ids, batch)
    default = ARCANE()
    selection = selection_times(train, default)
    share = 1 - min(default.n_selected or len(train), len(train)) * train.n_classes / len(train)
    print(f"\nMNIST {len(train)} train / {len(test)} test; torch threads {args.threads}; "
          f"{args.requests} sequential single-id requests (Retrain: the first "
          f"{args.retrain_requests}), then one batch of {len(batch)} ids "
          f"({args.batch_fraction:.0%}). Same random ids for every strategy.\n")
    print("| strategy | test acc. | fit s | median forget s | sample-passes / request "
          "(median, mean) | distinct retrained (median) | requests retraining nothing "
          "| 1 % batch: s | batch sample-passes | batch sub-models | acc. after batch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['test_accuracy']:.4f} | {r['fit_seconds']:.1f} | "
              f"{r['median_forget_seconds']:.2f} | {r['median_sample_passes']:.0f}, "
              f"{r['mean_sample_passes']:.0f} | {r['median_samples_retrained']:.0f} | "
              f"{r['free_requests']:.0%} | {r['batch_seconds']:.1f} | "
              f"{r['batch_sample_passes']} | {r['batch_submodels_retrained']} | "
              f"{r['test_accuracy_after_batch']:.4f} |")
    print(f"\nARCANE default: a random id is unselected, so its deletion retrains nothing, "
          f"with probability {share:.0%} (n_selected={default.n_selected} of ~"
          f"{len(train) // train.n_classes} per class).")
    totals = [row["total_s"] for row in selection]
    print(f"\nSelection per class (n_selected={ARCANE().n_selected}, 128 projected features): "
          f"median {statistics.median(totals):.2f} s, max {max(totals):.2f} s over "
          f"{len(totals)} classes of {min(r['n'] for r in selection)}-"
          f"{max(r['n'] for r in selection)} images (features "
          f"{statistics.median(r['features_s'] for r in selection):.2f} s, greedy "
          f"{statistics.median(r['greedy_s'] for r in selection):.2f} s median).")
    rows = ablation(train, test, recipe) if args.ablation else []
    orders = order_ablation(train) if args.ablation else {}
    if orders:
        print(f"\nSelected deletions in class 3 ({len(orders['hash'])} random selected ids): "
              f"selected samples replaced {orders['changed']}; first changed block with "
              f"order='hash' {orders['hash']} ({orders['hash_retrained_share']:.1%} of the "
              f"class retrained on average), with order='greedy' {orders['greedy']} "
              f"({orders['greedy_retrained_share']:.1%}).")
    if rows:
        print("\n| learner | setting | test acc. | fit s | selected | deletions retraining "
              "nothing |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['learner']} | {row['setting']} | {row['test_accuracy']:.4f} | "
                  f"{row['fit_seconds']:.1f} | {row['selected']} | "
                  f"{row['free_deletion_share']:.0%} |")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        Path(args.out).write_text(json.dumps({
            "config": vars(args), "results": results, "selection": selection,
            "ablation": rows, "order_ablation": orders, "requests": singles,
            "batch_size": len(batch),
            "versions": {"expunge": expunge.__version__, "torch": torch.__version__,
                         "python": platform.python_version()}, "git_commit": commit,
        }, indent=2, default=str))


if __name__ == "__main__":
    main()

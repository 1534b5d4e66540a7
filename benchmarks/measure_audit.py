"""What a replay audit costs next to a full retrain: all sub-models vs a random few.

    .venv/bin/python benchmarks/measure_audit.py             # digits, seconds
    .venv/bin/python benchmarks/measure_audit.py --dataset mnist --data-root DIR  # MNIST

For each exact strategy: fit into a store, forget a few ids (so the audit checks a store
with history), then time ``audit("all")`` (every sub-model replayed, every checkpoint
compared) and ``audit(1)`` (one sub-model drawn at random), next to a fresh ``fit`` of the
retained data (what retraining from scratch costs). One torch thread, like training.
Prints a markdown table; ratios are measured side by side in one process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import expunge
from expunge.data import load_dataset


def configurations(dataset: str) -> list[tuple[str, dict[str, Any]]]:
    if dataset == "digits":
        train = {"model": "mlp", "epochs": 10, "batch_size": 32, "lr": 0.05, "momentum": 0.9}
        return [("retrain", train), ("sisa", {**train, "n_shards": 5, "n_slices": 5}),
                ("arcane", {})]
    train = {"model": "mlp", "epochs": 10, "batch_size": 128, "lr": 0.05, "momentum": 0.9}
    return [("retrain", {**train, "epochs": 5}),
            ("sisa", {**train, "n_shards": 5, "n_slices": 5}), ("arcane", {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=("digits", "mnist"))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--forget", type=int, default=3, help="requests before the audit")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, _ = load_dataset(args.dataset, root=args.data_root)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, params in configurations(args.dataset):
            cls = expunge.get_strategy(name)
            m = cls(**params, store=Path(tmp) / name)
            m.fit(train)
            for _ in range(args.forget):
                m.forget([int(rng.choice(m.training_data.ids))])
            started = time.perf_counter()
            twin = cls(**params).fit(m.training_data)
            retrain = time.perf_counter() - started
            assert twin.fingerprint() == m.fingerprint()
            full = m.audit("all")
            one = m.audit(1, seed=0)
            assert full.passed and one.passed
            rows.append((name, full.submodels_total, retrain, full.seconds, one.seconds,
                         full.checkpoints_checked, one.checkpoints_checked))
            m.close()
    print(f"{args.dataset}: {len(train):,} training samples, {args.forget} requests before "
          "the audit, 1 torch thread")
    print()
    print("| strategy | sub-models | retrain (s) | audit all (s) | all / retrain | "
          "audit 1 (s) | 1 / all | checkpoints all / 1 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, total, retrain, full, one, c_full, c_one in rows:
        print(f"| {name} | {total} | {retrain:.2f} | {full:.2f} | {full / retrain:.2f} | "
              f"{one:.2f} | {one / full:.2f} | {c_full} / {c_one} |")


if __name__ == "__main__":
    main()

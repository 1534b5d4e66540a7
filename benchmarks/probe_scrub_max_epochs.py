"""Which part of SCRUB's request ruins E8b's full-data model: the max (ascent) epochs or
the rate? (docs/results.md, "E8b for the defaults chosen on three tuning seeds")

    .venv/bin/python benchmarks/probe_scrub_max_epochs.py --data-root ../shared/datasets/mnist

Fits E8b's recipe once (MNIST, MLP 784-256-10, 10 epochs, training seed 0) and forgets the
same random 1 % from copies of it with SCRUB's defaults but for one parameter at a time;
prints the test accuracy after each request (Retrain: about 97.9 %). About 1.5 minutes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import expunge
from expunge.data import load_dataset, random_forget_ids

RECIPE = {"model": "mlp", "model_params": {"hidden_sizes": [256]}, "epochs": 10,
          "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "seed": 0}
VARIANTS = [{"max_epochs": 0}, {"max_epochs": 1}, {"max_epochs": 2}, {},
            {"unlearn_lr": 0.05}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    args = parser.parse_args()
    train, test = load_dataset("mnist", root=args.data_root)
    ids = random_forget_ids(train, fraction=0.01, seed=0)
    with tempfile.TemporaryDirectory() as scratch:
        fitted = Path(scratch) / "fitted"
        started = time.perf_counter()
        expunge.get_strategy("scrub")(**RECIPE, store=fitted).fit(train).close()
        print(f"fit {time.perf_counter() - started:.1f} s; forgetting {len(ids)} ids")
        for i, params in enumerate(VARIANTS):
            copy = Path(scratch) / f"copy-{i}"
            shutil.copytree(fitted, copy)
            strategy = expunge.open(copy, **params)
            strategy.forget(ids)
            accuracy = strategy.score(test)
            print(f"{params or 'defaults'}: test accuracy {100 * accuracy:.2f} %")
            strategy.close()


if __name__ == "__main__":
    main()

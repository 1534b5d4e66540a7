"""What one request costs in writing the retained data: 16 id-keyed buckets vs one blob.

    .venv/bin/python benchmarks/measure_stored_data.py --data-root ../shared/datasets/mnist

Every ``forget`` must leave on disk exactly the retained training data. Before buckets, the
whole dataset was one blob, copied and fsynced on every request (188 MB for MNIST). This
writes MNIST once both ways, then removes one id ``--repeats`` times and times the write of
the new retained data, side by side in one process (one configuration after the other,
alternating; medians). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from expunge.data import load_dataset
from expunge.store import DirectoryStore
from expunge.strategies._stored_data import write_training_data


def _one_blob(store: DirectoryStore, data, name: str) -> None:
    """The layout before buckets: every row in one blob, rewritten on every request."""
    store.write_blob(name, {"X": data.X, "y": data.y, "ids": torch.from_numpy(data.ids.copy())},
                     {"n_classes": str(data.n_classes)}, shared=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, _ = load_dataset("mnist", root=args.data_root)
    positions = np.arange(len(train), dtype=np.int64)
    times: dict[str, list[float]] = {"16 buckets": [], "one blob": []}
    with tempfile.TemporaryDirectory() as tmp:
        buckets = DirectoryStore(Path(tmp) / "buckets", create=True)
        single = DirectoryStore(Path(tmp) / "single", create=True)
        for store in (buckets, single):  # blob writes record keyed digests: a key first
            with store.writing():
                store.ensure_key()
        write_training_data(buckets, train, positions, "mnist")
        _one_blob(single, train, "data/all-0")
        data = train
        for r in range(args.repeats):
            keep = data.ids != data.ids[r * 997 % len(data)]
            data, positions = data.where(keep), positions[keep]
            started = time.perf_counter()
            write_training_data(buckets, data, positions, "mnist")
            times["16 buckets"].append(time.perf_counter() - started)
            started = time.perf_counter()
            _one_blob(single, data, f"data/all-{r + 1}")
            times["one blob"].append(time.perf_counter() - started)
        buckets.close()
        single.close()
    print(f"MNIST train ({len(train):,} rows, {train.X.numel() * 4 / 2**20:.0f} MB), "
          f"one id removed per request, {args.repeats} requests, medians:\n")
    print("| layout | seconds to write the retained data |\n|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} |")
    ratio = statistics.median(times["one blob"]) / statistics.median(times["16 buckets"])
    print(f"\nbuckets are {ratio:.1f}x faster per single-id request")


if __name__ == "__main__":
    main()

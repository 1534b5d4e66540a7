"""What one request costs in writing the retained data: 16 id-keyed buckets, compressed
(today) or not, vs one blob (the first layout).

    .venv/bin/python benchmarks/measure_stored_data.py --data-root ../shared/datasets/mnist

Every ``forget`` must leave on disk exactly the retained training data. Before buckets, the
whole dataset was one blob, copied and fsynced on every request (188 MB for MNIST); with
buckets a request rewrites the buckets it touches (one for one id, all 16 for a random 1 %
batch); with compression each rewritten bucket is one zstd frame (``store/_blobs.py``).
This writes MNIST once in each layout, then serves ``--repeats`` requests of one id and of
1 % of the ids, timing the write of the new retained data side by side in one process (the
layouts alternate within each request; medians, one thread). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from expunge.data import IndexedDataset, load_dataset
from expunge.store import DirectoryStore
from expunge.strategies._stored_data import write_training_data


class UncompressedStore(DirectoryStore):
    """The store as it wrote data before compression (plain safetensors buckets)."""

    def write_blob(self, name: str, tensors: Any, metadata: Any = None, *,
                   shared: bool = False, compress: bool = False) -> None:
        super().write_blob(name, tensors, metadata, shared=shared, compress=False)


def _one_blob(store: DirectoryStore, data: IndexedDataset, positions: np.ndarray,
              name: str) -> list[str]:
    """The layout before buckets: every row in one blob, rewritten on every request."""
    store.write_blob(name, {"X": data.X, "y": data.y, "ids": torch.from_numpy(data.ids.copy())},
                     {"n_classes": str(data.n_classes)}, shared=True)
    return [name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, _ = load_dataset("mnist", root=args.data_root)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        stores = {"16 buckets, zstd (today)": DirectoryStore(Path(tmp) / "zstd", create=True),
                  "16 buckets, plain": UncompressedStore(Path(tmp) / "plain", create=True),
                  "one blob, plain": UncompressedStore(Path(tmp) / "single", create=True)}
        for store in stores.values():  # blob writes record keyed digests: a key first
            with store.writing():
                store.ensure_key()
        writers = {name: (lambda s, d, p, r: write_training_data(s, d, p, "mnist"))
                   for name in stores}
        writers["one blob, plain"] = lambda s, d, p, r: _one_blob(s, d, p, f"data/all-{r}")
        times: dict[tuple[str, str], list[float]] = {}
        sizes: dict[str, int] = {}
        for request, fraction in (("one id", 0.0), ("1 % batch", 0.01)):
            data, positions = train, np.arange(len(train), dtype=np.int64)
            live: dict[str, list[str]] = {}
            for name, store in stores.items():
                live[name] = writers[name](store, data, positions, -1)
            for r in range(args.repeats):
                count = max(1, int(fraction * len(data)))
                gone = rng.choice(data.ids, size=count, replace=False)
                keep = ~np.isin(data.ids, gone)
                data, positions = data.where(keep), positions[keep]
                for name, store in stores.items():
                    started = time.perf_counter()
                    names = writers[name](store, data, positions, r)
                    times.setdefault((name, request), []).append(time.perf_counter() - started)
                    for old in set(live[name]) - set(names):  # what forget purges
                        store.delete_blob(old)
                    live[name] = names
            for name, store in stores.items():
                sizes[name] = sum(store.blob_size(b) for b in live[name])
        for store in stores.values():
            store.close()
    print(f"MNIST train ({len(train):,} rows, {train.X.numel() * 4 / 2**20:.0f} MB as float32), "
          f"{args.repeats} requests of each size, medians, one thread:\n")
    print("| layout | one id (s) | 1 % batch (s) | retained data on disk (MB) |\n|---|---|---|---|")
    for name in stores:
        print(f"| {name} | {statistics.median(times[(name, 'one id')]):.3f} | "
              f"{statistics.median(times[(name, '1 % batch')]):.3f} | {sizes[name] / 2**20:.1f} |")


if __name__ == "__main__":
    main()

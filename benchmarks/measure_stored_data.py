"""What one request costs in writing the retained data: 16 id-keyed buckets rewritten in
place (today), or written anew (compressed or not), vs one blob (the first layout).

    .venv/bin/python benchmarks/measure_stored_data.py --data-root ../shared/datasets/mnist

Every ``forget`` must leave on disk exactly the retained training data. Before buckets, the
whole dataset was one blob, copied and fsynced on every request (188 MB for MNIST); with
buckets a request rewrote the buckets it touched (one for one id, all 16 for a random 1 %
batch), then each as one zstd frame; today a touched bucket keeps its file and has the
forgotten rows overwritten in place (``store/_rewrite.py``). This writes MNIST once in each
layout, then serves ``--repeats`` requests of one id and of 1 % of the ids, timing the
whole data part of a request side by side in one process: staging or writing the new
buckets, the commit, and the in-place patches or the purge after it (the layouts alternate
within each request; medians, one thread). ``--raw`` stores MNIST's uint8 bytes (the
stored dtype with its transform) instead of float32. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
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


class CopyStore(DirectoryStore):
    """A store that writes every touched bucket anew (no in-place rewrite), compressed
    with zstd or not: the layouts before in-place rewrites."""

    def __init__(self, root: Path, *, compress: bool) -> None:
        super().__init__(root, create=True)
        self.compress = compress

    def rewrite_blob(self, source: str, target: str, plan: Any) -> bool:
        return False

    def write_blob(self, name: str, tensors: Any, metadata: Any = None, *,
                   shared: bool = False, compress: bool = False) -> None:
        super().write_blob(name, tensors, metadata, shared=shared, compress=self.compress)


def _commit(store: DirectoryStore, names: list[str], request: int) -> None:
    """Commit ``names`` as the live data, then purge (and apply staged rewrites)."""
    entry = {"kind": "forget" if request >= 0 else "fit", "strategy": "bench",
             "guarantee": "exact", "ids": [], "fingerprint_before": None,
             "fingerprint_after": str(request), "samples_retrained": 0, "sample_passes": 0,
             "seconds": 0.0}
    store.commit({"data": names}, entry, live=set(names), expected=store.committed_head())
    store.collect_garbage(set(names))


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
    parser.add_argument("--raw", action="store_true", help="uint8 MNIST (its stored dtype)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, _ = load_dataset("mnist", root=args.data_root, raw=args.raw)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        stores = {"16 buckets, in place (today)": DirectoryStore(Path(tmp) / "inplace",
                                                                 create=True),
                  "16 buckets anew, zstd": CopyStore(Path(tmp) / "zstd", compress=True),
                  "16 buckets anew, plain": CopyStore(Path(tmp) / "plain", compress=False),
                  "one blob, plain": CopyStore(Path(tmp) / "single", compress=False)}
        for name, store in stores.items():  # blob writes record keyed digests: a key first
            with store.writing():
                store.ensure_key()
                store.write_manifest({"store_id": name})
        times: dict[tuple[str, str], list[float]] = {}
        sizes: dict[str, int] = {}
        for request, fraction in (("one id", 0.0), ("1 % batch", 0.01)):
            data, positions = train, np.arange(len(train), dtype=np.int64)
            live: dict[str, list[str]] = {}
            for name, store in stores.items():
                with store.writing():
                    live[name] = (_one_blob(store, data, positions, "data/all--1")
                                  if name.startswith("one blob") else
                                  write_training_data(store, data, positions, "mnist"))
                    _commit(store, live[name], -1)
            os.sync()  # the stores at rest, as fit leaves them
            for r in range(args.repeats):
                count = max(1, int(fraction * len(data)))
                gone = rng.choice(data.ids, size=count, replace=False)
                keep = ~np.isin(data.ids, gone)
                before = data.ids
                data, positions = data.where(keep), positions[keep]
                for name, store in stores.items():
                    started = time.perf_counter()
                    with store.writing():
                        names = (_one_blob(store, data, positions, f"data/all-{r}")
                                 if name.startswith("one blob") else
                                 write_training_data(store, data, positions, "mnist",
                                                     previous_ids=before))
                        _commit(store, names, r)
                    times.setdefault((name, request), []).append(time.perf_counter() - started)
                    live[name] = names
            for name, store in stores.items():
                sizes[name] = sum(store.blob_size(b) for b in live[name])
        for store in stores.values():
            store.close()
    dtype = "uint8" if args.raw else "float32"
    print(f"MNIST train ({len(train):,} rows, {dtype}), {args.repeats} requests of each "
          "size, data part of each request (write + commit + purge), medians, one thread:\n")
    print("| layout | one id (s) | 1 % batch (s) | retained data on disk (MB) |\n|---|---|---|---|")
    for name in stores:
        print(f"| {name} | {statistics.median(times[(name, 'one id')]):.3f} | "
              f"{statistics.median(times[(name, '1 % batch')]):.3f} | {sizes[name] / 2**20:.1f} |")


if __name__ == "__main__":
    main()

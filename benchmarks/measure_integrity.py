"""What the store's integrity checks cost on full MNIST: verify(), a reopen, one request.

    .venv/bin/python benchmarks/measure_integrity.py --data-root ../shared/datasets/mnist

Fits SISA (logreg, 5 shards x 5 slices, 5 epochs; the cheapest exact request there is, so
the hashing is compared with a small request) into a store, then times, ``--repeats``
times each (medians):

* ``verify()``: the whole check, and the part spent hashing (every live file re-hashed
  with the store's key);
* ``expunge.open``: the reopen, and the part spent hashing (the training data and every
  checkpoint it reads are checked against their committed digests);
* one ``forget`` of a single id: the request, and the part spent hashing (digests of the
  files it writes and of the checkpoint it resumes from, the manifest, the state).

Hashing time is measured by wrapping the store's two hashing entry points
(``StoreKey.digest`` and ``DirectoryStore.blob_digest``), so it counts exactly the new
work. A raw SHA-256 pass over the live bytes is printed for reference. Prints markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import expunge
from expunge.data import load_dataset
from expunge.store import DirectoryStore, StoreKey
from expunge.store._layout import blob_path

PARAMS = dict(model="logreg", n_shards=5, n_slices=5, epochs=5, batch_size=128, lr=0.05,
              momentum=0.9, seed=0)


class HashTimer:
    """Seconds spent in the store's hashing entry points while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[HashTimer]:
        originals = (StoreKey.digest, DirectoryStore.blob_digest)

        def timed(function: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - started
            return wrapper

        StoreKey.digest = timed(originals[0])  # type: ignore[method-assign]
        DirectoryStore.blob_digest = timed(originals[1])  # type: ignore[method-assign]
        try:
            yield self
        finally:
            StoreKey.digest, DirectoryStore.blob_digest = originals  # type: ignore[method-assign]


def measure(call: Any) -> tuple[float, float, Any]:
    timer = HashTimer()
    with timer.installed():
        started = time.perf_counter()
        result = call()
        total = time.perf_counter() - started
    return total, timer.seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, _ = load_dataset("mnist", root=args.data_root)
    rows: dict[str, list[tuple[float, float]]] = {"verify()": [], "expunge.open": [],
                                                  "forget (1 id)": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s"
        started = time.perf_counter()
        fit_total, fit_hash, strategy = measure(
            lambda: expunge.SISA(**PARAMS, store=path).fit(train))
        print(f"fit: {time.perf_counter() - started:.1f} s, of which hashing {fit_hash:.3f} s")
        state = strategy.store_.read_state()
        live = sum(blob_path(path, name).stat().st_size for name in state["blobs"])
        started = time.perf_counter()
        for name in state["blobs"]:
            hashlib.sha256(blob_path(path, name).read_bytes()).digest()
        raw = time.perf_counter() - started
        rng = np.random.default_rng(0)
        for _ in range(args.repeats):
            total, hashing, count = measure(strategy.verify)
            rows["verify()"].append((total, hashing))
            total, hashing, reopened = measure(lambda: expunge.open(path))
            rows["expunge.open"].append((total, hashing))
            target = int(rng.choice(reopened.training_data.ids))
            total, hashing, _ = measure(lambda: reopened.forget([target]))  # noqa: B023
            rows["forget (1 id)"].append((total, hashing))
            strategy.close()
            strategy = reopened
        strategy.close()
    print(f"\nMNIST train ({len(train):,} rows); store: {len(state['blobs'])} live files, "
          f"{live / 2**20:.0f} MB; raw SHA-256 of them: {raw:.3f} s "
          f"({live / 2**20 / raw:.0f} MB/s); torch threads 1; medians of {args.repeats}\n")
    print("| operation | total (s) | hashing (s) | hashing share |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        total = statistics.median(v[0] for v in values)
        hashing = statistics.median(v[1] for v in values)
        print(f"| {name} | {total:.3f} | {hashing:.3f} | {100 * hashing / total:.1f} % |")


if __name__ == "__main__":
    main()

"""Store size and peak training memory with data kept in its stored dtype (issue 15, item 4).

    .venv/bin/python benchmarks/measure_data_memory.py --data-root ../shared/datasets/mnist

Two measurements on MNIST's 60,000 training images, one torch thread:

* **store size**: Retrain and SISA (``logreg``, 2 epochs, SISA with 5 shards of 2 slices:
  the data part of a store does not depend on the model; ``--store-strategies`` adds
  ARCANE, with its defaults) fitted into a directory store on
  the uint8 data (``raw=True``) and on the float32 loader, then one single-id and one
  600-id request. The target is
  ``store bytes <= 1.3 x raw bytes of the retained data + checkpoint bytes``; the table
  gives ``(store - checkpoints) / raw``.
* **peak memory**: each configuration runs in a fresh process (peak RSS from
  ``getrusage``): a bare PyTorch loop (the same model, SGD, batch size, epochs and keyed
  batch order, the data held as a uint8 tensor and scaled per batch), and Retrain / SISA
  fitting the same data into a directory store, plus the float32 data for comparison.
  ``--epochs`` epochs of an ``--model`` model (default ``mlp``, 3 epochs: peak memory is set
  by the data and the store, not by the number of epochs). Peak RSS includes the ~300 MB
  of imported libraries, so the table also gives the peak above the imports.

Prints markdown tables and writes them as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODES = ("bare-uint8", "retrain-uint8", "sisa-uint8", "bare-float32", "retrain-float32")


def _dir_bytes(path: Path, prefix: str = "") -> int:
    root = path / "blobs"
    return sum(p.stat().st_size for p in root.rglob("*")
               if p.is_file() and str(p.relative_to(root)).startswith(prefix))


def _total_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def store_sizes(root: str, names: list[str]) -> list[dict[str, Any]]:
    from expunge import ARCANE, SISA, Retrain
    from expunge.data import load_dataset

    classes = {"retrain": Retrain, "sisa": SISA, "arcane": ARCANE}
    rows = []
    for raw in (True, False):
        train, _ = load_dataset("mnist", root, raw=raw)
        for cls in (classes[name] for name in names):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "store"
                # the smallest recipe SISA accepts with its 5 shards: 2 epochs over 2 slices
                if cls is ARCANE:  # its defaults: Gaussian learner on keyed conv features
                    strategy = cls(store=path).fit(train)
                else:
                    extra = {"n_slices": 2} if cls is SISA else {}
                    strategy = cls("logreg", epochs=2, store=path, **extra).fit(train)
                rng = np.random.default_rng(0)
                for label, n in (("after fit", 0), ("after 1 id", 1), ("after 600 more", 600)):
                    if n:
                        retained = strategy.training_data.ids
                        strategy.forget(rng.choice(retained, n, replace=False))
                    retained_n = len(strategy.training_data)
                    raw_bytes = retained_n * 28 * 28  # uint8 pixels: what the data *is*
                    total = _total_bytes(path)
                    # checkpoints and other computed state (ARCANE's per-sample features)
                    ckpt = _dir_bytes(path, "ckpt") + _dir_bytes(path, "arcane")
                    data = _dir_bytes(path, "data")
                    rows.append({
                        "strategy": cls.name, "inputs": "uint8" if raw else "float32",
                        "state": label, "retained": retained_n, "raw_MB": raw_bytes / 1e6,
                        "data_blobs_MB": data / 1e6, "checkpoints_MB": ckpt / 1e6,
                        "store_MB": total / 1e6,
                        "ratio": (total - ckpt) / raw_bytes,
                    })
                strategy.close()
    return rows


def child(mode: str, root: str, model: str, epochs: int) -> dict[str, Any]:
    """One configuration in this (fresh) process; returns peak RSS and seconds."""
    from expunge import SISA, Retrain
    from expunge.data import load_dataset
    from expunge.models import build_model, seeded_init
    from expunge.training import EpochKey, TrainConfig, make_optimizer

    torch.set_num_threads(1)
    dtype = mode.rsplit("-", 1)[1]
    imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train, _ = load_dataset("mnist", root, raw=dtype == "uint8")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if mode.startswith("bare"):
        # the loop a user would write: the tensor in memory, a batch gathered and scaled
        module = seeded_init(0, lambda: build_model(model, train.input_shape, 10))
        config = TrainConfig(epochs=epochs, batch_size=128, lr=0.05)
        X, transform = train.X, train.transform
        optimizer = make_optimizer(module, config)
        module.train()
        from expunge._hashing import keyed_order

        for e in range(epochs):
            order = torch.from_numpy(keyed_order(EpochKey(0, 0, 0, e).order_key(), train.ids))
            for start in range(0, len(order), 128):
                batch = order[start:start + 128]
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(module(transform(X[batch])),
                                                         train.y[batch])
                loss.backward()
                optimizer.step()
    else:
        cls = Retrain if mode.startswith("retrain") else SISA
        with tempfile.TemporaryDirectory() as tmp:
            cls(model, epochs=epochs, store=Path(tmp) / "s").fit(train).close()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "peak_MB": peak / 1024, "after_load_MB": base / 1024,
            "imports_MB": imports / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/data_memory.json")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--skip-store", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--store-strategies", default="retrain,sisa",
                        help="comma-separated: retrain, sisa, arcane")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data_root, args.model, args.epochs)))
        return
    torch.set_num_threads(1)
    memory = []
    for mode in () if args.skip_memory else MODES:
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--data-root", args.data_root,
             "--model", args.model, "--epochs", str(args.epochs)],
            check=True, capture_output=True, text=True)
        memory.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {memory[-1]}", file=sys.stderr, flush=True)
    sizes = [] if args.skip_store else store_sizes(args.data_root,
                                                   args.store_strategies.split(","))
    bare = {m["mode"].rsplit("-", 1)[1]: m for m in memory if m["mode"].startswith("bare")}
    if memory:
        print(f"Peak memory, MNIST train (60,000), {args.model}, {args.epochs} epoch(s), "
              "batch 128, one thread, one fresh process each:\n")
        print("| configuration | peak RSS MB | above imports MB | x bare loop (same dtype) | "
              "above imports x bare | seconds |\n|---|---|---|---|---|---|")
    for m in memory:
        ref = bare[m["mode"].rsplit("-", 1)[1]]
        above, ref_above = m["peak_MB"] - m["imports_MB"], ref["peak_MB"] - ref["imports_MB"]
        print(f"| {m['mode']} | {m['peak_MB']:.0f} | {above:.0f} | "
              f"{m['peak_MB'] / ref['peak_MB']:.2f} | {above / ref_above:.2f} | "
              f"{m['seconds']:.1f} |")
    if sizes:
        print("\nStore size, directory store (logreg, 2 epochs; SISA 5 shards x 2 slices; "
              "ARCANE defaults; checkpoints include ARCANE's feature blobs):\n")
        print("| strategy | inputs | state | retained | raw MB | data blobs MB | checkpoints MB "
              "| store MB | (store - ckpt) / raw |\n|---|---|---|---|---|---|---|---|---|")
        for r in sizes:
            print(f"| {r['strategy']} | {r['inputs']} | {r['state']} | {r['retained']} | "
                  f"{r['raw_MB']:.1f} | {r['data_blobs_MB']:.1f} | {r['checkpoints_MB']:.2f} | "
                  f"{r['store_MB']:.1f} | {r['ratio']:.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"memory": memory, "store": sizes,
                                          "model": args.model, "epochs": args.epochs},
                                         indent=1) + "\n")


if __name__ == "__main__":
    main()

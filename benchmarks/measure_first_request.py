"""The first request of a fresh process: what every `expunge forget` from the CLI pays.

    .venv/bin/python benchmarks/measure_first_request.py --data-root ../shared/datasets/mnist

Fits PUMA on MNIST (the MLP recipe of ``measure_puma.py``) into a scratch store, then for a
single id and a 1 % batch starts a **new Python process** that opens a copy of the store
and forgets them, and reports the request's seconds, its stages, and which heavy modules
the request imported (``torch._dynamo``, ``sympy``): torch loads them lazily on the first
use of some APIs, at a cost of seconds, so a request path should not touch those APIs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    import expunge
    from expunge.data import load_dataset, random_forget_ids
    store, root, fraction = sys.argv[1], sys.argv[2], float(sys.argv[3])
    train, _ = load_dataset("mnist", root=root, raw=True)
    ids = (random_forget_ids(train, fraction=fraction, seed=0) if fraction > 0
           else [int(train.ids[5])])
    before = {m for m in ("torch._dynamo", "sympy") if m in sys.modules}
    started = time.perf_counter()
    model = expunge.open(store)
    opened = time.perf_counter() - started
    report = model.forget(ids)
    print(json.dumps({"open_s": opened, "request_s": report.seconds,
                      "stages": report.details.get("seconds", {}),
                      "imported": sorted({m for m in ("torch._dynamo", "sympy")
                                          if m in sys.modules} - before)}))
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    args = parser.parse_args()
    import torch

    import expunge
    from expunge.data import load_dataset

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from measure_puma import RECIPE

    torch.set_num_threads(1)
    train, _ = load_dataset("mnist", root=args.data_root, raw=True)
    with tempfile.TemporaryDirectory() as tmp:
        fitted = Path(tmp) / "fitted"
        expunge.PUMA(**RECIPE, store=fitted).fit(train).close()
        print("| request | open s | request s | largest stages | imported by the request |")
        print("|---|---|---|---|---|")
        for label, fraction in (("single id", 0.0), ("1 % batch", 0.01)):
            copy = Path(tmp) / "copy"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(fitted, copy)
            out = subprocess.run([sys.executable, "-c", CHILD, str(copy), args.data_root,
                                  str(fraction)], check=True, capture_output=True, text=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            stages = sorted(((k, v) for k, v in result["stages"].items()
                             if k != "strategy_total"), key=lambda kv: -kv[1])[:3]
            print(f"| {label} | {result['open_s']:.2f} | {result['request_s']:.2f} | "
                  + ", ".join(f"{k} {v:.2f}" for k, v in stages)
                  + f" | {', '.join(result['imported']) or 'none'} |")


if __name__ == "__main__":
    main()

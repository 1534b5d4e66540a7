"""Training-loop overhead of expunge against a bare PyTorch loop (issue 15's targets).

    .venv/bin/python benchmarks/measure_recipe_overhead.py --data-root ../shared/datasets/mnist

Same data, model (the reference ``mlp``, 1 hidden layer of 256), optimiser, batch size and
epochs; one torch thread. Each run is a fresh Python process (so that its peak resident
memory, ``ru_maxrss``, is its own), and the variants alternate, their order reversed every
round; the table reports medians over ``--rounds`` rounds. Variants:

* ``bare``: ``randperm`` order, ``X[batch]``, ``zero_grad / cross_entropy / backward /
  step`` (with the recipe: torch's ``LambdaLR`` cosine per step, ``clip_grad_norm_``);
* ``retrain``: ``expunge.Retrain(...).fit(train)`` in memory (no store directory): the
  whole fit, i.e. the loop plus checks, fingerprints, checkpoint and the retained data;
* ``retrain-loop``: the same, counting only the time inside ``train_epochs``.

``--recipe`` runs the AdamW + cosine + warm-up + clipping recipe in both, else SGD with
momentum. Targets: time <= 1.05x the bare loop, peak memory <= 1.2x.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch

RECIPE = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "lr_schedule": "cosine",
          "warmup": 0.1, "max_grad_norm": 1.0}
PLAIN = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}


def _data(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from expunge.data import load_dataset

    train, _ = load_dataset("mnist", root=args.data_root, limit_train=args.n)
    return train


def _clocks() -> tuple[float, float]:
    """(wall, this process's CPU) seconds: CPU time is less disturbed by other processes on a
    shared machine (one thread: it is the compute the run needed)."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clocks()
    return wall - start[0], cpu - start[1]


def run_bare(args: argparse.Namespace) -> tuple[float, float]:
    from expunge.models import build_model

    train = _data(args)
    options = RECIPE if args.recipe else PLAIN
    torch.manual_seed(0)
    model = build_model("mlp", train.input_shape, train.n_classes)
    params = list(model.parameters())
    if options["optimizer"] == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=options["lr"],
                                                       weight_decay=options["weight_decay"])
    else:
        opt = torch.optim.SGD(params, lr=options["lr"], momentum=options["momentum"])
    X, y, n = train.X, train.y, len(train)
    steps = math.ceil(n / args.batch_size) * args.epochs
    sched = None
    if args.recipe:
        warm = RECIPE["warmup"]

        def factor(t: int) -> float:
            p = (t + 0.5) / steps
            ramp = min(1.0, p / warm)
            return ramp * 0.5 * (1 + math.cos(math.pi * max(0.0, (p - warm) / (1 - warm))))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    started = _clocks()
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(n)
        for start in range(0, n, args.batch_size):
            batch = order[start:start + args.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(X[batch]), y[batch])
            loss.backward()
            if args.recipe:
                torch.nn.utils.clip_grad_norm_(params, RECIPE["max_grad_norm"])
            opt.step()
            if sched is not None:
                sched.step()
    return _since(started)


def run_retrain(args: argparse.Namespace) -> tuple[tuple[float, float], tuple[float, float]]:
    import expunge
    import expunge.training as training
    from expunge.strategies.exact import _recipe_options

    train = _data(args)
    loop = [0.0, 0.0]
    inner = training.train_epochs

    def timed(*a, **k):  # type: ignore[no-untyped-def]
        started = _clocks()
        try:
            return inner(*a, **k)
        finally:
            wall, cpu = _since(started)
            loop[0] += wall
            loop[1] += cpu

    # both engines' call sites (the default hooks and the recipe's)
    _recipe_options.train_epochs = timed  # type: ignore[assignment]
    import expunge.strategies.exact.sharded as sharded
    sharded.train_epochs = timed  # type: ignore[attr-defined]
    options = RECIPE if args.recipe else PLAIN
    strategy = expunge.Retrain("mlp", epochs=args.epochs, batch_size=args.batch_size, **options)
    started = _clocks()
    strategy.fit(train)
    return _since(started), (loop[0], loop[1])


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    # the first optimizer a process builds imports torch._dynamo (seconds): a one-off cost
    # of torch that both variants pay here, before anything is timed
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    if args.variant == "bare":
        (wall, cpu), loop = run_bare(args), (None, None)
    else:
        (wall, cpu), loop = run_retrain(args)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "loop_seconds": loop[0],
                      "loop_cpu_seconds": loop[1], "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    parser.add_argument("--n", type=int, default=20000, help="training samples")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--recipe", action="store_true")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="write results JSON here")
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    variants = ["bare", "retrain"]
    rows: dict[str, list[dict]] = {v: [] for v in variants}
    base = [sys.executable, __file__, "--data-root", args.data_root, "--n", str(args.n),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    if args.recipe:
        base.append("--recipe")
    for r in range(args.rounds):
        for variant in (variants if r % 2 == 0 else variants[::-1]):
            out = subprocess.run([*base, "--variant", variant], check=True,
                                 capture_output=True, text=True)
            rows[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r} {variant}: {rows[variant][-1]}", file=sys.stderr)
    keys = ("seconds", "cpu_seconds", "peak_mb")
    med = {v: {k: statistics.median(row[k] for row in rows[v]) for k in keys} for v in variants}
    loop = {k: statistics.median(row[k] for row in rows["retrain"])
            for k in ("loop_seconds", "loop_cpu_seconds")}
    bare, fit = med["bare"], med["retrain"]
    recipe = "AdamW + cosine + warm-up + clipping" if args.recipe else "SGD + momentum"
    print(f"\nMNIST n={args.n}, mlp, {recipe}, batch {args.batch_size}, {args.epochs} epochs, "
          f"1 thread, medians of {args.rounds} alternated rounds\n")
    print("| variant | wall s | x bare | CPU s | x bare | peak MB | x bare |")
    print("|---|---|---|---|---|---|---|")
    print(f"| bare PyTorch loop | {bare['seconds']:.2f} | 1.00 | {bare['cpu_seconds']:.2f} | "
          f"1.00 | {bare['peak_mb']:.0f} | 1.00 |")
    print(f"| expunge Retrain: loop only | {loop['loop_seconds']:.2f} | "
          f"{loop['loop_seconds'] / bare['seconds']:.3f} | {loop['loop_cpu_seconds']:.2f} | "
          f"{loop['loop_cpu_seconds'] / bare['cpu_seconds']:.3f} | | |")
    print(f"| expunge Retrain: whole fit | {fit['seconds']:.2f} | "
          f"{fit['seconds'] / bare['seconds']:.3f} | {fit['cpu_seconds']:.2f} | "
          f"{fit['cpu_seconds'] / bare['cpu_seconds']:.3f} | {fit['peak_mb']:.0f} | "
          f"{fit['peak_mb'] / bare['peak_mb']:.3f} |")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"args": vars(args), "rows": rows, "medians": med,
                       "loop_medians": loop}, handle, indent=2)


if __name__ == "__main__":
    main()

"""Serial vs process pool vs Ray for SISA on MNIST (issue 7): wall time, efficiency, bits.

    .venv/bin/python benchmarks/measure_parallel.py --data-root ../shared/datasets/mnist

Runs in one process, one configuration after the other (timings on a shared 2-core machine
are only comparable side by side), ``--repeats`` times (medians are reported):

* ``serial(1)``: ``executor="serial"``, sub-models trained with 1 torch thread (the default);
* ``serial(2)``: the same with 2 intra-op threads per sub-model (``threads_per_job=2``;
  different bits: the thread count is part of what is computed);
* ``process(2x1)``: ``executor="process", n_jobs=2``, 1 thread per worker;
* ``ray(2x1)``: ``executor="ray", n_jobs=2`` on a local cluster, when ray is installed.

For each: ``fit``, then ``forget`` of 5 ids (one in the first slice of every shard: all 5
shards retrain in full) and ``forget`` of 1 id (one shard from its middle slice). Parallel
efficiency = serial(1) time / (cores x time). Start-up (pool spawn, ``ray.init`` and
first tasks) is measured separately, before the fit, and reported on its own; the fit
columns exclude it, the ``fit + start-up`` column includes it. Every configuration starts
cold (pools and Ray are shut down after each) and the order rotates between repeats.
Prints markdown tables; ``--out`` also writes JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import expunge
from expunge import parallel
from expunge.data import load_dataset
from expunge.training import available_cpus


def pick_forget_ids(model: expunge.SISA, ids: np.ndarray) -> tuple[list[int], list[int]]:
    """One id in slice 0 of every shard (everything retrains), one id in a middle slice."""
    shard, slice_ = model.partition(ids)
    every = [int(ids[(shard == s) & (slice_ == 0)][0]) for s in range(model.n_shards)]
    middle = model.n_slices // 2
    chosen = set(every)
    one = [int(i) for i in ids[(shard == 0) & (slice_ == middle)] if int(i) not in chosen][:1]
    return every, one


def ray_daemon_cpu_seconds() -> float:
    """CPU seconds used so far by Ray's own processes (raylet, GCS, monitors; not workers).

    Linux only (reads /proc); 0 elsewhere. On 2 cores this is time the workers do not get.
    """
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        is_ray = "raylet" in command or "gcs_server" in command or "/ray/" in command
        if is_ray and "ray::" not in command and "default_worker.py" not in command:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def run_facts(model: expunge.SISA) -> dict[str, Any]:
    """How the executor ran the model's last request (empty when it trained in this process)."""
    stats = model.fitted_.run_stats
    return {} if stats is None else stats.to_dict()


def run_config(name: str, recipe: dict[str, Any], train: Any, store_kind: str,
               forget_all: list[int], forget_one: list[int]) -> dict[str, Any]:
    executor = {"serial(1)": "serial", "serial(2)": "serial", "process(2x1)": "process",
                "ray(2x1)": "ray"}[name]
    store = None
    if store_kind == "directory":
        store = str(Path(tempfile.mkdtemp(prefix="expunge-parallel-")) / "store")
    threads = 2 if name == "serial(2)" else 1
    model = expunge.SISA(**recipe, executor=executor, n_jobs=2, store=store,
                         threads_per_job=threads)
    out: dict[str, Any] = {"startup_seconds": 0.0}
    if executor == "process":
        out["startup_seconds"] = parallel.ProcessExecutor(n_jobs=2).warm_up()
    elif executor == "ray":
        ray_executor = parallel.RayExecutor(n_jobs=2)
        out["ray_init_seconds"] = ray_executor.startup_seconds
        out["startup_seconds"] = ray_executor.startup_seconds + ray_executor.warm_up()
    daemons = ray_daemon_cpu_seconds() if executor == "ray" else 0.0
    started = time.perf_counter()
    model.fit(train)
    out["fit_seconds"] = time.perf_counter() - started
    out["fit_run"] = run_facts(model)
    out["fingerprint_fit"] = model.fingerprint()
    if executor == "ray":
        out["fit_run"]["ray_daemon_cpu_seconds"] = ray_daemon_cpu_seconds() - daemons
        daemons = ray_daemon_cpu_seconds()
    report = model.forget(forget_all)
    out["forget_all_seconds"] = report.seconds
    out["forget_all_run"] = run_facts(model)
    if executor == "ray":
        out["forget_all_run"]["ray_daemon_cpu_seconds"] = ray_daemon_cpu_seconds() - daemons
    out["fingerprint_forget_all"] = model.fingerprint()
    report = model.forget(forget_one)
    out["forget_one_seconds"] = report.seconds
    out["fingerprint_forget_one"] = model.fingerprint()
    model.close()
    out["load_after"] = os.getloadavg()[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    parser.add_argument("--n-shards", type=int, default=5)
    parser.add_argument("--n-slices", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--store", choices=("directory", "memory"), default="directory")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--configs", default=None,
                        help="comma-separated subset of serial1,serial2,process,ray "
                        "(serial1, the baseline, always runs)")
    parser.add_argument("--quick", action="store_true", help="12k samples, 4 epochs")
    parser.add_argument("--out", default=None, help="write results JSON here")
    args = parser.parse_args()
    if args.quick:
        args.limit_train, args.epochs = args.limit_train or 12000, 4
    cores = available_cpus()
    train, _ = load_dataset("mnist", root=args.data_root, limit_train=args.limit_train)
    recipe = dict(model="mlp", model_params={"hidden_sizes": [args.hidden]},
                  n_shards=args.n_shards, n_slices=args.n_slices, epochs=args.epochs,
                  batch_size=128, lr=0.05, momentum=0.9, seed=0)
    forget_all, forget_one = pick_forget_ids(expunge.SISA(**recipe), train.ids)
    # this process's one-time costs (torch's lazy imports on the first optimizer) are not
    # part of any configuration: pay them now on a tiny fit
    expunge.SISA(**{**recipe, "n_slices": 1, "epochs": 1}).fit(train.select(train.ids[:256]))
    names = ["serial(1)", "serial(2)", "process(2x1)"]
    if not args.no_ray and importlib.util.find_spec("ray") is not None:
        names.append("ray(2x1)")
    if args.configs:
        keys = {"serial1": "serial(1)", "serial2": "serial(2)", "process": "process(2x1)",
                "ray": "ray(2x1)"}
        wanted = {keys[c.strip()] for c in args.configs.split(",")} | {"serial(1)"}
        names = [n for n in names if n in wanted]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    load_before = os.getloadavg()
    for repeat in range(args.repeats):
        # rotate the order: on a shared machine the load drifts during a run, so no
        # configuration should always go first or last
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in order:
            result = run_config(name, recipe, train, args.store, forget_all, forget_one)
            parallel.shutdown()  # every configuration starts cold: no idle pool or cluster
            runs[name].append(result)
            print(f"[repeat {repeat + 1}] {name}: fit {result['fit_seconds']:.2f} s, forget-5 "
                  f"{result['forget_all_seconds']:.2f} s, forget-1 "
                  f"{result['forget_one_seconds']:.2f} s, start-up "
                  f"{result['startup_seconds']:.2f} s", file=sys.stderr, flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    base = {k: med("serial(1)", k) for k in ("fit_seconds", "forget_all_seconds",
                                              "forget_one_seconds")}
    reference = runs["serial(1)"][0]
    print(f"\nSISA on MNIST ({len(train)} samples), MLP 784-{args.hidden}-10, "
          f"{args.n_shards} shards x {args.n_slices} slices, {args.epochs} epochs, "
          f"{args.store} store; {cores} cores, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}; median of {args.repeats}; load "
          f"average (1 min) {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| executor | first start-up s | fit s | fit eff. | fit + start-up eff. "
          "| forget 5 shards s | eff. | forget 1 shard s | eff. | bits = serial(1) | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        # the first start is the cold one: later process pools fork from the forkserver
        # started then (~0.05 s); Ray is shut down and started again every time
        startup = runs[name][0]["startup_seconds"]
        fit = med(name, "fit_seconds")
        all5 = med(name, "forget_all_seconds")
        one = med(name, "forget_one_seconds")
        same = all(r[f"fingerprint_{w}"] == reference[f"fingerprint_{w}"]
                   for r in runs[name] for w in ("fit", "forget_all", "forget_one"))

        def eff(seconds: float, key: str) -> str:
            return f"{100 * base[key] / (cores * seconds):.0f} %"

        print(f"| {name} | {startup:.2f} | {fit:.2f} | {eff(fit, 'fit_seconds')} | "
              f"{eff(fit + startup, 'fit_seconds')} | {all5:.2f} | "
              f"{eff(all5, 'forget_all_seconds')} | {one:.2f} | "
              f"{eff(one, 'forget_one_seconds')} | {'yes' if same else 'no'} | "
              f"{max(r['load_after'] for r in runs[name]):.1f} |")
    pooled = [n for n in names if n.startswith(("process", "ray"))]
    if pooled:
        print("\nWhere the time goes (parallel runs, median): slot utilisation = time inside "
              "jobs / (slots x wall); set-up = loading data rows and checkpoint in the worker; "
              "planned = efficiency of the planned job order on the jobs' estimated costs\n")
        print("| executor | request | jobs | wall s | in jobs s | of which set-up s "
              "| utilisation | planned | Ray daemons CPU s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name in pooled:
            for request in ("fit_run", "forget_all_run"):
                stats = [r[request] for r in runs[name] if r[request]]
                if not stats:
                    continue
                print(f"| {name} | {request[:-4].replace('_', ' ')} | {stats[0]['jobs']} | "
                      f"{statistics.median(s['wall_seconds'] for s in stats):.2f} | "
                      f"{statistics.median(s['job_seconds'] for s in stats):.2f} | "
                      f"{statistics.median(s['setup_seconds'] for s in stats):.2f} | "
                      f"{100 * statistics.median(s['utilisation'] for s in stats):.0f} % | "
                      f"{100 * statistics.median(s['planned_efficiency'] for s in stats):.0f} % | "
                      f"{statistics.median(s.get('ray_daemon_cpu_seconds', 0) for s in stats):.2f}"
                      " |")
        if "ray(2x1)" in runs:
            print(f"\nRay start-up (median): ray.init {med('ray(2x1)', 'ray_init_seconds'):.2f}"
                  f" s; with the first task on each of the 2 workers (process start, import "
                  f"torch): {med('ray(2x1)', 'startup_seconds'):.2f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "cores": cores,
                                              "runs": runs}, indent=2, default=str))
    parallel.shutdown()


if __name__ == "__main__":
    main()

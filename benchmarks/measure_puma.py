"""PUMA on MNIST next to Retrain and naive influence removal (the closing note of issue 4).

For logistic regression and a 784-256-10 MLP it measures, in one run so that times can be
compared as ratios:

* removing 1 % random training ids, and separately one whole class: test accuracy before
  and after, forget-set accuracy (and, for the class, accuracy on the class's test images
  and on the other classes), for PUMA, NaiveInfluence (no re-weighting) and Retrain;
* PUMA's time per request (split into patch and cache refresh) and its one-time
  precompute, each as a ratio to Retrain's time for the same request;
* a sweep over eta (the re-weighting box radius) on the MLP: accuracy, the validation
  criterion's change and the number of re-weighted samples.

Retrain and PUMA train the same network on the same data: PUMA holds out a validation
split (``val_fraction`` of the ids, keyed by the seed) for its criterion, so Retrain is
fitted on the training split without it. With the same seed both start from the same
initialisation and see the same batches, so they begin from the same model.

Usage (about 10 minutes on an idle 2-core machine; prints Markdown tables)::

    .venv/bin/python benchmarks/measure_puma.py --data-root ../shared/datasets/mnist
    .venv/bin/python benchmarks/measure_puma.py --quick     # 10k samples, for CI (~2 min)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from expunge.data import IndexedDataset, load_dataset, random_forget_ids
from expunge.exceptions import ApproximationWarning
from expunge.strategies import Retrain
from expunge.strategies.approximate.puma import PUMA, NaiveInfluence

TRAINING = {"epochs": 10, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
            "weight_decay": 5e-4, "seed": 0}
MODELS: dict[str, dict[str, Any]] = {
    # logistic regression: convex, every parameter in scope, float64, CG with K-FAC
    "logreg": {"model": "logreg", "puma": {"solver": "cg", "preconditioner": "kfac"}},
    # the MLP: curvature restricted to the last layer (its inputs are cached, so each
    # curvature product is two small matrix products); the full-network GGN needs ~185 CG
    # products of ~1 s each on MNIST, far beyond this benchmark's budget
    "mlp": {"model": "mlp", "model_params": {"hidden_sizes": [256]},
            "puma": {"solver": "cg", "preconditioner": "kfac", "scope": "last_layer"}},
}
ETAS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)


def accuracy(model: Any, data: IndexedDataset) -> float:
    return float(model.score(data)) if len(data) else float("nan")


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.2f}"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run_model(name: str, train: IndexedDataset, test: IndexedDataset, forget_class: int,
              sweep: bool, results: dict[str, Any]) -> None:
    spec = MODELS[name]
    strategy = {"model": spec["model"], "model_params": spec.get("model_params"), **TRAINING}
    puma_params = {**strategy, **spec["puma"]}
    out: dict[str, Any] = {}
    results[name] = out

    # ---------------------------------------------------------------- fit
    puma, fit_seconds = timed(PUMA(**puma_params).fit, train)
    info = puma.fitted_.info
    base = copy.deepcopy(puma.fitted_.module)
    val_ids = puma.fitted_.val_ids
    split = train.drop(val_ids)  # what every model trains on
    val = train.select(val_ids)
    retrain, retrain_fit = timed(Retrain(**strategy).fit, split)
    in_class = test.where((test.y == forget_class).numpy())
    others = test.where((test.y != forget_class).numpy())
    retrain_class_before = (accuracy(retrain, in_class), accuracy(retrain, others))
    out["fit"] = {"puma_fit": fit_seconds, "puma_train": info["train_seconds"],
                  "puma_precompute": info["precompute_seconds"], "retrain_fit": retrain_fit,
                  "n_train": len(split), "n_val": len(val_ids), "solver": info["solver"],
                  "params_in_scope": info["n_params_in_scope"],
                  "test_acc": accuracy(puma, test), "retrain_test_acc": accuracy(retrain, test)}
    naive, naive_fit = timed(NaiveInfluence.from_model, base, split, val,
                             **{k: v for k, v in puma_params.items() if k not in ("model",)})
    out["fit"]["naive_precompute"] = naive_fit

    # ------------------------------------------------------ 1 % random ids
    ids = random_forget_ids(split, fraction=0.01, seed=1)
    forgotten = split.select(ids)
    rows = []
    before = {"puma": accuracy(puma, test), "naive": accuracy(naive, test),
              "retrain": accuracy(retrain, test)}
    forget_before = {"puma": accuracy(puma, forgotten), "naive": accuracy(naive, forgotten),
                     "retrain": accuracy(retrain, forgotten)}
    report_r, t_retrain = timed(retrain.forget, ids)
    for label, model in (("PUMA", puma), ("NaiveInfluence", naive)):
        report, seconds = timed(model.forget, ids)
        d = report.details
        key = "puma" if model is puma else "naive"
        rows.append([label, pct(before[key]), pct(accuracy(model, test)),
                     pct(forget_before[key]), pct(accuracy(model, forgotten)),
                     f"{seconds:.2f}", f"{d['patch_seconds']:.2f}", f"{d['refresh_seconds']:.2f}",
                     f"{seconds / t_retrain:.2f}", d.get("n_reweighted", 0),
                     f"{d['solver_residual']:.1e}"])
        out[f"random_{key}"] = {"seconds": seconds, **{k: v for k, v in d.items()
                                                        if not isinstance(v, list)}}
    rows.append(["Retrain", pct(before["retrain"]), pct(accuracy(retrain, test)),
                 pct(forget_before["retrain"]), pct(accuracy(retrain, forgotten)),
                 f"{t_retrain:.2f}", "", "", "1.00", "", ""])
    out["random_retrain"] = {"seconds": t_retrain}
    out["random_table"] = rows

    # --------------------------------------------------------- one class
    class_ids = split.ids_of_class(forget_class)
    class_rows = []
    retrain_class, t_retrain_class = timed(Retrain(**strategy).fit, split.drop(class_ids))
    for label, cls in (("PUMA", PUMA), ("NaiveInfluence", NaiveInfluence)):
        params = {k: v for k, v in puma_params.items() if k != "model"}
        model, precompute = timed(cls.from_model, base, split, val, **params)
        acc_class, acc_others = accuracy(model, in_class), accuracy(model, others)
        report, seconds = timed(model.forget, class_ids)
        d = report.details
        class_rows.append([label, pct(acc_class), pct(accuracy(model, in_class)),
                           pct(acc_others), pct(accuracy(model, others)),
                           pct(accuracy(model, split.select(class_ids))),
                           f"{seconds:.2f}", f"{seconds / t_retrain_class:.2f}",
                           f"{precompute:.2f}", f"{precompute / t_retrain_class:.2f}",
                           d.get("n_reweighted", 0), d["mode"]])
        out[f"class_{cls.name}"] = {"seconds": seconds, "precompute": precompute,
                                    **{k: v for k, v in d.items() if not isinstance(v, list)}}
    class_rows.append(["Retrain", pct(retrain_class_before[0]),
                       pct(accuracy(retrain_class, in_class)), pct(retrain_class_before[1]),
                       pct(accuracy(retrain_class, others)),
                       pct(accuracy(retrain_class, split.select(class_ids))),
                       f"{t_retrain_class:.2f}", "1.00", "", "", "", ""])
    out["class_retrain"] = {"seconds": t_retrain_class}
    out["class_table"] = class_rows

    # ------------------------------------------------------------ eta sweep
    if sweep:
        sweep_rows = []
        sweep_ids = random_forget_ids(split, fraction=0.05, seed=2)
        sweep_forgotten = split.select(sweep_ids)
        retrain_sweep = Retrain(**strategy).fit(split.drop(sweep_ids))
        for eta in ETAS:
            params = {k: v for k, v in puma_params.items() if k != "model"}
            model = PUMA.from_model(base, split, val, **{**params, "eta": eta,
                                                         "refresh": "lazy"})
            report, seconds = timed(model.forget, sweep_ids)
            d = report.details
            sweep_rows.append([eta, pct(accuracy(model, test)),
                               pct(accuracy(model, sweep_forgotten)),
                               f"{d['criterion_after'] - d['criterion_before']:+.4f}",
                               f"{d['criterion_change_naive'][0]:+.4f}",
                               f"{d['criterion_change_predicted'][0]:+.4f}",
                               d["n_reweighted"], f"{seconds:.2f}"])
        model = NaiveInfluence.from_model(base, split, val, **{**params, "refresh": "lazy"})
        d = model.forget(sweep_ids).details
        sweep_rows.append(["naive", pct(accuracy(model, test)),
                           pct(accuracy(model, sweep_forgotten)),
                           f"{d['criterion_after'] - d['criterion_before']:+.4f}", "", "", 0, ""])
        sweep_rows.append(["retrain", pct(accuracy(retrain_sweep, test)),
                           pct(accuracy(retrain_sweep, sweep_forgotten)), "", "", "", "", ""])
        out["sweep_table"] = sweep_rows
    for m in (puma, naive, retrain):
        m.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    parser.add_argument("--models", default="logreg,mlp")
    parser.add_argument("--forget-class", type=int, default=3)
    parser.add_argument("--limit-train", type=int, default=None,
                        help="keep the first N training images (default: all 60000)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--quick", action="store_true", help="10k training images")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    limit = 10_000 if args.quick and args.limit_train is None else args.limit_train
    options = {"limit_train": limit} if limit else {}
    train, test = load_dataset("mnist", root=args.data_root, **options)
    warnings.simplefilter("ignore", DeprecationWarning)
    caught: list[str] = []

    def record(message: Any, category: Any, *rest: Any, **kw: Any) -> None:
        caught.append(f"{category.__name__}: {message}")

    warnings.showwarning = record  # type: ignore[assignment]
    warnings.simplefilter("always", ApproximationWarning)
    print(f"# PUMA on MNIST ({len(train)} train / {len(test)} test images)\n")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.machine()}, Python {platform.python_version()}; training: "
          f"{json.dumps(TRAINING)}\n")
    results: dict[str, Any] = {}
    started = time.perf_counter()
    for name in args.models.split(","):
        run_model(name, train, test, args.forget_class, not args.no_sweep and name == "mlp",
                  results)
        out = results[name]
        fit = out["fit"]
        print(f"## {name}\n")
        print(f"PUMA: solver={fit['solver']}, {fit['params_in_scope']} parameters in scope, "
              f"{fit['n_train']} training + {fit['n_val']} validation (criterion) images. "
              f"Fit: training {fit['puma_train']:.1f} s + precompute "
              f"{fit['puma_precompute']:.1f} s; Retrain fit {fit['retrain_fit']:.1f} s. "
              f"Test accuracy after fit: PUMA {pct(fit['test_acc'])} %, Retrain "
              f"{pct(fit['retrain_test_acc'])} %.\n")
        t_r = out["random_retrain"]["seconds"]
        print(f"### Remove 1 % random training ids (Retrain request: {t_r:.2f} s; PUMA "
              f"precompute / Retrain request = {fit['puma_precompute'] / t_r:.2f})\n")
        print(table(["method", "test acc before", "test acc after", "forget acc before",
                     "forget acc after", "request s", "patch s", "refresh s",
                     "request / Retrain", "re-weighted", "solver residual"],
                    out["random_table"]) + "\n")
        print(f"### Remove class {args.forget_class} "
              f"(Retrain request: {out['class_retrain']['seconds']:.2f} s)\n")
        print(table(["method", "class test acc before", "class test acc after",
                     "other classes before", "other classes after", "forget-set acc after",
                     "request s", "request / Retrain", "precompute s",
                     "precompute / Retrain", "re-weighted", "mode"],
                    out["class_table"]) + "\n")
        if "sweep_table" in out:
            print("### eta sweep (remove 5 % random training ids; criterion = validation "
                  "loss)\n")
            print(table(["eta", "test acc", "forget acc", "criterion change (actual)",
                         "predicted, naive", "predicted, PUMA", "re-weighted", "request s"],
                        out["sweep_table"]) + "\n")
        sys.stdout.flush()
    print(f"Total time: {time.perf_counter() - started:.0f} s.")
    if caught:
        print("\nWarnings:\n" + "\n".join(f"- {c}" for c in sorted(set(caught))))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

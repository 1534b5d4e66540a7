"""PUMA at its physical limit: the targets of issue 13, measured side by side in one run.

Everything runs in one process on one torch thread, and every time is compared only with
times measured in the same run (a ratio to a Retrain fit of the same recipe, the second
one of the run: the first pays the process's one-time costs):

* **MLP** (full MNIST, 784-256-10, Retrain's recipe): a single-id request and a 1 % batch
  as a share of a Retrain fit; the one-time precompute as a share of it; test accuracy of
  PUMA's base model and after the 1 % batch against Retrain's on the same ids; the time
  breakdown of one request (PUMA's stages, the per-bucket cache update of the disk rule,
  the base class's data copy and bucket rewrite, commit and purge); the damping the
  leave-one-out rule chose and, on the same batch, what other dampings give.
* **E3's memorising model** (5,000 images, 60 epochs, 5 % removed): forget-set error and
  the loss attack's AUC (forget set vs test set) after PUMA, naive influence and Retrain,
  and the same for other dampings.
* **LeNet** (conv layers; a smaller recipe, see ``LENET``): the same ratios.
* **E6** (mislabel detection): 5 % of the labels flipped, logistic regression, the share
  of flips found in the first 10 % inspected by PUMA's harmfulness.

Usage::

    .venv/bin/python benchmarks/measure_puma.py --data-root ../shared/datasets/mnist
    .venv/bin/python benchmarks/measure_puma.py --quick   # digits, a smoke run (~2 min)
    .venv/bin/python benchmarks/measure_puma.py --parts mlp,e3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

import expunge
from expunge.data import IndexedDataset, load_dataset, random_forget_ids
from expunge.evaluation import sample_loss, threshold_attack
from expunge.exceptions import ApproximationWarning
from expunge.strategies import Retrain, UnlearningStrategy

#: the recipe of src/expunge/bench/specs (E1-E5): every strategy trains the same way
RECIPE = {"model": "mlp", "model_params": {"hidden_sizes": [256]}, "epochs": 10,
          "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "seed": 0}
#: E3's memorising model: 5,000 training images, 60 epochs, 5 % removed
E3 = {"limit_train": 5000, "epochs": 60, "fraction": 0.05}
#: LeNet: a conv net costs ~10x the MLP per epoch on one CPU thread, so 3 epochs (not 10)
#: keep the run affordable; a request's cost does not depend on the number of epochs, so
#: the ratio is pessimistic for PUMA
LENET = {"model": "lenet", "epochs": 3, "batch_size": 128, "lr": 0.05, "momentum": 0.9,
         "weight_decay": 5e-4, "seed": 0, "limit_train": None}
#: PUMA / NaiveInfluence parameters set from the command line (``--cache-samples``)
PUMA_OVERRIDES: dict[str, Any] = {}
#: extra dampings tried beside the rule's choice, as multiples of the weight decay
DAMPINGS = (0.0, 0.1, 1.0, 10.0, 100.0)


# ------------------------------------------------------------------------ helpers
def accuracy(model: Any, data: IndexedDataset) -> float:
    return float(model.score(data)) if len(data) else float("nan")


def loss_auc(model: Any, members: IndexedDataset, others: IndexedDataset) -> float:
    def losses(d: IndexedDataset) -> np.ndarray:
        return sample_loss(model.predict_proba(d.X).numpy(), d.y.numpy())
    return threshold_attack("loss", losses(members), losses(others)).auc


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.2f}"


class Stores:
    """Fitted stores in a scratch folder: fit once, then forget on private copies."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fits: dict[str, tuple[Path, float]] = {}

    def fit(self, key: str, cls: type, params: dict[str, Any], data: IndexedDataset) -> float:
        path = self.root / key
        started = time.perf_counter()
        if cls in (expunge.PUMA, expunge.NaiveInfluence):
            params = {**params, **PUMA_OVERRIDES}
        cls(**params, store=path).fit(data).close()
        self.fits[key] = (path, time.perf_counter() - started)
        return self.fits[key][1]

    def copy(self, key: str, **overrides: Any) -> UnlearningStrategy:
        path = Path(tempfile.mkdtemp(dir=self.root, prefix=f"{key}-"))
        shutil.rmtree(path)
        shutil.copytree(self.fits[key][0], path)
        # a store at rest, as fit leaves it (every file synced): the copy's dirty pages
        # would otherwise be flushed by the request's first sync of a copied file
        os.sync()
        return expunge.open(path, **overrides)


class BaseClassTimer:
    """Times the base class's per-request data work: the retained-data copy
    (``IndexedDataset.where``) and the rewrite of the touched data buckets."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def watching(self) -> Iterator[None]:
        from expunge.data import IndexedDataset as Dataset
        from expunge.strategies.base import UnlearningStrategy as Base

        original_write, original_where = Base._write_data, Dataset.where
        self.seconds = {"data_write": 0.0, "data_copy": 0.0}

        def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.seconds[name] += time.perf_counter() - started
            return wrapper

        Base._write_data = staticmethod(timed("data_write", original_write))  # type: ignore
        Dataset.where = timed("data_copy", original_where)  # type: ignore[method-assign]
        try:
            yield
        finally:
            Base._write_data = staticmethod(original_write)  # type: ignore[method-assign]
            Dataset.where = original_where  # type: ignore[method-assign]


def timed_forget(model: UnlearningStrategy, ids: Any) -> dict[str, Any]:
    """One request with its time split: PUMA's stages, the base class's data work, rest."""
    timer = BaseClassTimer()
    with timer.watching():
        report = model.forget(ids)
    stages = dict(report.details.get("seconds", {}))
    strategy = stages.pop("strategy_total", 0.0)
    base = timer.seconds
    other = report.seconds - strategy - base["data_write"] - base["data_copy"]
    return {"report": report, "seconds": report.seconds, "strategy": strategy,
            "stages": stages, **base, "commit_and_rest": other,
            "touched": len(report.details.get("touched_buckets", []))}


def breakdown_rows(name: str, fit_seconds: float, result: dict[str, Any]) -> list[list[Any]]:
    rows = [[f"{name}: whole request", f"{result['seconds'] * 1000:.0f}",
             f"{100 * result['seconds'] / fit_seconds:.2f}"]]
    for stage, s in sorted(result["stages"].items(), key=lambda kv: -kv[1]):
        rows.append([f"  PUMA: {stage}", f"{s * 1000:.1f}", f"{100 * s / fit_seconds:.3f}"])
    for key in ("data_copy", "data_write", "commit_and_rest"):
        rows.append([f"  base class: {key.replace('_', ' ')}", f"{result[key] * 1000:.1f}",
                     f"{100 * result[key] / fit_seconds:.3f}"])
    return rows


# ---------------------------------------------------------------------- MLP / LeNet
def requests_part(name: str, train: IndexedDataset, test: IndexedDataset,
                  recipe: dict[str, Any], stores: Stores, n_singles: int,
                  damping_sweep: bool, out: dict[str, Any]) -> None:
    """Single ids, a 1 % batch, base accuracy, precompute, damping; vs Retrain."""
    res: dict[str, Any] = {}
    out[name] = res
    # the first fit of a process pays one-time costs (first touch of the data, kernel
    # warm-up: 3-7 s on MNIST, measured 15.9 s cold vs 12.1 s warm): a ratio to it flatters
    # every request, so the denominator is a second, warm fit of the same recipe
    t_cold = stores.fit(f"{name}-retrain-cold", Retrain, recipe, train)
    t_retrain = stores.fit(f"{name}-retrain", Retrain, recipe, train)
    t_puma = stores.fit(f"{name}-puma", expunge.PUMA, recipe, train)
    t_naive = stores.fit(f"{name}-naive", expunge.NaiveInfluence, recipe, train)
    puma = stores.copy(f"{name}-puma")
    retrain = stores.copy(f"{name}-retrain")
    info = puma.fitted_.info
    res["fit"] = {"retrain_fit": t_retrain, "retrain_fit_cold": t_cold, "puma_fit": t_puma,
                  "naive_fit": t_naive,
                  **{k: v for k, v in info.items() if not isinstance(v, dict)},
                  "damping_info": puma.fitted_.cache.damping_info,
                  "puma_test": accuracy(puma, test), "retrain_test": accuracy(retrain, test)}
    print(f"[{name}] Retrain fit {t_retrain:.1f} s (the first, cold: {t_cold:.1f} s); "
          f"PUMA fit {t_puma:.1f} s (training "
          f"{info['train_seconds']:.1f} + precompute {info['precompute_seconds']:.1f}); damping "
          f"{info['damping']:.3g} ({info['damping_status']})", flush=True)

    # single ids, in sequence on one copy: ids of the training split
    rng = np.random.default_rng(7)
    training_ids = np.setdiff1d(train.ids, puma.fitted_.val_ids)
    singles = rng.choice(training_ids, size=n_singles, replace=False)
    single = [timed_forget(puma, [int(i)]) for i in singles]
    puma.close()
    res["singles"] = [{k: v for k, v in r.items() if k != "report"} for r in single]
    median = statistics.median(r["seconds"] for r in single)
    res["single_median"] = median
    res["single_median_strategy"] = statistics.median(r["strategy"] for r in single)
    typical = sorted(single, key=lambda r: r["seconds"])[len(single) // 2]
    touched = [r for r in single if r["touched"]]

    # the 1 % batch: PUMA, naive influence, Retrain on the same ids
    batch = random_forget_ids(train, fraction=0.01, seed=0)
    forget_set = train.select(batch)
    rows = []
    batch_results: dict[str, Any] = {}
    for label, key in (("PUMA", "puma"), ("NaiveInfluence", "naive"), ("Retrain", "retrain")):
        model = stores.copy(f"{name}-{key}")
        before = accuracy(model, test)
        result = timed_forget(model, batch)
        batch_results[key] = result
        rows.append([label, pct(before), pct(accuracy(model, test)),
                     pct(accuracy(model, forget_set)), f"{result['seconds']:.2f}",
                     f"{100 * result['seconds'] / t_retrain:.2f}",
                     result["report"].details.get("n_reweighted", "")])
        res[f"batch_{key}"] = {"test_before": before, "test_after": accuracy(model, test),
                               "forget_acc": accuracy(model, forget_set),
                               **{k: v for k, v in result.items() if k != "report"}}
        model.close()
    gap = res["batch_puma"]["test_after"] - res["batch_retrain"]["test_after"]
    # one ~1 s request is noisy on a shared VM (the same request measured 1.06 s and 1.45 s
    # in two runs minutes apart): PUMA's 1 % batch is timed on two more id sets too, each
    # on a fresh copy, and the target row and the breakdown use the median request
    repeats = [batch_results["puma"]]
    for seed in (1, 2):
        model = stores.copy(f"{name}-puma")
        repeats.append(timed_forget(model, random_forget_ids(train, fraction=0.01, seed=seed)))
        model.close()
    batch_results["puma"] = sorted(repeats, key=lambda r: r["seconds"])[1]
    res["batch_puma_repeats"] = [r["seconds"] for r in repeats]
    res["batch_puma"]["seconds"] = batch_results["puma"]["seconds"]
    res["batch_puma"]["strategy"] = batch_results["puma"]["strategy"]

    print(f"\n### {name}: targets (ratios to a Retrain fit of {t_retrain:.1f} s, same run)\n")
    print(table(["target", "measured", "goal"], [
        [f"single-id request (median of {n_singles}), whole `forget`",
         f"{median * 1000:.0f} ms = {100 * median / t_retrain:.2f} %", "<= 1 %"],
        ["... PUMA's own work (median)", f"{res['single_median_strategy'] * 1000:.0f} ms = "
         f"{100 * res['single_median_strategy'] / t_retrain:.2f} %", ""],
        ["... requests whose id is in the curvature sample", f"{len(touched)} of {n_singles}"
         + (f", median {statistics.median(r['seconds'] for r in touched) * 1000:.0f} ms"
            if touched else ""), ""],
        ["1 % batch (median of 3 id sets), whole `forget`",
         f"{res['batch_puma']['seconds']:.2f} s = "
         f"{100 * res['batch_puma']['seconds'] / t_retrain:.2f} %", "<= 5 %"],
        ["... PUMA's own work", f"{res['batch_puma']['strategy']:.2f} s = "
         f"{100 * res['batch_puma']['strategy'] / t_retrain:.2f} %", ""],
        ["one-time precompute", f"{info['precompute_seconds']:.1f} s = "
         f"{info['precompute_seconds'] / t_retrain:.2f} x", "<= 1 x"],
        ["base model test accuracy: PUMA vs Retrain", f"{pct(res['fit']['puma_test'])} vs "
         f"{pct(res['fit']['retrain_test'])}", "within 0.1 point"],
        ["test accuracy after 1 %: PUMA - Retrain", f"{100 * gap:+.2f} points",
         "within 0.3 point"],
    ]))
    print("\n1 % batch, one request from the same fitted models:\n")
    print(table(["method", "TA before", "TA after", "forget acc", "request s",
                 "% of Retrain fit", "re-weighted"], rows))
    print("\nTime breakdown (ms, and % of a Retrain fit):\n")
    print(table(["part", "ms", "% of fit"],
                breakdown_rows("median single id", t_retrain, typical)
                + (breakdown_rows("single id in the curvature sample", t_retrain, touched[0])
                   if touched else [])
                + breakdown_rows("1 % batch", t_retrain, batch_results["puma"])))
    if damping_sweep:
        damping_part(name, stores, batch, forget_set, test, res, t_retrain)


def damping_part(name: str, stores: Stores, ids: np.ndarray, forget_set: IndexedDataset,
                 test: IndexedDataset, res: dict[str, Any], fit_seconds: float,
                 members: IndexedDataset | None = None) -> None:
    """The same request with other dampings: on a copy of the fitted store, the damping is
    set and the cache refreshed (what ``refresh()`` does when the damping changes: the
    damping is recorded at fit, so ``expunge.open`` cannot change it)."""
    chosen = res["fit"]["damping"]
    wd = RECIPE["weight_decay"]
    rows, out = [], []
    values = [("rule", None)] + [(f"{m:g} x weight decay", m * wd) for m in DAMPINGS]
    for label, value in values:
        model = stores.copy(f"{name}-puma")
        if value is not None:
            model.damping = value  # type: ignore[attr-defined]
            model.refresh()  # type: ignore[attr-defined]
        report = model.forget(ids)
        entry = {"damping": chosen if value is None else value, "label": label,
                 "test": accuracy(model, test), "forget_acc": accuracy(model, forget_set),
                 "patch_norm": report.details.get("patch_norm")}
        if members is not None:
            entry["loss_auc"] = loss_auc(model, forget_set, members)
        out.append(entry)
        rows.append([label, f"{entry['damping']:.3g}", pct(entry["test"]),
                     pct(1 - entry["forget_acc"]), f"{entry.get('loss_auc', float('nan')):.3f}",
                     f"{entry['patch_norm']:.3g}"])
        model.close()
    res["damping_sweep"] = out
    print(f"\nDamping on the same request ({name}; the rule chose {chosen:.3g}):\n")
    print(table(["damping", "value", "TA after", "forget error", "loss AUC", "patch norm"],
                rows))


# ---------------------------------------------------------------------------- E3
def e3_part(root: Path | None, stores: Stores, out: dict[str, Any], quick: bool) -> None:
    train, test = (load_dataset("digits") if quick else
                   load_dataset("mnist", root=root, limit_train=E3["limit_train"]))
    recipe = {**RECIPE, "epochs": 30 if quick else E3["epochs"]}
    if quick:
        recipe["model_params"] = {"hidden_sizes": [32]}
        recipe["batch_size"] = 32
    ids = random_forget_ids(train, fraction=E3["fraction"], seed=0)
    forget_set = train.select(ids)
    res: dict[str, Any] = {}
    out["e3"] = res
    for key, cls in (("retrain", Retrain), ("puma", expunge.PUMA),
                     ("naive", expunge.NaiveInfluence)):
        stores.fit(f"e3-{key}", cls, recipe, train)
    rows = []
    for label, key in (("Retrain", "retrain"), ("PUMA", "puma"), ("NaiveInfluence", "naive")):
        model = stores.copy(f"e3-{key}")
        before = (1 - accuracy(model, forget_set), loss_auc(model, forget_set, test))
        report = model.forget(ids)
        after = (1 - accuracy(model, forget_set), loss_auc(model, forget_set, test))
        res[key] = {"error_before": before[0], "auc_before": before[1], "error": after[0],
                    "auc": after[1], "test": accuracy(model, test), "seconds": report.seconds}
        rows.append([label, pct(before[0]), pct(after[0]), f"{before[1]:.3f}",
                     f"{after[1]:.3f}", pct(accuracy(model, test)), f"{report.seconds:.2f}"])
        if key == "puma":
            res["fit"] = {"damping": model.fitted_.cache.damping,
                          "damping_info": model.fitted_.cache.damping_info}
        model.close()
    print(f"\n### E3: memorising model ({len(train)} images, {recipe['epochs']} epochs, "
          f"{len(ids)} removed)\n")
    print(table(["method", "forget error before", "forget error after",
                 "loss AUC before", "loss AUC after", "TA after", "request s"], rows))
    for key in ("puma", "naive"):
        print(f"{key}: forget error gap {100 * (res[key]['error'] - res['retrain']['error']):+.2f}"
              f" points (goal: within 1.5), AUC gap {res[key]['auc'] - res['retrain']['auc']:+.3f}"
              " (goal: within 0.015)")
    damping_part("e3", stores, ids, forget_set, test, res, 0.0, members=test)


# ---------------------------------------------------------------------------- E6
def e6_part(root: Path | None, out: dict[str, Any], quick: bool) -> None:
    """E6's protocol (src/expunge/bench/specs/e6_mislabel.toml): 5 % flipped, clean criterion."""
    train, _ = load_dataset("digits") if quick else load_dataset("mnist", root=root)
    params = {"model": "logreg", "epochs": 5 if quick else 10,
              "batch_size": 32 if quick else 128, "lr": 0.05, "momentum": 0.9,
              "weight_decay": 5e-4, "seed": 0, "val_fraction": 0.1}
    rng = np.random.default_rng(3000)
    flip = rng.choice(len(train), size=round(0.05 * len(train)), replace=False)
    y = train.y.numpy().copy()
    y[flip] = (y[flip] + rng.integers(1, train.n_classes, size=len(flip))) % train.n_classes
    in_val = np.isin(train.ids, expunge.PUMA(**params).validation_ids(train))
    y[in_val] = train.y.numpy()[in_val]  # flips only in the training split
    noisy = train.with_labels(y)
    flipped = set(train.ids[flip][~in_val[flip]].tolist())
    res: dict[str, Any] = {}
    out["e6"] = res
    rows = []
    for label, extra, curvatures in (
            ("PUMA (whole-network K-FAC, default)", {}, ("ekfac", "kfac")),
            ("PUMA (exact curvature: solver='cg', damping=1e-4; E6's spec)",
             {"solver": "cg", "damping": 1e-4}, ("exact",))):
        started = time.perf_counter()
        model = expunge.PUMA(**params, **PUMA_OVERRIDES, **extra).fit(noisy)
        fit = time.perf_counter() - started
        for curvature in curvatures:
            started = time.perf_counter()
            ranked = (expunge.rank_mislabelled(model) if curvature == "exact" else
                      expunge.rank_mislabelled(model, curvature=curvature))
            seconds = time.perf_counter() - started
            found = len(flipped & set(ranked[: len(ranked) // 10].tolist())) / len(flipped)
            name = label if curvature == "exact" else f"{label}, scores: {curvature}"
            res[name] = {"found_at_10": found, "score_seconds": seconds, "fit_seconds": fit}
            rows.append([name, f"{found:.3f}", f"{seconds:.2f}", f"{fit:.1f}"])
    print("\n### E6: flipped labels found in the first 10 % inspected (goal >= 0.86)\n")
    print(table(["ranking", "found @ 10 %", "score s", "fit s"], rows))


# ---------------------------------------------------------------------------- main
def warm_up() -> None:
    """Pay one-time costs (torch's lazy imports on the first optimizer and the first
    torch.func transform: seconds) before anything is timed."""
    train, _ = load_dataset("digits")
    small = train.select(train.ids[:200])
    params = {"model": "mlp", "model_params": {"hidden_sizes": [8]}, "epochs": 1,
              "val_fraction": 0.1}
    Retrain(**{k: v for k, v in params.items() if k != "val_fraction"}).fit(small)
    expunge.PUMA(**params).fit(small).forget(small.ids[:2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/mnist")
    parser.add_argument("--quick", action="store_true", help="digits instead of MNIST")
    parser.add_argument("--parts", default="mlp,e3,lenet,e6")
    parser.add_argument("--requests", type=int, default=9, help="single-id requests")
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--raw", action="store_true",
                        help="MNIST in its stored dtype (uint8 + transform): docs/data.md")
    parser.add_argument("--cache-samples", type=int,
                        help="PUMA's and NaiveInfluence's curvature sample (default: theirs)")
    args = parser.parse_args()
    if args.cache_samples is not None:
        PUMA_OVERRIDES["cache_samples"] = args.cache_samples
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ApproximationWarning)
    root = None if args.quick else Path(args.data_root)
    parts = set(args.parts.split(","))
    out: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                           "threads": torch.get_num_threads(), "recipe": RECIPE,
                           "argv": sys.argv[1:]}
    warm_up()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="measure-puma-") as scratch:
        stores = Stores(Path(scratch))
        if "mlp" in parts:
            if args.quick:
                train, test = load_dataset("digits")
                recipe = {**RECIPE, "model_params": {"hidden_sizes": [32]}, "epochs": 3,
                          "batch_size": 32}
            else:
                # --raw: MNIST as stored (uint8 + its transform, bit-identical model inputs),
                # so the store keeps 1 byte per pixel and a request rewrites 4x less data
                train, test = load_dataset("mnist", root=root, raw=args.raw)
                recipe = RECIPE
            requests_part("mlp", train, test, recipe, stores, args.requests, True, out)
        if "e3" in parts:
            e3_part(root, stores, out, args.quick)
        if "lenet" in parts:
            limit = LENET["limit_train"]
            train, test = (load_dataset("digits") if args.quick else
                           load_dataset("mnist", root=root, limit_train=limit, raw=args.raw))
            recipe = {k: v for k, v in LENET.items() if k != "limit_train"}
            if args.quick:
                recipe.update(epochs=2, batch_size=32)
            requests_part("lenet", train, test, recipe, stores, max(3, args.requests // 2),
                          False, out)
        if "e6" in parts:
            e6_part(root, out, args.quick)
    out["total_seconds"] = time.perf_counter() - started
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread, "
          f"{platform.machine()}, Python {platform.python_version()}; total "
          f"{out['total_seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

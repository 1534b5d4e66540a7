"""Experiment kinds: how each experiment is run, tabulated and plotted.

A kind is ``run(ctx) -> {"rows": [...], "series": {...}}`` (JSON-able) plus its table
columns and a plot function. Kinds only use expunge's public API.
"""

from __future__ import annotations

import statistics
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expunge.bench._context import Context
from expunge.data import IndexedDataset, class_forget_ids, random_forget_ids

Column = tuple[str, str, str]  # key, header, format


@dataclass(frozen=True)
class Kind:
    run: Callable[[Context], dict[str, Any]]
    columns: list[Column]
    keys: list[str]  # identity columns (not averaged over seeds)
    plot: Callable[[list[dict[str, Any]], dict[str, Any], Path, str], None] | None = None


KINDS: dict[str, Kind] = {}


def kind(name: str, columns: list[Column], keys: list[str],
         plot: Callable[..., None] | None = None) -> Callable[[Callable[..., Any]], Any]:
    def register(run: Callable[[Context], dict[str, Any]]) -> Callable[[Context], dict[str, Any]]:
        KINDS[name] = Kind(run, columns, keys, plot)
        return run
    return register


def accuracy(strategy: Any, data: IndexedDataset) -> float:
    return float("nan") if len(data) == 0 else float(strategy.score(data))


def single_requests(strategy: Any, ids: Any) -> dict[str, Any]:
    """Forget ``ids`` one request each; medians and means of their cost, the share costing
    nothing, and every request's sample-passes (a median of 0 hides what the rest cost)."""
    reports = [strategy.forget([int(i)]) for i in ids]
    passes = [int(r.sample_passes) for r in reports]
    own = [_own_seconds(r) for r in reports]
    return {
        # the strategy's own work, where it reports it (PUMA): the rest is the base class's
        # data copy and rewrite, the commit and the purge
        "single_own_seconds": statistics.median(own) if all(o == o for o in own)
        else float("nan"),
        "single_seconds": statistics.median(r.seconds for r in reports),
        "single_passes": statistics.median(passes),
        "single_retrained": statistics.median(r.samples_retrained for r in reports),
        "mean_seconds": statistics.fmean(r.seconds for r in reports),
        "mean_passes": statistics.fmean(passes),
        "mean_retrained": statistics.fmean(r.samples_retrained for r in reports),
        "untouched": sum(p == 0 for p in passes) / len(reports),
        "passes_per_request": passes,
    }


def request_ids(ctx: Context, offset: int, requests: int) -> tuple[list[int], np.ndarray]:
    """The single ids (``settings.requests``, default ``requests``; drawn with seed
    ``ctx.seed + offset``) and the batch (``settings.batch_fraction`` of the training set)."""
    train, _ = ctx.data()
    rng = np.random.default_rng(ctx.seed + offset)
    singles = rng.choice(train.ids, size=int(ctx.spec.settings.get("requests", requests)),
                         replace=False).tolist()
    batch = random_forget_ids(train, fraction=float(ctx.spec.settings.get("batch_fraction", 0.01)),
                              seed=ctx.seed)
    return singles, batch


def _own_seconds(report: Any) -> float:
    """``details["seconds"]["strategy_total"]`` of a request, NaN where not reported."""
    return float(report.details.get("seconds", {}).get("strategy_total", float("nan")))


def store_bytes(strategy: Any) -> int:
    path = Path(strategy.store_location)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> None:
    """Lay out, write a small PNG, and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _with_gaps(rows: list[dict[str, Any]], reference: str, match: list[str],
               fields: list[str]) -> None:
    """Add ``<field>_gap`` = value - the reference strategy's value in the matching row."""
    for row in rows:
        ref = next((r for r in rows if r["strategy"] == reference
                    and all(r[m] == row[m] for m in match)), None)
        for f in fields:
            row[f"{f}_gap"] = (row[f] - ref[f]) if ref is not None else float("nan")


# --------------------------------------------------------------------------- E1
def _plot_removal(rows: list[dict[str, Any]], spec: dict[str, Any], path: Path, title: str) -> None:
    plt = _plt()
    fractions = sorted({r["fraction"] for r in rows})
    labels = list(dict.fromkeys(r["strategy"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        for ax, field_name in zip(axes, ("test_after", "forget_acc"), strict=True):
            values = [next(r[field_name] for r in rows if r["strategy"] == label
                           and r["fraction"] == f) for f in fractions]
            ax.bar(np.arange(len(fractions)) + i * width, values, width, label=label)
    for ax, name in zip(axes, ("test accuracy after removal", "accuracy on the forget set"),
                        strict=True):
        ax.set_xticks(np.arange(len(fractions)) + 0.4 - width / 2,
                      [f"{100 * f:g} % removed" for f in fractions])
        ax.set_title(name)
        low = min(r["forget_acc"] for r in rows) if "forget" in name else min(
            r["test_after"] for r in rows)
        ax.set_ylim(max(0.0, low - 0.05), 1.0)
    # one legend beside both panels: inside, it hides the first bars
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=10)
    _save(plt, fig, path)


@kind("removal", keys=["strategy", "fraction"], plot=_plot_removal, columns=[
    ("strategy", "strategy", "s"), ("fraction", "removed", "%"),
    ("test_before", "TA before", ".4f"), ("test_after", "TA after", ".4f"),
    ("test_after_gap", "TA gap to retrain", "+.4f"), ("forget_acc", "forget acc.", ".4f"),
    ("forget_acc_gap", "forget gap", "+.4f"), ("retain_acc", "RA", ".4f"),
    ("forget_seconds", "forget s", ".2f"), ("sample_passes", "sample-passes", ",.0f"),
])
def removal(ctx: Context) -> dict[str, Any]:
    """Random removal of each fraction as one request, from the same fitted model."""
    train, test = ctx.data()
    rows = []
    for fraction in ctx.spec.settings["fractions"]:
        ids = random_forget_ids(train, fraction=fraction, seed=ctx.seed)
        forget_set, retain_set = train.select(ids), train.drop(ids)
        for label in ctx.spec.strategies:
            strategy, _ = ctx.fitted_copy(label)
            before = accuracy(strategy, test)
            report = strategy.forget(ids)
            rows.append({
                "strategy": label, "fraction": fraction, "test_before": before,
                "test_after": accuracy(strategy, test),
                "forget_acc": accuracy(strategy, forget_set),
                "retain_acc": accuracy(strategy, retain_set),
                "forget_seconds": report.seconds, "sample_passes": report.sample_passes,
            })
            strategy.close()
            ctx.log(f"  {label} {fraction:.3g}: TA {rows[-1]['test_after']:.4f}, "
                    f"{report.seconds:.2f} s")
    _with_gaps(rows, ctx.spec.reference, ["fraction"], ["test_after", "forget_acc"])
    return {"rows": rows}


# --------------------------------------------------------------------------- E2
def _plot_class(rows: list[dict[str, Any]], spec: dict[str, Any], path: Path, title: str) -> None:
    plt = _plt()
    labels = [r["strategy"] for r in rows]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for offset, (key, name) in enumerate([("removed_before", "removed class, before"),
                                          ("removed_after", "removed class, after"),
                                          ("others_after", "other classes, after")]):
        ax.bar(x + offset * 0.27, [r[key] for r in rows], 0.27, label=name)
    ax.set_xticks(x + 0.27, labels)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.0, 1.2)  # headroom: the legend sits above the bars, not on them
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    ax.set_title(title, fontsize=10)
    _save(plt, fig, path)


@kind("class_removal", keys=["strategy"], plot=_plot_class, columns=[
    ("strategy", "strategy", "s"), ("label", "class", "d"),
    ("removed_before", "removed class before", ".4f"),
    ("removed_after", "removed class after", ".4f"),
    ("others_before", "other classes before", ".4f"),
    ("others_after", "other classes after", ".4f"),
    ("others_after_gap", "others gap to retrain", "+.4f"),
    ("forget_seconds", "forget s", ".2f"), ("sample_passes", "sample-passes", ",.0f"),
])
def class_removal(ctx: Context) -> dict[str, Any]:
    """Forget every training sample of one class in one request."""
    train, test = ctx.data()
    label = int(ctx.spec.settings.get("label", 0))
    ids = class_forget_ids(train, label)
    in_class = (test.y == label).numpy()
    removed_test, other_test = test.where(in_class), test.where(~in_class)
    rows = []
    for name in ctx.spec.strategies:
        strategy, _ = ctx.fitted_copy(name)
        before = (accuracy(strategy, removed_test), accuracy(strategy, other_test))
        report = strategy.forget(ids)
        rows.append({
            "strategy": name, "label": label, "removed_before": before[0],
            "others_before": before[1], "removed_after": accuracy(strategy, removed_test),
            "others_after": accuracy(strategy, other_test),
            "forget_seconds": report.seconds, "sample_passes": report.sample_passes,
        })
        strategy.close()
    _with_gaps(rows, ctx.spec.reference, [], ["others_after"])
    return {"rows": rows}


# ----------------------------------------------------------------------- E4/E7
def _plot_speedup(rows: list[dict[str, Any]], spec: dict[str, Any], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    labels = [r["strategy"] for r in rows]
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [r["speedup_single"] for r in rows], 0.4, label="one id")
    ax.bar(x + 0.2, [r["speedup_batch"] for r in rows], 0.4, label="one batch")
    for i, r in enumerate(rows):
        if r.get("theory") == r.get("theory"):  # not NaN
            ax.plot([i - 0.4, i + 0.4], [r["theory"]] * 2, "k--", lw=1,
                    label="SISA theory S·3R/(2R+1)")
    ax.set_xticks(x, labels)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up over retrain (wall time)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.legend(fontsize=8)
    ax.set_title(textwrap.fill(title, 80), fontsize=9)
    _save(plt, fig, path)


@kind("efficiency", keys=["strategy"], plot=_plot_speedup, columns=[
    ("strategy", "strategy", "s"), ("fit_seconds", "fit s (one-time)", ".1f"),
    ("precompute_seconds", "precompute s", ".2f"), ("store_mb", "store MB", ".1f"),
    ("single_seconds", "median s / id", ".3f"),
    ("single_own_seconds", "… strategy's own work", ".3f"),
    ("speedup_single", "speed-up / id", ".1f"),
    ("theory", "SISA theory", ".1f"), ("batch_seconds", "s / batch", ".2f"),
    ("batch_own_seconds", "… own work", ".2f"),
    ("speedup_batch", "speed-up / batch", ".1f"),
    ("single_passes", "median sample-passes / id", ",.0f"),
    ("mean_passes", "mean sample-passes / id", ",.0f"),
])
def efficiency(ctx: Context) -> dict[str, Any]:
    """Seconds per request (single ids in sequence, and one batch) and one-time costs."""
    singles, batch = request_ids(ctx, 1000, 5)
    rows = []
    for label in ctx.spec.strategies:
        strategy, fit_seconds = ctx.fitted_copy(label)
        fit_entry = strategy.ledger.entries()[0]
        costs = single_requests(strategy, singles)
        size = store_bytes(strategy)
        strategy.close()
        strategy, _ = ctx.fitted_copy(label)
        batch_report = strategy.forget(batch)
        strategy.close()
        params = ctx.spec.strategy_params(label, ctx.seed)[1]
        theory = float("nan")
        if ctx.spec.strategies[label].get("strategy", label) == "sisa":
            S, R = params.get("n_shards", 5), params.get("n_slices", 5)
            theory = S * 3 * R / (2 * R + 1)
        rows.append({
            "strategy": label, "fit_seconds": fit_seconds,
            "precompute_seconds": float(fit_entry.details.get("precompute_seconds", 0.0)),
            "store_mb": size / 2**20, **costs,
            "batch_seconds": batch_report.seconds, "theory": theory,
            "batch_own_seconds": _own_seconds(batch_report),
        })
        ctx.log(f"  {label}: {rows[-1]['single_seconds']:.3f} s per id")
    ref = next(r for r in rows if r["strategy"] == ctx.spec.reference)
    for r in rows:
        r["speedup_single"] = ref["single_seconds"] / r["single_seconds"]
        r["speedup_batch"] = ref["batch_seconds"] / r["batch_seconds"]
    return {"rows": rows}


# ----------------------------------------------------------------------- A1-A3
def _plot_sweep(rows: list[dict[str, Any]], spec: dict[str, Any], path: Path, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for label in dict.fromkeys(r["strategy"] for r in rows):
        mine = sorted((r for r in rows if r["strategy"] == label), key=lambda r: r["fraction"])
        xs = [100 * r["fraction"] for r in mine]
        for ax, key in zip(axes, ("test_after", "forget_seconds", "samples_retrained"),
                           strict=True):
            ax.plot(xs, [r[key] for r in mine], marker="o", label=label)
    fractions = sorted({100 * r["fraction"] for r in rows})
    for ax, name in zip(axes, ("A1 test accuracy", "A2 seconds per batch",
                               "A3 distinct samples retrained"), strict=True):
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g} %" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("requests (% of training set, one batch)")
        ax.set_title(name, fontsize=10)
    axes[1].set_ylim(bottom=0)  # linear from 0: the ratios between lines are the point
    axes[2].set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(plt, fig, path)


@kind("requests_sweep", keys=["strategy", "fraction"], plot=_plot_sweep, columns=[
    ("strategy", "strategy", "s"), ("fraction", "requests", "%"),
    ("test_after", "A1 TA after", ".4f"), ("forget_seconds", "A2 seconds", ".2f"),
    ("speedup", "speed-up", ".1f"), ("samples_retrained", "A3 samples retrained", ",.0f"),
    ("sample_passes", "sample-passes", ",.0f"), ("submodels", "sub-models retrained", "d"),
])
def requests_sweep(ctx: Context) -> dict[str, Any]:
    """Accuracy, time and retrained samples against the fraction of ids requested at once."""
    train, test = ctx.data()
    rows = []
    for fraction in ctx.spec.settings["fractions"]:
        ids = random_forget_ids(train, fraction=fraction, seed=ctx.seed)
        for label in ctx.spec.strategies:
            strategy, _ = ctx.fitted_copy(label)
            report = strategy.forget(ids)
            rows.append({
                "strategy": label, "fraction": fraction, "test_after": accuracy(strategy, test),
                "forget_seconds": report.seconds, "samples_retrained": report.samples_retrained,
                "sample_passes": report.sample_passes,
                "submodels": len(report.submodels_retrained),
            })
            strategy.close()
            ctx.log(f"  {label} {fraction:.3g}: {report.seconds:.2f} s, "
                    f"{report.samples_retrained} samples")
    for row in rows:
        ref = next(r for r in rows if r["strategy"] == ctx.spec.reference
                   and r["fraction"] == row["fraction"])
        row["speedup"] = ref["forget_seconds"] / row["forget_seconds"]
    return {"rows": rows}


# --------------------------------------------------------------------------- A7
@kind("budget", keys=["strategy"], columns=[
    ("strategy", "strategy", "s"), ("fit_passes", "training budget (sample-passes)", ",.0f"),
    ("test_acc", "TA", ".4f"), ("single_seconds", "median s / id", ".3f"),
    ("single_passes", "median sample-passes / id", ",.0f"),
    ("mean_passes", "mean sample-passes / id", ",.0f"), ("batch_seconds", "s / 1 % batch", ".2f"),
    ("batch_passes", "sample-passes / 1 % batch", ",.0f"),
])
def budget(ctx: Context) -> dict[str, Any]:
    """Strategies compared at (about) equal total training budget, as recorded by fit."""
    _, test = ctx.data()
    singles, batch = request_ids(ctx, 2000, 5)
    rows = []
    for label in ctx.spec.strategies:
        strategy, _ = ctx.fitted_copy(label)
        fit_passes = strategy.ledger.entries()[0].sample_passes
        test_acc = accuracy(strategy, test)
        costs = single_requests(strategy, singles)
        strategy.close()
        strategy, _ = ctx.fitted_copy(label)
        started = time.perf_counter()
        batch_report = strategy.forget(batch)
        strategy.close()
        rows.append({
            "strategy": label, "fit_passes": fit_passes, "test_acc": test_acc, **costs,
            "batch_seconds": time.perf_counter() - started,
            "batch_passes": batch_report.sample_passes,
        })
    return {"rows": rows}

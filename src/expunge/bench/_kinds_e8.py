"""E8: every approximate baseline next to PUMA, naive influence and the exact strategies,
on three kinds of forget sets, over several training seeds, judged by the harness.

The three forget sets (random, memorisation-ranked, one class) are drawn once, with the
first training seed, and are the same for every seed: the seed protocol varies the
training seed for a fixed request (Lanyon et al., arXiv 2510.26714), and KLoM compares
the seeds' models point by point. For each training seed (``settings.train_seeds``; the
runner's ``--seeds`` is not used, since KLoM and the intervals need the seeds together)
and each strategy, the model is fitted once; for each forget set a copy forgets it and
:func:`expunge.evaluate` measures it against Retrain on the retained data. One
:class:`~expunge.evaluation.EvaluationCache` serves every evaluation of a seed: the
retrained references, and the RMIA reference models (Retrain's recipe, ``shadow_recipe=
"retrain"``), which are also the models that rank samples by memorisation.
:func:`~expunge.evaluation.combine_reports` then gives each (strategy, forget set) its
mean and 95 % interval over the training seeds, and KLoM across them.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

import expunge
from expunge.bench._context import Context
from expunge.bench._kinds import _plt, _save, kind
from expunge.data import class_forget_ids, random_forget_ids
from expunge.evaluation import (
    EvaluationCache,
    EvaluationReport,
    combine_reports,
    interval,
    memorised_forget_ids,
)
from expunge.exceptions import DivergedError

FORGET_SETS = ("random", "memorised", "class")
SUMMARY = "mean of 3"
#: report rows -> e8 columns (model side unless the name ends in _ref)
PICKED = {"UA": "UA", "UA_ref": "UA", "RA": "RA", "TA": "TA", "TA_ref": "TA",
          "mia_eff": "mia.svc.efficacy", "mia_eff_ref": "mia.svc.efficacy",
          "rmia_auc": "mia.rmia.auc", "rmia_auc_ref": "mia.rmia.auc",
          "klom_forget": "klom.forget.mean", "klom_retain": "klom.retain.mean",
          "klom_gauss": "klom.forget.gaussian", "klom_gauss_retain": "klom.retain.gaussian",
          "relearn": "relearn.steps", "relearn_ref": "relearn.steps",
          "avg_gap": "avg_gap"}


def _value(report: EvaluationReport, column: str) -> tuple[float, float | None]:
    """(mean, 95 % CI half-width) of a column from a combined report."""
    try:
        row = report[PICKED[column]]
    except KeyError:
        return float("nan"), None
    if column.endswith("_ref"):
        value, ci = row.reference, row.reference_ci
    else:
        value, ci = row.model, row.model_ci
    return (float("nan") if value is None else float(value)), ci


def _forget_sets(ctx: Context, cache: EvaluationCache) -> dict[str, np.ndarray]:
    settings = ctx.spec.settings
    train, test = ctx.data()
    fraction = float(settings.get("fraction", 0.05))
    template = expunge.Retrain(**ctx.spec.strategy_params(ctx.spec.reference, ctx.seed)[1])
    chosen = settings.get("forget_sets", list(FORGET_SETS))
    sets = {
        "random": lambda: random_forget_ids(train, fraction=fraction, seed=ctx.seed),
        "memorised": lambda: memorised_forget_ids(
            template, train, test, fraction=fraction,
            n_models=int(settings.get("shadow_models", 4)), seed=ctx.seed, cache=cache),
        "class": lambda: class_forget_ids(train, int(settings.get("label", 0))),
    }
    return {name: sets[name]() for name in chosen}


def _evaluate_seed(ctx: Context, forget_sets: dict[str, np.ndarray], cache: EvaluationCache,
                   reports: dict[tuple[str, str], list[EvaluationReport]],
                   seconds: dict[tuple[str, str], list[float]],
                   diverged: dict[tuple[str, str], list[int]]) -> None:
    """Fit every strategy once for ``ctx.seed``; forget and evaluate each forget set. A
    request refused as diverged (non-finite parameters) is recorded in ``diverged``."""
    settings = ctx.spec.settings
    train, test = ctx.data()
    only = settings.get("only")
    for label in ctx.spec.strategies:
        if only and label not in only:
            continue
        for name, ids in forget_sets.items():
            strategy, _ = ctx.fitted_copy(label)
            started = time.perf_counter()
            try:
                report = expunge.evaluate(
                    strategy, train=train, test=test, forget_ids=ids, reference="retrain",
                    attacks=settings.get("attacks", ["svc", "rmia", "klom"]),
                    checks=settings.get("checks", []), forget=True,
                    shadow_models=int(settings.get("shadow_models", 4)),
                    svc_max_samples=settings.get("svc_max_samples", 5000), cache=cache,
                    shadow_recipe="retrain")
            except DivergedError as error:  # a failure of the method, reported as one
                ctx.log(f"  seed {ctx.seed} {label} {name}: diverged ({error})")
                diverged.setdefault((label, name), []).append(ctx.seed)
                continue
            finally:
                strategy.close()
            request = report.runs[0]["forget_report"]["seconds"]
            reports.setdefault((label, name), []).append(report)
            seconds.setdefault((label, name), []).append(float(request))
            ctx.log(f"  seed {ctx.seed} {label} {name}: UA {report['UA'].model:.4f} "
                    f"(retrain {report['UA'].reference:.4f}), TA {report['TA'].model:.4f}, "
                    f"request {request:.2f} s, evaluation {time.perf_counter() - started:.1f} s")
        ctx.log(f"  cache: {cache.summary()}")


def _plot_e8(rows: list[dict[str, Any]], spec: dict[str, Any], path: Path, title: str) -> None:
    plt = _plt()
    summary = [r for r in rows if r["forget_set"] == SUMMARY and np.isfinite(r["avg_gap"])]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    for i, r in enumerate(summary):
        x, y = 100 * r["rel_time"], 100 * r["avg_gap"]
        err = 100 * (r.get("avg_gap_ci") or 0.0)
        ax.errorbar([x], [y], yerr=[err], fmt="o", color=f"C{i % 10}", capsize=3)
        ax.annotate(r["strategy"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.axvline(10, color="grey", lw=0.8, ls="--")
    ax.axhline(2, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("request time, % of Retrain's (log)")
    ax.set_ylabel("Avg. Gap to Retrain, mean of 3 forget sets (points)")
    ax.set_title("cost vs fidelity (95 % CI over training seeds)", fontsize=9)
    ax = axes[1]
    labels = [r["strategy"] for r in summary]
    x = np.arange(len(labels))
    for k, name in enumerate(FORGET_SETS):
        values = [next((100 * (r["UA"] - r["UA_ref"]) for r in rows
                        if r["strategy"] == s and r["forget_set"] == name), np.nan)
                  for s in labels]
        ax.bar(x + (k - 1) * 0.27, values, 0.27, label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("UA - Retrain's UA (points)")
    ax.set_title("forget-set error against Retrain's, per forget set", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(plt, fig, path)


@kind("baselines", keys=["strategy", "forget_set"], plot=_plot_e8, columns=[
    ("strategy", "strategy", "s"), ("forget_set", "forget set", "s"),
    ("UA", "UA", ".2%"), ("UA_ref", "UA retrain", ".2%"), ("RA", "RA", ".2%"),
    ("TA", "TA", ".2%"), ("TA_ref", "TA retrain", ".2%"),
    ("mia_eff", "MIA-eff.", ".2%"), ("mia_eff_ref", "… retrain", ".2%"),
    ("rmia_auc", "RMIA AUC", ".3f"), ("rmia_auc_ref", "… retrain", ".3f"),
    ("klom_forget", "KLoM forget", ".2f"), ("klom_gauss", "KLoM (normal fit)", ".2f"),
    ("avg_gap", "Avg. Gap", ".2%"),
    ("rel_time", "time / retrain", ".3f"),
])
def baselines(ctx: Context) -> dict[str, Any]:
    """Every strategy x forget set x training seed, combined over seeds with intervals."""
    reports: dict[tuple[str, str], list[EvaluationReport]] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    diverged: dict[tuple[str, str], list[int]] = {}
    seeds = [int(s) for s in ctx.spec.settings.get("train_seeds", [ctx.seed])]
    # one forget set of each kind for every training seed (KLoM compares the seeds' models
    # point by point): drawn, and ranked by memorisation, with the first seed's models
    caches = {seed: EvaluationCache() for seed in seeds}
    with ctx.timed("forget sets"):
        forget_sets = _forget_sets(dataclasses.replace(ctx, seed=seeds[0]), caches[seeds[0]])
    for seed in seeds:
        seeded = dataclasses.replace(ctx, seed=seed, _fitted={})
        _evaluate_seed(seeded, forget_sets, caches.pop(seed), reports, seconds, diverged)
        for child in ctx.scratch.iterdir():  # this seed's fitted stores and copies
            shutil.rmtree(child, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    reference = ctx.spec.reference
    for label, name in diverged.keys() - reports.keys():  # diverged on every seed
        rows.append({"strategy": label, "forget_set": name, "seeds": [],
                     "diverged_seeds": diverged[(label, name)],
                     **{column: float("nan") for column in PICKED},
                     "rel_time": float("nan"), "per_seed_avg_gap": []})
    for (label, name), reps in reports.items():
        combined = combine_reports(reps)
        row: dict[str, Any] = {"strategy": label, "forget_set": name,
                               "seeds": [r.seeds[0] for r in reps],
                               "diverged_seeds": diverged.get((label, name), [])}
        for column in PICKED:
            row[column], ci = _value(combined, column)
            if ci is not None:
                row[f"{column}_ci"] = ci
        done = [seeds.index(s) for s in row["seeds"]]  # the reference ran on every seed
        ratios = [s / seconds[(reference, name)][i]
                  for s, i in zip(seconds[(label, name)], done, strict=True)]
        row["rel_time"], _, row["rel_time_ci"] = interval(list(ratios), row["seeds"])
        row["forget_seconds"] = statistics.fmean(seconds[(label, name)])
        row["per_seed_avg_gap"] = [r["avg_gap"].model for r in reps]
        row["guarantee"] = reps[0].guarantee
        row["timings"] = combined.timings  # seconds per metric family, summed over seeds
        rows.append(row)
    for label in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == label]
        failed = sorted({(r["forget_set"], s) for r in mine for s in r["diverged_seeds"]})
        if failed:  # a method that diverged on some request has no mean over the sets
            rows.append({"strategy": label, "forget_set": SUMMARY, "avg_gap": float("nan"),
                         "rel_time": float("nan"),
                         "diverged": [f"{name} seed {seed}" for name, seed in failed]})
            continue
        # the mean over forget sets per seed, then the interval over seeds
        per_seed = np.mean([r["per_seed_avg_gap"] for r in mine], axis=0).tolist()
        times = np.mean([[s / t for s, t in zip(seconds[(label, r["forget_set"])],
                                                 seconds[(reference, r["forget_set"])])]
                         for r in mine], axis=0).tolist()
        gap, _, gap_ci = interval(per_seed, mine[0]["seeds"])
        rel, _, rel_ci = interval(times, mine[0]["seeds"])
        summary = {"strategy": label, "forget_set": SUMMARY, "avg_gap": gap, "avg_gap_ci": gap_ci,
                   "rel_time": rel, "rel_time_ci": rel_ci}
        for column in ("UA", "UA_ref", "RA", "TA", "TA_ref", "mia_eff", "mia_eff_ref",
                       "rmia_auc", "rmia_auc_ref", "klom_forget", "klom_gauss"):
            summary[column] = float(np.mean([r[column] for r in mine]))
        rows.append(summary)
    return {"rows": rows}

"""Experiment kind shaped like a user's job (U1): a CNN trained with the user's recipe on
image data kept as uint8, and what honouring deletion requests then costs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from expunge.bench._context import Context
from expunge.bench._kinds import (
    _plt,
    _save,
    accuracy,
    kind,
    request_ids,
    single_requests,
    store_bytes,
)


def _plot_workload(rows: list[dict[str, Any]], spec: dict[str, Any], path: Path,
                   title: str) -> None:
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    labels = [r["strategy"] for r in rows]
    x = np.arange(len(labels))
    left.bar(x - 0.2, [r["single_seconds"] for r in rows], 0.4, label="one id (median)")
    left.bar(x + 0.2, [r["batch_seconds"] for r in rows], 0.4, label="1 % batch")
    left.set_xticks(x, labels)
    left.set_ylabel("seconds per request")
    left.legend(fontsize=8)
    right.bar(x - 0.2, [r["test_acc"] for r in rows], 0.4, label="after fit")
    right.bar(x + 0.2, [r["test_acc_after"] for r in rows], 0.4, label="after the batch")
    right.set_xticks(x, labels)
    right.set_ylim(min(0.9, *(r["test_acc_after"] for r in rows)) - 0.02, 1.0)
    right.set_ylabel("test accuracy")
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    _save(plt, fig, path)


@kind("workload", keys=["strategy"], plot=_plot_workload, columns=[
    ("strategy", "strategy", "s"), ("fit_seconds", "fit s", ".0f"),
    ("test_acc", "TA after fit", ".4f"), ("single_seconds", "median s / id", ".1f"),
    ("speedup_single", "speed-up / id", ".1f"), ("batch_seconds", "s / 1 % batch", ".1f"),
    ("speedup_batch", "speed-up / batch", ".1f"), ("test_acc_after", "TA after batch", ".4f"),
    ("store_mb", "store MB", ".1f"), ("data_mb", "raw data MB", ".1f"),
    ("single_passes", "median sample-passes / id", ",.0f"),
])
def workload(ctx: Context) -> dict[str, Any]:
    """Fit each strategy once; single-id requests in sequence on one copy, a batch on
    another; test accuracy after the fit and after the batch; the store's size after fit
    beside the raw bytes of the training inputs (uint8 with ``raw = true``)."""
    train, test = ctx.data()
    singles, batch = request_ids(ctx, 3000, 2)
    rows = []
    for label in ctx.spec.strategies:
        strategy, fit_seconds = ctx.fitted_copy(label)
        test_acc = accuracy(strategy, test)
        size = store_bytes(strategy)
        ctx.log(f"  {label}: fit {fit_seconds:.0f} s, test accuracy {test_acc:.4f}")
        costs = single_requests(strategy, singles)
        strategy.close()
        strategy, _ = ctx.fitted_copy(label)
        report = strategy.forget(batch)
        test_acc_after = accuracy(strategy, test)
        strategy.close()
        rows.append({
            "strategy": label, "fit_seconds": fit_seconds, "test_acc": test_acc,
            "store_mb": size / 2**20, "data_mb": train.nbytes / 2**20, **costs,
            "batch_seconds": report.seconds, "batch_passes": report.sample_passes,
            "test_acc_after": test_acc_after,
        })
        ctx.log(f"  {label}: {costs['single_seconds']:.1f} s per id, "
                f"{report.seconds:.1f} s per batch")
    ref = next(r for r in rows if r["strategy"] == ctx.spec.reference)
    for r in rows:
        r["speedup_single"] = ref["single_seconds"] / r["single_seconds"]
        r["speedup_batch"] = ref["batch_seconds"] / r["batch_seconds"]
    return {"rows": rows}

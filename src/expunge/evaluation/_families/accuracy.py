"""Accuracy: UA, RA, TA, the removed class, and SalUn's Avg. Gap (ALGORITHMS.md 5.1)."""

from __future__ import annotations

import numpy as np

from expunge.evaluation._families._context import RunContext
from expunge.evaluation._report import MetricRow

GOOD = {
    "UA": ("close to the reference's UA: a retrained model still gets many forget samples "
           "right; far above it = over-forgetting"),
    "RA": "close to the reference's (no collateral damage on the retained data)",
    "TA": "close to the reference's (generalisation kept)",
    "removed_class_TA": "close to the reference's (near 0: a model that never saw a class "
                        "cannot predict it)",
    "other_classes_TA": "close to the reference's (the other classes are unharmed)",
    "avg_gap": "0 = matches the reference on UA, RA, TA (and MIA-Efficacy); lower is better",
}
#: the rows SalUn's Avg. Gap averages (MIA-Efficacy when the svc attack ran)
AVG_GAP_KEYS = ("UA", "RA", "TA", "mia.svc.efficacy")


def accuracy_of(p: np.ndarray, y: np.ndarray) -> float | None:
    return float(np.mean(p.argmax(axis=1) == y)) if y.size else None


def accuracy_rows(ctx: RunContext) -> None:
    """UA = 1 - Acc(D_f), RA, TA; per-class test accuracy; the removed class's TA."""
    P, labels, sides = ctx.P, ctx.labels, ctx.sides
    acc = {s: {k: accuracy_of(P[s][k], labels[k]) for k in ctx.splits} for s in sides}
    ua: dict[str, float | None] = {}
    for s in sides:
        forget_acc = acc[s]["forget"]
        ua[s] = None if forget_acc is None else 1.0 - forget_acc
    ctx.row("UA", "Accuracy", "UA (1 - forget accuracy)", ua, "percent", GOOD["UA"])
    ctx.row("RA", "Accuracy", "RA (retain accuracy)", {s: acc[s]["retain"] for s in sides},
            "percent", GOOD["RA"])
    ctx.row("TA", "Accuracy", "TA (test accuracy)", {s: acc[s]["test"] for s in sides},
            "percent", GOOD["TA"])
    per_class = {}
    y_test = labels["test"]
    for s in sides:
        predictions = P[s]["test"].argmax(axis=1)
        per_class[s] = [float(np.mean(predictions[y_test == c] == c))
                        if (y_test == c).any() else None for c in range(ctx.test.n_classes)]
    ctx.curves["per_class"] = {"classes": list(range(ctx.test.n_classes)), **per_class}
    if ctx.removed_class is not None:
        c = ctx.removed_class
        mask = y_test == c
        ctx.row("removed_class_TA", "Accuracy", f"TA on the removed class {c}",
                {s: accuracy_of(P[s]["test"][mask], y_test[mask]) for s in sides},
                "percent", GOOD["removed_class_TA"])
        ctx.row("other_classes_TA", "Accuracy", "TA on the other classes",
                {s: accuracy_of(P[s]["test"][~mask], y_test[~mask]) for s in sides},
                "percent", GOOD["other_classes_TA"])


def avg_gap_row(ctx: RunContext) -> None:
    """SalUn's Avg. Gap: the mean gap of UA, RA, TA and MIA-Efficacy, after the accuracy
    rows (it needs the svc attack's row when that ran)."""
    if ctx.ref is None:
        return
    keys = [r.key for r in ctx.rows]
    parts = [r.gap for r in ctx.rows if r.key in AVG_GAP_KEYS and r.gap is not None]
    used = "UA, RA, TA" + (", MIA-Efficacy" if "mia.svc.efficacy" in keys else "")
    ctx.rows.insert(
        [r.section for r in ctx.rows].count("Accuracy"),
        MetricRow(key="avg_gap", section="Accuracy", name=f"Avg. Gap ({used})",
                  model=float(np.mean(parts)) if parts else None, kind="percent",
                  good=GOOD["avg_gap"], single=True),
    )

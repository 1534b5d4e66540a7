"""Cost: the forget request's seconds, samples and passes, the store, the fit and the
precompute, next to retraining from scratch (ALGORITHMS.md 5.6)."""

from __future__ import annotations

from typing import Any

import numpy as np

from expunge.evaluation._families._context import RunContext
from expunge.evaluation._report import MetricRow
from expunge.strategies.base import ForgetReport, UnlearningStrategy

SECTION = "Cost"
GOOD = {
    "forget_seconds": "below the reference's (retraining from scratch); the ratio is the speed-up",
    "speedup": "above 1x = faster than retraining from scratch",
    "samples_retrained": "below the reference's (retraining touches every retained sample)",
    "sample_passes": "below the reference's (|D_r| x epochs)",
    "store_bytes": ("what the model keeps to forget fast (checkpoints, caches); the reference "
                    "keeps one model"),
    "fit_seconds": "one-off training cost; the reference column is one retraining",
    "precompute_seconds": ("paid once at fit time by approximate strategies; count it in when "
                           "requests are rare"),
}


def forget_cost(strategy: UnlearningStrategy, ids: np.ndarray,
                report: ForgetReport | None) -> tuple[dict[str, Any] | None, list[str]]:
    """Seconds / samples retrained / passes of the request(s) that forgot ``ids``."""
    if report is not None:
        return report.to_dict(), []
    wanted = set(ids.tolist())
    entries = [e for e in strategy.ledger.entries("forget") if wanted & set(e.ids)]
    if not entries:
        return None, []
    covered = set().union(*(set(e.ids) for e in entries))
    notes = []
    if covered - wanted:
        notes.append(
            f"cost: the {len(entries)} request(s) that forgot these ids also forgot "
            f"{len(covered - wanted)} other id(s); their whole cost is reported."
        )
    return {
        "request_ids": [e.request_id for e in entries],
        "seconds": sum(e.seconds for e in entries),
        "samples_retrained": sum(e.samples_retrained for e in entries),
        "sample_passes": sum(e.sample_passes for e in entries),
    }, notes


def cost_rows(ctx: RunContext) -> None:
    with ctx.timer("cost"):
        strategy, ref = ctx.strategy, ctx.ref
        cost, notes = forget_cost(strategy, ctx.ids, ctx.forget_report)
        ctx.cost = cost
        ctx.notes += notes
        fit_entry = strategy.ledger.entries("fit")[0]
        ref_seconds = ref.seconds if ref is not None else None
        model_seconds = None if cost is None else float(cost["seconds"])
        ctx.rows += [
            MetricRow("cost.forget_seconds", SECTION,
                      "forget seconds (reference: retrain from scratch)", model_seconds,
                      ref_seconds, kind="seconds", good=GOOD["forget_seconds"]),
            MetricRow("cost.speedup", SECTION, "speed-up over retraining",
                      ref_seconds / model_seconds if ref_seconds and model_seconds else None,
                      kind="ratio", good=GOOD["speedup"], single=True),
            MetricRow("cost.samples_retrained", SECTION, "samples retrained",
                      None if cost is None else float(cost["samples_retrained"]),
                      None if ref is None else float(ref.samples_retrained),
                      kind="count", good=GOOD["samples_retrained"]),
            MetricRow("cost.sample_passes", SECTION, "sample passes (samples x epochs)",
                      None if cost is None else float(cost["sample_passes"]),
                      None if ref is None else float(ref.sample_passes),
                      kind="count", good=GOOD["sample_passes"]),
            MetricRow("cost.store_bytes", SECTION, "store bytes (cache excluded)",
                      float(ctx.store_bytes),
                      None if ref is None or ref.store_bytes is None
                      else float(ref.store_bytes), kind="bytes", good=GOOD["store_bytes"]),
            MetricRow("cost.fit_seconds", SECTION, "fit seconds", fit_entry.seconds,
                      ref_seconds, kind="seconds", good=GOOD["fit_seconds"]),
        ]
        # where a strategy records its one-off precompute: the fit's ledger details, or
        # the fitted model's info (PUMA keeps it there, carried across requests)
        precompute = fit_entry.details.get("precompute_seconds")
        if precompute is None:
            precompute = strategy.fitted_.info.get("precompute_seconds")
        if precompute is not None or strategy.guarantee != "exact":
            ctx.rows.append(MetricRow("cost.precompute_seconds", SECTION,
                                      "precompute seconds (at fit)",
                                      None if precompute is None else float(precompute),
                                      kind="seconds", good=GOOD["precompute_seconds"],
                                      single=True))
        if cost is None:
            ctx.notes.append("cost: n/a, the model has not forgotten the ids (no forget "
                             "request covers them).")

"""Distances to the reference: agreement, L1 of softmax, JS divergence, parameter L2
(ALGORITHMS.md 5.4)."""

from __future__ import annotations

from expunge.evaluation._distances import (
    js_divergence,
    mean_l1_distance,
    parameter_l2,
    prediction_agreement,
)
from expunge.evaluation._families._context import RunContext
from expunge.evaluation._report import MetricRow

SECTION = "Distance to reference"
GOOD = {
    "agreement": ("1 for exact methods; otherwise close to the agreement of two references "
                  "trained with different seeds (run with seeds=)"),
    "l1": ("0 for exact methods; otherwise at most the distance between two references with "
           "different seeds"),
    "js": ("0 for exact methods; otherwise at most the divergence between two references with "
           "different seeds"),
    "param_l2": ("0 for exact methods (bitwise equal to retraining); else compare with two "
                 "references with different seeds"),
}


def distance_rows(ctx: RunContext) -> None:
    if ctx.ref is None:
        return
    with ctx.timer("distances"):
        for split in ctx.splits:
            p, q = ctx.P["model"][split], ctx.P["reference"][split]
            if p.shape[0] == 0:
                continue
            ctx.rows += [
                MetricRow(f"dist.agreement.{split}", SECTION, f"prediction agreement ({split})",
                          prediction_agreement(p, q), kind="percent", good=GOOD["agreement"],
                          single=True),
                MetricRow(f"dist.l1.{split}", SECTION, f"mean L1 of softmax ({split})",
                          mean_l1_distance(p, q), kind="distance", good=GOOD["l1"],
                          single=True),
                MetricRow(f"dist.js.{split}", SECTION, f"JS divergence ({split})",
                          js_divergence(p, q), kind="distance", good=GOOD["js"], single=True),
            ]
        l2, why = parameter_l2(ctx.model.module, ctx.ref.view.module)
        ctx.rows.append(MetricRow("dist.param_l2", SECTION, "parameter L2 distance", l2,
                                  kind="distance", good=GOOD["param_l2"], single=True))
        if why:
            ctx.notes.append(f"parameter L2 distance {why}.")

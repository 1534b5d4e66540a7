"""Metrics that need several runs: KLoM between the runs' unlearned models and their
retrained references, per forget / retain / validation point."""

from __future__ import annotations

from typing import Any

import numpy as np

from expunge._hashing import derive_key, keyed_order
from expunge.evaluation._families._context import RunContext
from expunge.evaluation._klom import gaussian_klom, klom_scores, margins
from expunge.evaluation._report import MetricRow

SECTION = "Across runs"
#: retain and validation (test) points KLoM is computed on at most (keyed subsets, the
#: same ids in every run)
KLOM_MAX_POINTS = 2000
GOOD_KLOM = ("0 = the unlearned models' margins are distributed as the retrained models' "
             "on these points; with few models even two retrained sets differ (noise floor "
             "shrinks with N)")


def klom_points(ctx: RunContext) -> dict[str, np.ndarray]:
    """Row positions per split whose margins are kept (forget: all; others: keyed, capped,
    independent of the run's seed so that every run keeps the same points)."""
    out = {}
    for split, data in ctx.splits.items():
        if split == "forget" or len(data) <= KLOM_MAX_POINTS:
            out[split] = np.arange(len(data))
            continue
        chosen = keyed_order(derive_key(0, "klom", split), data.ids)[:KLOM_MAX_POINTS]
        out[split] = np.sort(chosen)
    return out


def keep_margins(ctx: RunContext) -> dict[str, Any]:
    """What a run keeps for KLoM: per side and split, the ids and margins of its points."""
    if "klom" not in ctx.options.attacks:
        return {}
    kept: dict[str, Any] = {}
    for split, rows in klom_points(ctx).items():
        data = ctx.splits[split]
        kept[split] = {"ids": data.ids[rows]}
        for side in ctx.sides:
            kept[split][side] = margins(ctx.P[side][split][rows], data.y.numpy()[rows])
    return kept


def klom_rows(runs_margins: list[dict[str, Any]], notes: list[str]) -> list[MetricRow]:
    """KLoM mean and 95th percentile per split, over the runs' models vs references."""
    usable = [m for m in runs_margins if m]
    if not usable:
        return []
    if "reference" not in usable[0]["forget"]:
        notes.append("KLoM: n/a, it compares with retrained references (reference='retrain').")
        return []
    if len(usable) < 2:
        notes.append("KLoM: computed from one unlearned and one retrained model: a binned KL "
                     "of single values; pass seeds= (the paper uses 100 models per side).")
    rows = []
    for split in ("forget", "retain", "test"):
        ids = usable[0][split]["ids"]
        if not ids.size or any(not np.array_equal(m[split]["ids"], ids) for m in usable):
            continue
        unlearned = np.stack([m[split]["model"] for m in usable])
        # one reference per training seed: runs that share a training seed share it
        oracle = np.unique(np.stack([m[split]["reference"] for m in usable]), axis=0)
        scores = klom_scores(unlearned, oracle)
        gaussian = gaussian_klom(unlearned, oracle)
        name = {"forget": "forget", "retain": "retain", "test": "validation (test)"}[split]
        rows += [
            MetricRow(f"klom.{split}.mean", SECTION, f"KLoM, mean over {name} points",
                      float(scores.mean()), kind="distance", good=GOOD_KLOM, single=True),
            MetricRow(f"klom.{split}.p95", SECTION, f"KLoM, 95th percentile ({name})",
                      float(np.percentile(scores, 95)), kind="distance", good=GOOD_KLOM,
                      single=True),
            MetricRow(f"klom.{split}.gaussian", SECTION,
                      f"KLoM of normal fits (ours), mean over {name} points",
                      float(gaussian.mean()), kind="distance", good=GOOD_KLOM, single=True),
        ]
    n_ref = len({m["forget"]["reference"].tobytes() for m in usable})
    notes.append(f"KLoM: {len(usable)} unlearned models against {n_ref} retrained reference(s), "
                 f"margins binned into 20 bins per point (Georgiev et al. 2024; with fewer than "
                 f"~20 models per side it saturates near 11.5 for any difference: see the normal "
                 f"fit); retain and validation points: keyed subsets of at most "
                 f"{KLOM_MAX_POINTS}.")
    return rows

"""Population membership attacks: global thresholds, SVC MIA-Efficacy, the kit's logistic
regression (ALGORITHMS.md 5.2; sources in docs/evaluation.md)."""

from __future__ import annotations

import numpy as np

from expunge._hashing import derive_key, keyed_order
from expunge.data import IndexedDataset
from expunge.evaluation._families._context import MIA, RunContext
from expunge.evaluation._features import FEATURES, confidence
from expunge.evaluation.attacks import logistic_loss_attack, svc_mia_efficacy, threshold_attack
from expunge.evaluation.attacks._logistic import MIN_PER_CLASS

THRESHOLD_ATTACKS = tuple(FEATURES)  # loss, confidence, entropy, m_entropy
_TITLES = {"loss": "Loss", "confidence": "Confidence", "entropy": "Entropy",
           "m_entropy": "M-entropy"}
GOOD = {
    "svc": ("close to the reference's, not 1 (a retrained model is confident on forget samples "
            "it generalises to); higher = more forget samples look unseen"),
    "logistic.accuracy": "close to the reference's (about 0.5 for a random forget set)",
    "logistic.auc": "close to the reference's (about 0.5 for a random forget set)",
}


def subsample(ds: IndexedDataset, size: int | None, key: int) -> IndexedDataset:
    """At most ``size`` rows of ``ds``: a keyed subset (by id), in id-hash order."""
    if size is None or len(ds) <= size:
        return ds
    return ds.select(ds.ids[np.sort(keyed_order(key, ds.ids)[:size])])


def tpr_note(ctx: RunContext) -> None:
    n = len(ctx.test)
    missing = [t for t, need in (("1%", 100), ("0.1%", 1000)) if n < need]
    if missing and any(a in ctx.options.attacks for a in (*THRESHOLD_ATTACKS, "lira", "rmia")):
        ctx.notes.append(f"TPR @ {' and '.join(missing)} FPR: n/a, the test set has only "
                         f"{n} non-members (need 100 for 1%, 1000 for 0.1%).")


def threshold_rows(ctx: RunContext) -> None:
    """Global-threshold attacks on each feature: forget vs test, and retain vs test (power)."""
    tpr_note(ctx)
    for name in THRESHOLD_ATTACKS:
        if name not in ctx.options.attacks:
            continue
        with ctx.timer(f"mia: {name} threshold"):
            result = {s: threshold_attack(name, ctx.feature(name, s, "forget"),
                                          ctx.feature(name, s, "test")) for s in ctx.sides}
            power = {s: threshold_attack(name, ctx.feature(name, s, "retain"),
                                         ctx.feature(name, s, "test")).auc for s in ctx.sides}
            ctx.membership_rows(name, f"{_TITLES[name]} threshold", result, power)


def svc_rows(ctx: RunContext) -> None:
    """MIA-Efficacy of the OPTML papers: an RBF SVC on confidences, retained vs test."""
    if "svc" not in ctx.options.attacks:
        return
    with ctx.timer("mia: svc"):
        cap = ctx.options.svc_max_samples
        retained, test, P, labels = ctx.retained, ctx.test, ctx.P, ctx.labels
        n_side = min(len(retained), len(test), cap) if cap else min(len(retained), len(test))
        members = subsample(retained, n_side, derive_key(ctx.seed, "svc", "retain"))
        nonmembers = subsample(test, n_side, derive_key(ctx.seed, "svc", "test"))
        m_pos, n_pos = retained.positions(members.ids), test.positions(nonmembers.ids)
        efficacy = {s: svc_mia_efficacy(
            confidence(P[s]["retain"][m_pos], labels["retain"][m_pos]),
            confidence(P[s]["test"][n_pos], labels["test"][n_pos]),
            confidence(P[s]["forget"], labels["forget"]),
        ) for s in ctx.sides}
        ctx.row("mia.svc.efficacy", MIA, "MIA-Efficacy (SVC on confidence)", efficacy,
                "percent", GOOD["svc"])
        ctx.notes.append(f"MIA-Efficacy: SVC(C=3, rbf, gamma='auto') trained on {n_side} "
                         f"retained vs {n_side} test samples (keyed subsets).")


def logistic_rows(ctx: RunContext) -> None:
    """The NeurIPS 2023 challenge kit's logistic regression on the loss, forget vs test."""
    if "logistic" not in ctx.options.attacks:
        return
    with ctx.timer("mia: logistic"):
        if min(len(ctx.forget_set), len(ctx.test)) < MIN_PER_CLASS:
            ctx.notes.append(f"logistic attack: n/a, needs at least {MIN_PER_CLASS} forget and "
                             "test samples.")
            ctx.row("mia.logistic.accuracy", MIA, "Logistic on loss (kit): CV accuracy",
                    {}, "score", GOOD["logistic.accuracy"])
            return
        results = {s: logistic_loss_attack(
            ctx.feature("loss", s, "forget"), ctx.feature("loss", s, "test"),
            member_ids=ctx.forget_set.ids, nonmember_ids=ctx.test.ids, seed=ctx.seed,
        ) for s in ctx.sides}
        ctx.row("mia.logistic.accuracy", MIA, "Logistic on loss (kit): CV accuracy",
                {s: r.accuracy for s, r in results.items()}, "score", GOOD["logistic.accuracy"])
        ctx.row("mia.logistic.auc", MIA, "Logistic on loss (kit): CV AUC",
                {s: r.auc for s, r in results.items()}, "score", GOOD["logistic.auc"])
        n = next(iter(results.values())).n_per_class
        ctx.notes.append(f"logistic attack: {n} forget vs {n} test losses (balanced), "
                         "StratifiedShuffleSplit(n_splits=10, random_state=0).")

"""Scores of a membership decision: ROC curve, AUC, TPR at a fixed FPR, best balanced accuracy.

Implemented here (and tested against :mod:`sklearn.metrics`) so that every number in a report
comes from one small, readable piece of code with one convention:

* ``scores``: higher means "more likely a member" (an attack turns its feature into such a
  score: minus the loss, the confidence, minus the entropy, the likelihood ratio...);
* ``is_member``: the ground truth, ``True`` for members (the positive class);
* a threshold rule predicts "member" iff ``score >= t``; sweeping ``t`` over every distinct
  score gives every achievable (FPR, TPR) pair, ties moving together (no randomised rules).

References: Carlini et al., "Membership Inference Attacks From First Principles" (IEEE S&P
2022), section III (report TPR at low FPR, not only AUC); ALGORITHMS.md section 5.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from expunge.exceptions import InvalidParameterError

#: FPR grid on which ROC curves are stored in reports (log-spaced low end + linear rest)
ROC_GRID = np.unique(np.concatenate([np.logspace(-4, 0, 81), np.linspace(0.0, 1.0, 51)]))


def _check(scores: Any, is_member: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(is_member).reshape(-1)
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise InvalidParameterError(
                "is_member must be booleans or 0/1 labels (1 = member); got other values."
            )
        y = y.astype(bool)
    if s.shape != y.shape:
        raise InvalidParameterError(
            f"scores and is_member must have the same length; got {s.shape[0]} and {y.shape[0]}."
        )
    if np.isnan(s).any():
        raise InvalidParameterError("scores contain NaN; clip probabilities before computing them.")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise InvalidParameterError(
            f"need both members and non-members; got {n_pos} members among {y.size} samples."
        )
    return s, y


def roc_curve(scores: Any, is_member: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every achievable ``(fpr, tpr)`` of the rule ``score >= t``, from (0, 0) to (1, 1).

    Returns:
        ``(fpr, tpr, thresholds)``; ``thresholds[0] = +inf`` (nothing predicted member) and
        then every distinct score in decreasing order. Same points as
        ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
    """
    s, y = _check(scores, is_member)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # last position of each run of equal scores: tied samples change sides together
    distinct = np.flatnonzero(np.diff(s_sorted)) if s_sorted.size > 1 else np.empty(0, np.int64)
    ends = np.concatenate([distinct, [s_sorted.size - 1]])
    tp = np.cumsum(y_sorted)[ends].astype(np.float64)
    fp = (ends + 1 - tp).astype(np.float64)
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    fpr = np.concatenate([[0.0], fp / n_neg])
    tpr = np.concatenate([[0.0], tp / n_pos])
    thresholds = np.concatenate([[np.inf], s_sorted[ends]])
    return fpr, tpr, thresholds


def roc_auc(scores: Any, is_member: Any) -> float:
    """Area under the ROC curve: P(score of a random member > that of a random non-member),
    ties counting one half (the Mann-Whitney U statistic over ``n_pos * n_neg``).

    0.5 = the attack cannot tell the two sets apart; below 0.5 the non-members look *more*
    like members (for unlearning: over-forgetting, which is itself detectable).
    """
    fpr, tpr, _ = roc_curve(scores, is_member)
    # trapezoids: a diagonal segment (a tie group holding both classes) earns half credit
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def tpr_at_fpr(scores: Any, is_member: Any, fpr: float) -> float:
    """Highest TPR of a threshold rule whose FPR is at most ``fpr`` (Carlini et al. 2022).

    Only meaningful when there are at least ``1 / fpr`` non-members; see
    :func:`membership_metrics`, which reports ``None`` otherwise.
    """
    if not 0.0 <= fpr <= 1.0:
        raise InvalidParameterError(f"fpr must be in [0, 1]; got {fpr!r}.")
    f, t, _ = roc_curve(scores, is_member)
    return float(t[f <= fpr + 1e-15].max())


def best_balanced_accuracy(scores: Any, is_member: Any) -> float:
    """Max over thresholds of ``(TPR + TNR) / 2``: the best accuracy of a threshold attack
    on a balanced member/non-member prior. 0.5 = chance."""
    f, t, _ = roc_curve(scores, is_member)
    return float(np.max((1.0 + t - f) / 2.0))


def min_nonmembers_for(fpr: float) -> int:
    """Non-members needed before ``TPR @ fpr`` means anything: one false positive must fit."""
    return math.ceil(1.0 / fpr - 1e-9)


@dataclass(frozen=True)
class MembershipMetrics:
    """The standard summary of one attack on one model.

    Attributes:
        auc: ROC AUC (0.5 = chance).
        best_balanced_accuracy: best threshold's balanced accuracy (0.5 = chance).
        tpr_at_1pct_fpr / tpr_at_01pct_fpr: TPR at FPR <= 1 % / 0.1 %, or ``None`` when
            there are fewer than 100 / 1000 non-members (the FPR cannot be resolved).
        n_members / n_nonmembers: sizes of the two sets.
        roc_fpr / roc_tpr: the ROC curve sampled on a fixed FPR grid (for plots).
    """

    auc: float
    best_balanced_accuracy: float
    tpr_at_1pct_fpr: float | None
    tpr_at_01pct_fpr: float | None
    n_members: int
    n_nonmembers: int
    roc_fpr: list[float] = field(default_factory=list, repr=False)
    roc_tpr: list[float] = field(default_factory=list, repr=False)


def membership_metrics(scores: Any, is_member: Any) -> MembershipMetrics:
    """AUC, best balanced accuracy and TPR at 1 % / 0.1 % FPR (where meaningful) in one pass."""
    s, y = _check(scores, is_member)
    fpr, tpr, _ = roc_curve(s, y)
    n_neg = int(y.size - y.sum())
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    bacc = float(np.max((1.0 + tpr - fpr) / 2.0))

    def at(target: float) -> float | None:
        if n_neg < min_nonmembers_for(target):
            return None
        return float(tpr[fpr <= target + 1e-15].max())

    # step-function ROC on the grid: best TPR reachable at FPR <= g
    idx = np.searchsorted(fpr, ROC_GRID + 1e-15, side="right") - 1
    grid_tpr = np.maximum.accumulate(tpr)[idx]
    return MembershipMetrics(
        auc=auc, best_balanced_accuracy=bacc, tpr_at_1pct_fpr=at(0.01),
        tpr_at_01pct_fpr=at(0.001), n_members=int(y.sum()), n_nonmembers=n_neg,
        roc_fpr=[float(v) for v in ROC_GRID], roc_tpr=[float(v) for v in grid_tpr],
    )

"""Threshold attacks on one per-sample feature (Yeom et al. 2018; Song & Mittal 2021).

The attacker predicts "member" iff the feature is on the member side of a threshold ``tau``:
loss, entropy or modified entropy *below* ``tau``, confidence *above* it. Sweeping ``tau``
gives the ROC curve; the report gives its AUC, the best balanced accuracy and the TPR at
1 % and 0.1 % FPR (:func:`expunge.evaluation.membership_metrics`). One global threshold is
used (no class-wise thresholds), so the numbers are population-level.

For unlearning the members are the forget set and the non-members the test set: a model
that forgot them scores about what the retrained reference scores (about 0.5 AUC for a
random forget set; the reference can be above 0.5 for class or outlier forgetting).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from expunge.evaluation._features import FEATURES
from expunge.evaluation._metrics import MembershipMetrics, membership_metrics
from expunge.exceptions import InvalidParameterError

THRESHOLD_FEATURES = tuple(FEATURES)


def member_score(feature: str, values: Any) -> np.ndarray:
    """Feature values turned into scores where higher means "more likely a member"."""
    if feature not in FEATURES:
        raise InvalidParameterError(
            f"unknown feature {feature!r}; choose one of {', '.join(THRESHOLD_FEATURES)}."
        )
    return FEATURES[feature][1] * np.asarray(values, dtype=np.float64)


def threshold_attack(feature: str, members: Any, nonmembers: Any) -> MembershipMetrics:
    """Evaluate the threshold attack on ``feature`` values of members and non-members.

    Args:
        feature: ``"loss"``, ``"confidence"``, ``"entropy"`` or ``"m_entropy"`` (fixes the
            direction of the threshold).
        members / nonmembers: the feature's values (1-D) on each set, e.g. from
            :func:`expunge.evaluation.sample_loss`.

    Example:
        >>> threshold_attack("loss", [0.01, 0.02], [0.5, 1.0]).auc
        1.0
    """
    m = np.asarray(members, dtype=np.float64).reshape(-1)
    n = np.asarray(nonmembers, dtype=np.float64).reshape(-1)
    scores = member_score(feature, np.concatenate([m, n]))
    labels = np.concatenate([np.ones(m.size, bool), np.zeros(n.size, bool)])
    return membership_metrics(scores, labels)

"""MIA-Efficacy: the SVC attack of the OPTML papers (Jia et al. 2023 "Model Sparsity Can
Simplify Machine Unlearning", NeurIPS; Fan et al. 2024 "SalUn", ICLR).

Exactly as ``evaluation/SVC_MIA.py`` + ``main_forget.py`` of ``OPTML-Group/Unlearn-Sparse``:
an ``SVC(C=3, kernel="rbf", gamma="auto")`` is trained on a per-sample feature of the model
(the papers report the confidence ``p_y``), with retained training samples as members
(label 1) and test samples as non-members (label 0), then applied to the forget set::

    MIA-Efficacy = fraction of forget samples the SVC predicts to be non-members

Higher means more forget samples look unseen; the right value is the retrained reference's
(not 1: a retrained model is confident on many forget samples it generalises to).

Differences from the original, both documented parameters of ``evaluate``: the member
side is a keyed random subset of the retained data rather than its first ``|D_te|`` samples
(which depend on file order), and both sides are capped at ``svc_max_samples`` (default
5000) because the RBF SVC's cost grows quadratically (10 000 per side: ~14 s on 2 cores).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from expunge.exceptions import InvalidParameterError

SVC_PARAMS: dict[str, Any] = {"C": 3, "kernel": "rbf", "gamma": "auto"}


def _column(values: Any) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)


def svc_mia_efficacy(shadow_members: Any, shadow_nonmembers: Any, targets: Any) -> float:
    """Fraction of ``targets`` that an SVC trained on members vs non-members calls non-members.

    Args:
        shadow_members: feature of known members (retained training samples), ``(n,)`` or
            ``(n, d)``.
        shadow_nonmembers: feature of known non-members (test samples).
        targets: feature of the samples to judge (the forget set).
    """
    from sklearn.svm import SVC

    pos, neg, tgt = _column(shadow_members), _column(shadow_nonmembers), _column(targets)
    if pos.shape[0] == 0 or neg.shape[0] == 0 or tgt.shape[0] == 0:
        raise InvalidParameterError(
            "svc_mia_efficacy needs members, non-members and targets; one set is empty."
        )
    X = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(pos.shape[0]), np.zeros(neg.shape[0])])
    clf = SVC(**SVC_PARAMS).fit(X, y)
    return float(1.0 - clf.predict(tgt).mean())

"""The NeurIPS 2023 unlearning challenge starting kit's attack (``unlearning-CIFAR10.ipynb``).

Feature: per-sample cross-entropy loss. Members (label 1) = forget samples, non-members
(label 0) = test samples, balanced to the smaller side. A ``LogisticRegression()`` is scored
by ``cross_val_score`` over ``StratifiedShuffleSplit(n_splits=10, random_state=0)`` (10 %
held out per split) and the mean accuracy is reported. The right value is the retrained
reference's, about 0.5 for a random forget set.

The kit subsamples the forget losses to the number of test losses because its forget set
is the larger one; here whichever side is larger is subsampled (by a keyed hash of the
sample ids, so the choice does not depend on order), which is the kit's stated purpose
("to have a class-balanced dataset"). The held-out AUC of each split is averaged as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from expunge._hashing import derive_key, keyed_order
from expunge.evaluation._metrics import roc_auc
from expunge.exceptions import InvalidParameterError

#: the smallest balanced side for which a 10 % stratified split still holds both classes
MIN_PER_CLASS = 10


@dataclass(frozen=True)
class LogisticAttackResult:
    """Mean (and std) over the splits of held-out accuracy and AUC."""

    accuracy: float
    accuracy_std: float
    auc: float
    n_per_class: int
    n_splits: int


def _balanced(values: np.ndarray, ids: np.ndarray | None, size: int, key: int) -> np.ndarray:
    if values.size == size:
        return values
    ids = np.arange(values.size, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    return values[np.sort(keyed_order(key, ids)[:size])]


def logistic_loss_attack(
    member_losses: Any,
    nonmember_losses: Any,
    *,
    member_ids: Any = None,
    nonmember_ids: Any = None,
    seed: int = 0,
    n_splits: int = 10,
    random_state: int = 0,
) -> LogisticAttackResult:
    """Cross-validated logistic regression on the loss (the challenge kit's ``simple_mia``).

    Args:
        member_losses / nonmember_losses: per-sample losses of each set.
        member_ids / nonmember_ids: sample ids, used only to pick the balanced subsample.
        seed: keys the balancing subsample.
        n_splits, random_state: of ``StratifiedShuffleSplit`` (the kit's 10 and 0).

    Raises:
        InvalidParameterError: fewer than 10 samples on the smaller side.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit

    mem = np.asarray(member_losses, dtype=np.float64).reshape(-1)
    non = np.asarray(nonmember_losses, dtype=np.float64).reshape(-1)
    size = min(mem.size, non.size)
    if size < MIN_PER_CLASS:
        raise InvalidParameterError(
            f"the logistic attack needs at least {MIN_PER_CLASS} members and non-members; got "
            f"{mem.size} and {non.size}. Use a larger forget set or skip this attack."
        )
    mem = _balanced(mem, member_ids, size, derive_key(seed, "logistic-balance", "members"))
    non = _balanced(non, nonmember_ids, size, derive_key(seed, "logistic-balance", "non"))
    X = np.concatenate([non, mem]).reshape(-1, 1)
    y = np.concatenate([np.zeros(size, np.int64), np.ones(size, np.int64)])
    splitter = StratifiedShuffleSplit(n_splits=n_splits, random_state=random_state)
    accuracies, aucs = [], []
    for train_idx, test_idx in splitter.split(X, y):
        clf = LogisticRegression().fit(X[train_idx], y[train_idx])
        accuracies.append(float(clf.score(X[test_idx], y[test_idx])))
        aucs.append(roc_auc(clf.decision_function(X[test_idx]), y[test_idx]))
    return LogisticAttackResult(
        accuracy=float(np.mean(accuracies)), accuracy_std=float(np.std(accuracies)),
        auc=float(np.mean(aucs)), n_per_class=size, n_splits=n_splits,
    )

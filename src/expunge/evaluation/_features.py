"""Per-sample attack features computed from a model's class probabilities.

Every function takes ``probs`` (``(n, n_classes)``, rows summing to 1; a tensor or an array)
and, where needed, integer ``labels`` (``(n,)``), and returns a float64 NumPy array ``(n,)``.
Work is done in float64 so that ``1 - p`` keeps its precision for confident predictions.

Probabilities can be exactly 0: SISA's majority vote gives vote shares (0, 0.2, ...), and a
softmax underflows. Logarithms therefore clip their argument at ``eps`` (``1e-12`` for the
loss and the modified entropy, so a zero-probability label costs ``-log(1e-12) = 27.6``
instead of infinity; ``1e-45`` for LiRA's score, as in the challenge's code). The
entropy needs no clipping: it uses ``0 log 0 = 0``.

References: Yeom et al., "Privacy Risk in Machine Learning" (CSF 2018; loss); Song & Mittal,
"Systematic Evaluation of Privacy Risks of Machine Learning Models" (USENIX Security 2021;
confidence, entropy, modified entropy); Carlini et al. 2022 (logit-scaled confidence);
ALGORITHMS.md section 5.2.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.special import xlogy

from expunge.exceptions import InvalidParameterError

LOSS_EPS = 1e-12
LIRA_EPS = 1e-45


def _probs(probs: Any) -> np.ndarray:
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu().numpy()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise InvalidParameterError(
            f"probs must have shape (n_samples, n_classes); got {p.shape}."
        )
    # softmax rounding can leave values a hair outside [0, 1]
    return np.clip(p, 0.0, 1.0)


def _labels(labels: Any, p: np.ndarray) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != p.shape[0]:
        raise InvalidParameterError(
            f"labels has {y.shape[0]} entries but probs has {p.shape[0]} rows."
        )
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]):
        raise InvalidParameterError(
            f"labels must be integers in 0..{p.shape[1] - 1} (the columns of probs)."
        )
    return y.astype(np.int64)


def _label_prob(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    # each row's *own* label (OPTML's m_entropy indexes [:, labels], every row with every label)
    return p[np.arange(p.shape[0]), y]


def sample_loss(probs: Any, labels: Any, *, eps: float = LOSS_EPS) -> np.ndarray:
    """Cross-entropy loss per sample, ``-log max(p_y, eps)`` (Yeom et al. 2018).

    Members tend to have *lower* loss.
    """
    p = _probs(probs)
    return -np.log(np.maximum(_label_prob(p, _labels(labels, p)), eps))


def confidence(probs: Any, labels: Any) -> np.ndarray:
    """Probability of the true label, ``p_y``. Members tend to have *higher* confidence."""
    p = _probs(probs)
    return _label_prob(p, _labels(labels, p))


def entropy(probs: Any) -> np.ndarray:
    """Shannon entropy of the prediction, ``-sum_j p_j log p_j`` (nats; ``0 log 0 = 0``).

    Label-free. Members tend to have *lower* entropy.
    """
    p = _probs(probs)
    return -xlogy(p, p).sum(axis=1)


def m_entropy(probs: Any, labels: Any, *, eps: float = LOSS_EPS) -> np.ndarray:
    """Modified entropy (Song & Mittal 2021, eq. 2)::

        Mentr(p, y) = -(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j)

    It is 0 for a confident correct prediction and grows without bound for a confident
    wrong one (plain entropy is small in both cases). Members tend to have *lower* values.

    The ``m_entropy`` copied across OPTML's repositories (``evaluation/SVC_MIA.py``) takes the
    "reverse" logarithm from ``p`` instead of ``1 - p`` and indexes ``[:, labels]``, which
    overwrites every row's label columns with *all* labels in the batch; this function
    uses ``log(1 - p_j)`` and each row's own label.
    """
    p = _probs(probs)
    y = _labels(labels, p)
    rows = np.arange(p.shape[0])
    log_p = np.log(np.maximum(p, eps))
    log_reverse = np.log(np.maximum(1.0 - p, eps))
    # weights (1 - p_y) on log p_y for the label column, p_j on log(1 - p_j) elsewhere
    weights = p.copy()
    weights[rows, y] = 1.0 - p[rows, y]
    logs = log_reverse.copy()
    logs[rows, y] = log_p[rows, y]
    return -(weights * logs).sum(axis=1)


def logit_scaled_confidence(probs: Any, labels: Any, *, eps: float = LIRA_EPS) -> np.ndarray:
    """LiRA's score ``phi = log p_y - log sum_{j != y} p_j`` (Carlini et al. 2022, section IV).

    The logit of the confidence makes its distribution over shadow models close to
    Gaussian. The sum over the *other* classes is added directly rather than computed as
    ``1 - p_y``, which would round to 0 for confident predictions. As in the NeurIPS 2023
    challenge's ``compute_logit_scaled_confidence``, ``eps`` is added inside both logs.
    """
    p = _probs(probs)
    y = _labels(labels, p)
    rows = np.arange(p.shape[0])
    p_y = p[rows, y]
    # summing the other columns directly keeps precision where 1 - p_y would not
    mask = np.ones_like(p, dtype=bool)
    mask[rows, y] = False
    others = np.where(mask, p, 0.0).sum(axis=1)
    return np.log(p_y + eps) - np.log(others + eps)


#: feature name -> (function of (probs, labels), sign making "higher = more member-like")
FEATURES: dict[str, tuple[Any, float]] = {
    "loss": (sample_loss, -1.0),
    "confidence": (confidence, 1.0),
    "entropy": (lambda p, y: entropy(p), -1.0),
    "m_entropy": (m_entropy, -1.0),
}

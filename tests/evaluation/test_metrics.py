"""Metrics, attack features and distances against hand computations, closed forms and
scikit-learn / SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from sklearn import metrics as skm
from torch import nn

from expunge.evaluation import (
    best_balanced_accuracy,
    confidence,
    entropy,
    js_divergence,
    logit_scaled_confidence,
    m_entropy,
    mean_l1_distance,
    membership_metrics,
    parameter_l2,
    prediction_agreement,
    roc_auc,
    roc_curve,
    sample_loss,
    tpr_at_fpr,
)
from expunge.exceptions import InvalidParameterError


def _scores(seed: int, n: int = 400, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    members = rng.random(n) < 0.3
    members[:2] = [True, False]
    scores = rng.normal(size=n) + 0.8 * members
    if ties:
        scores = np.round(scores, 1)  # many tied scores, some across classes
    return scores, members


# ------------------------------------------------------------------------------ metrics
def test_auc_hand_computed() -> None:
    # members score 0.35 and 0.8, non-members 0.1 and 0.4: 3 of the 4 pairs are ordered
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75


def test_auc_counts_ties_as_half() -> None:
    assert roc_auc([1.0, 1.0], [True, False]) == 0.5
    assert roc_auc([1.0, 1.0, 2.0], [True, False, True]) == 0.75


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_auc_matches_sklearn(seed: int, ties: bool) -> None:
    scores, members = _scores(seed, ties=ties)
    assert roc_auc(scores, members) == pytest.approx(skm.roc_auc_score(members, scores), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_matches_sklearn_points(ties: bool) -> None:
    scores, members = _scores(7, ties=ties)
    fpr, tpr, thresholds = roc_curve(scores, members)
    want_fpr, want_tpr, want_thr = skm.roc_curve(members, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, want_fpr)
    np.testing.assert_allclose(tpr, want_tpr)
    np.testing.assert_allclose(thresholds[1:], want_thr[1:])


def test_tpr_at_fpr_hand_computed() -> None:
    # members 5, 4, 1; non-members 3, 2, 0: threshold 4 catches 2 of 3 members with no false
    # positive; threshold 1 catches all 3 but also 3 and 2 (FPR 2/3)
    scores = [5, 4, 1, 3, 2, 0]
    members = [1, 1, 1, 0, 0, 0]
    assert tpr_at_fpr(scores, members, 0.0) == pytest.approx(2 / 3)
    assert tpr_at_fpr(scores, members, 0.5) == pytest.approx(2 / 3)
    assert tpr_at_fpr(scores, members, 2 / 3) == 1.0


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("target", [0.001, 0.01, 0.1])
def test_tpr_at_fpr_matches_sklearn_curve(seed: int, target: float) -> None:
    scores, members = _scores(seed, n=3000, ties=seed == 2)
    fpr, tpr, _ = skm.roc_curve(members, scores, drop_intermediate=False)
    assert tpr_at_fpr(scores, members, target) == pytest.approx(tpr[fpr <= target].max())


@pytest.mark.parametrize("seed", range(3))
def test_best_balanced_accuracy_matches_brute_force(seed: int) -> None:
    scores, members = _scores(seed, n=150, ties=seed == 1)
    thresholds = np.concatenate([np.unique(scores), [np.inf]])
    brute = max(skm.balanced_accuracy_score(members, scores >= t) for t in thresholds)
    assert best_balanced_accuracy(scores, members) == pytest.approx(brute)


def test_membership_metrics_agree_with_the_single_functions() -> None:
    scores, members = _scores(3, n=3000)
    m = membership_metrics(scores, members)
    assert m.auc == pytest.approx(roc_auc(scores, members))
    assert m.best_balanced_accuracy == pytest.approx(best_balanced_accuracy(scores, members))
    assert m.tpr_at_1pct_fpr == pytest.approx(tpr_at_fpr(scores, members, 0.01))
    assert m.tpr_at_01pct_fpr == pytest.approx(tpr_at_fpr(scores, members, 0.001))
    assert (m.n_members, m.n_nonmembers) == (int(members.sum()), int((~members).sum()))
    # the stored ROC is a non-decreasing step function ending at (1, 1)
    assert np.all(np.diff(m.roc_tpr) >= 0) and m.roc_fpr[-1] == 1.0 and m.roc_tpr[-1] == 1.0


def test_tpr_at_low_fpr_is_none_without_enough_nonmembers() -> None:
    def metrics_with(n_neg: int) -> object:
        scores = np.concatenate([np.arange(10) + 1000.0, np.arange(n_neg, dtype=float)])
        return membership_metrics(scores, np.arange(10 + n_neg) < 10)

    assert metrics_with(99).tpr_at_1pct_fpr is None
    assert metrics_with(100).tpr_at_1pct_fpr == 1.0
    assert metrics_with(999).tpr_at_01pct_fpr is None
    assert metrics_with(1000).tpr_at_01pct_fpr == 1.0


def test_metrics_refuse_one_class_or_nan() -> None:
    with pytest.raises(InvalidParameterError, match="members and non-members"):
        roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(InvalidParameterError, match="NaN"):
        roc_auc([np.nan, 0.2], [1, 0])
    with pytest.raises(InvalidParameterError, match="same length"):
        roc_auc([0.1, 0.2, 0.3], [1, 0])


# ----------------------------------------------------------------------------- features
P = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
Y = np.array([0, 2])


def test_loss_and_confidence_hand_computed() -> None:
    np.testing.assert_allclose(sample_loss(P, Y), [-math.log(0.7), -math.log(0.3)])
    np.testing.assert_allclose(confidence(P, Y), [0.7, 0.3])
    # torch inputs give the same float64 values
    np.testing.assert_allclose(sample_loss(torch.tensor(P), torch.tensor(Y)), sample_loss(P, Y))


def test_loss_of_a_zero_probability_is_clipped_not_infinite() -> None:
    assert sample_loss([[0.0, 1.0]], [0])[0] == pytest.approx(-math.log(1e-12))


def test_entropy_hand_computed() -> None:
    np.testing.assert_allclose(entropy([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]), [math.log(2), 0.0])
    expected = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert entropy(P[:1])[0] == pytest.approx(expected)


def test_m_entropy_matches_hand_computation() -> None:
    p = np.array([[0.7, 0.2, 0.1]])
    expected = -(0.3 * math.log(0.7) + 0.2 * math.log(0.8) + 0.1 * math.log(0.9))
    assert m_entropy(p, [0])[0] == pytest.approx(expected)


def test_m_entropy_matches_song_mittal_formula_on_random_rows() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=50)
    labels = rng.integers(0, 5, size=50)
    want = []
    for p, y in zip(probs, labels):
        value = -(1 - p[y]) * math.log(p[y])
        value -= sum(p[j] * math.log(1 - p[j]) for j in range(5) if j != y)
        want.append(value)
    np.testing.assert_allclose(m_entropy(probs, labels), want, rtol=1e-12)


def test_m_entropy_uses_each_rows_own_label() -> None:
    # OPTML's version indexes [:, labels]: a row's value then depends on the other rows
    batch = m_entropy(P, Y)
    one_by_one = [m_entropy(P[i : i + 1], Y[i : i + 1])[0] for i in range(len(Y))]
    np.testing.assert_allclose(batch, one_by_one)


def test_m_entropy_is_not_the_widely_copied_buggy_formula() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0])
    # Unlearn-Sparse evaluation/SVC_MIA.py: the "reverse" log is taken from p, not 1 - p
    log_prob = p.log()
    log_reverse_prob_buggy = p.log()
    modified_probs = p.clone()
    modified_probs[:, labels] = (1 - p)[:, labels]
    modified_log_probs = log_reverse_prob_buggy.clone()
    modified_log_probs[:, labels] = log_prob[:, labels]
    buggy = float(-(modified_probs * modified_log_probs).sum())
    assert m_entropy(p, labels)[0] != pytest.approx(buggy, rel=1e-3)


def test_m_entropy_is_zero_for_confident_right_and_large_for_confident_wrong() -> None:
    values = m_entropy([[1.0, 0.0], [1e-9, 1.0 - 1e-9]], [0, 0])
    assert values[0] == 0.0
    assert values[1] > 15  # -(1 - 1e-9) log(1e-9) - (1 - 1e-9) log(1e-9)


def test_logit_scaled_confidence_is_the_logit_difference() -> None:
    torch.manual_seed(0)
    logits = torch.randn(20, 4, dtype=torch.float64) * 3
    labels = torch.randint(0, 4, (20,))
    probs = torch.softmax(logits, dim=1)
    z_y = logits[torch.arange(20), labels]
    mask = torch.ones_like(logits, dtype=torch.bool)
    mask[torch.arange(20), labels] = False
    others = torch.logsumexp(logits.masked_fill(~mask, -torch.inf), dim=1)
    np.testing.assert_allclose(logit_scaled_confidence(probs, labels), (z_y - others).numpy(),
                               rtol=1e-9, atol=1e-9)


def test_logit_scaled_confidence_keeps_precision_for_confident_predictions() -> None:
    # p_y rounds to exactly 1.0 in float64; 1 - p_y would give 0 and a meaningless score
    probs = torch.softmax(torch.tensor([[40.0, 0.0, 0.0]], dtype=torch.float64), dim=1)
    assert float(probs[0, 0]) == 1.0
    assert logit_scaled_confidence(probs, [0])[0] == pytest.approx(40.0 - math.log(2), rel=1e-9)


def test_features_validate_shapes_and_labels() -> None:
    with pytest.raises(InvalidParameterError, match="n_samples, n_classes"):
        sample_loss([0.5, 0.5], [0])
    with pytest.raises(InvalidParameterError, match="labels must be integers in 0..1"):
        confidence([[0.5, 0.5]], [2])
    with pytest.raises(InvalidParameterError, match="labels has 2 entries"):
        m_entropy([[0.5, 0.5]], [0, 1])


# ---------------------------------------------------------------------------- distances
def test_agreement_and_l1_hand_computed() -> None:
    p = [[0.9, 0.1], [0.4, 0.6]]
    q = [[0.6, 0.4], [0.7, 0.3]]
    assert prediction_agreement(p, q) == 0.5
    assert mean_l1_distance(p, q) == pytest.approx((0.6 + 0.6) / 2)


def test_js_divergence_matches_scipy_including_zeros() -> None:
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4), size=30)
    q = rng.dirichlet(np.ones(4), size=30)
    p[:5, 0] = 0.0
    p[:5] /= p[:5].sum(axis=1, keepdims=True)
    q[3:8, 1:3] = 0.0
    q[3:8] /= q[3:8].sum(axis=1, keepdims=True)
    want = np.mean([jensenshannon(a, b) ** 2 for a, b in zip(p, q)])
    assert js_divergence(p, q) == pytest.approx(want, rel=1e-9)


def test_js_divergence_bounds() -> None:
    assert js_divergence([[0.3, 0.7]], [[0.3, 0.7]]) == 0.0
    assert js_divergence([[1.0, 0.0]], [[0.0, 1.0]]) == pytest.approx(math.log(2))


def test_parameter_l2_closed_form_and_architecture_check() -> None:
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, 2.0]]))
        a.bias.fill_(0.0)
        b.weight.copy_(torch.tensor([[4.0, 6.0]]))
        b.bias.fill_(12.0)
    distance, why = parameter_l2(a, b)
    assert distance == pytest.approx(13.0) and why == ""  # sqrt(3^2 + 4^2 + 12^2)
    distance, why = parameter_l2(a, nn.Linear(3, 1))
    assert distance is None and "architectures differ" in why
    assert parameter_l2(a, None)[0] is None


def test_distances_refuse_mismatched_shapes() -> None:
    with pytest.raises(InvalidParameterError, match="same shape"):
        js_divergence([[0.5, 0.5]], [[0.2, 0.3, 0.5]])

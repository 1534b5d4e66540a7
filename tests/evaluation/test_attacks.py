"""Membership attacks: sanity on a deliberately overfit model, exact checks of the pieces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

import expunge
from expunge.data import IndexedDataset
from expunge.evaluation import (
    confidence,
    entropy,
    likelihood_ratio_scores,
    logistic_loss_attack,
    logit_scaled_confidence,
    m_entropy,
    roc_auc,
    sample_loss,
    shadow_membership,
    svc_mia_efficacy,
    threshold_attack,
    train_shadows,
    ulira_leave_one_out,
)
from expunge.exceptions import InvalidParameterError

# an MLP that memorises 200 samples with 30 % noisy labels: members have ~0 loss, unseen
# samples with noisy labels a large one, so every attack has a real signal to find
RECIPE: dict[str, Any] = {"model": "mlp", "model_params": {"hidden_sizes": [128]},
                          "epochs": 60, "batch_size": 20, "lr": 0.1, "momentum": 0.9}


@dataclass
class Overfit:
    data: IndexedDataset
    members: IndexedDataset
    half_a: IndexedDataset  # two disjoint non-member sets
    half_b: IndexedDataset
    model: expunge.Retrain

    def probs(self, ds: IndexedDataset) -> np.ndarray:
        return self.model.predict_proba(ds.X).double().numpy()


@pytest.fixture(scope="module")
def overfit() -> Overfit:
    rng = np.random.default_rng(0)
    n, d, classes = 1000, 20, 4
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ rng.normal(size=(d, classes))).argmax(axis=1)
    noisy = rng.random(n) < 0.3
    y[noisy] = rng.integers(0, classes, noisy.sum())
    data = IndexedDataset(X, y, n_classes=classes)
    members = data.select(np.arange(200))
    model = expunge.Retrain(**RECIPE).fit(members)
    assert model.score(members) == 1.0  # memorised
    return Overfit(data, members, data.select(np.arange(200, 600)),
                   data.select(np.arange(600, 1000)), model)


FEATURE_FUNCTIONS = {
    "loss": sample_loss, "confidence": confidence, "m_entropy": m_entropy,
    "entropy": lambda p, y: entropy(p),
}


@pytest.mark.parametrize("feature", list(FEATURE_FUNCTIONS))
def test_threshold_attacks_find_members_and_not_non_members(overfit: Overfit, feature: str) -> None:
    f = FEATURE_FUNCTIONS[feature]

    def values(ds: IndexedDataset) -> np.ndarray:
        return f(overfit.probs(ds), ds.y)

    members = threshold_attack(feature, values(overfit.members), values(overfit.half_a))
    assert members.auc > 0.75
    assert members.best_balanced_accuracy > 0.7
    disjoint = threshold_attack(feature, values(overfit.half_a), values(overfit.half_b))
    assert abs(disjoint.auc - 0.5) < 0.06


def test_threshold_direction_follows_the_feature() -> None:
    low, high = [0.1, 0.2], [0.8, 0.9]
    assert threshold_attack("loss", low, high).auc == 1.0  # members have lower loss
    assert threshold_attack("confidence", high, low).auc == 1.0  # ... and higher confidence
    with pytest.raises(InvalidParameterError, match="unknown feature"):
        threshold_attack("margin", low, high)


def test_logistic_attack_on_overfit_model(overfit: Overfit) -> None:
    def losses(ds: IndexedDataset) -> np.ndarray:
        return sample_loss(overfit.probs(ds), ds.y)

    members = logistic_loss_attack(losses(overfit.members), losses(overfit.half_a),
                                   member_ids=overfit.members.ids,
                                   nonmember_ids=overfit.half_a.ids)
    assert members.accuracy > 0.7 and members.auc > 0.75
    assert members.n_per_class == 200  # balanced down to the smaller side
    disjoint = logistic_loss_attack(losses(overfit.half_a), losses(overfit.half_b))
    assert abs(disjoint.accuracy - 0.5) < 0.1


def test_logistic_attack_is_the_kits_cross_val_score() -> None:
    rng = np.random.default_rng(3)
    members, nonmembers = rng.exponential(0.5, 120), rng.exponential(1.0, 120)
    got = logistic_loss_attack(members, nonmembers)
    X = np.concatenate([nonmembers, members]).reshape(-1, 1)
    y = np.array([0] * 120 + [1] * 120)
    want = cross_val_score(LogisticRegression(), X, y, scoring="accuracy",
                           cv=StratifiedShuffleSplit(n_splits=10, random_state=0))
    assert got.accuracy == pytest.approx(want.mean(), abs=1e-12)


def test_logistic_attack_needs_ten_per_side() -> None:
    with pytest.raises(InvalidParameterError, match="at least 10"):
        logistic_loss_attack(np.ones(9), np.ones(50))


def test_svc_efficacy_separates_members_from_non_members(overfit: Overfit) -> None:
    def conf(ds: IndexedDataset) -> np.ndarray:
        return confidence(overfit.probs(ds), ds.y)

    shadow_members = overfit.members.select(np.arange(100))
    held_out_members = overfit.members.select(np.arange(100, 200))
    shadow_non = overfit.half_a.select(np.arange(200, 300))
    on_members = svc_mia_efficacy(conf(shadow_members), conf(shadow_non), conf(held_out_members))
    on_non = svc_mia_efficacy(conf(shadow_members), conf(shadow_non), conf(overfit.half_b))
    # efficacy = share judged non-member: low for members the model memorised
    assert on_members < 0.2
    assert on_non > on_members + 0.4


def test_shadow_membership_is_balanced_and_per_id() -> None:
    ids = np.arange(500, 900)
    inside = shadow_membership(ids, 8, seed=3)
    assert inside.shape == (8, 400)
    assert (inside.sum(axis=0) == 4).all()  # every id in exactly N/2 shadows
    # an id's shadows depend on the id alone, not on which other ids are present
    alone = shadow_membership(ids[[7]], 8, seed=3)
    np.testing.assert_array_equal(alone[:, 0], inside[:, 7])
    assert not np.array_equal(shadow_membership(ids, 8, seed=4), inside)
    with pytest.raises(InvalidParameterError, match="at least 2 shadow"):
        shadow_membership(ids, 1, seed=0)


def test_likelihood_ratio_matches_closed_form() -> None:
    # two examples, four shadows: example 0 is "in" for shadows 0, 1; example 1 for 2, 3
    shadow_phi = np.array([[4.0, 0.0], [6.0, 1.0], [1.0, 5.0], [-1.0, 7.0]])
    inside = np.array([[True, False], [True, False], [False, True], [False, True]])
    phi = np.array([5.5, 0.5])
    # per-example means: in (5, 6), out (0, 0.5). Pooled within-example variances, one
    # mean per example estimated: in residuals +-1 four times -> 4 / (4 - 2) = 2; out
    # residuals +-1, +-0.5 -> (2 + 0.5) / (4 - 2) = 1.25
    mu_in, mu_out, var_in, var_out = np.array([5.0, 6.0]), np.array([0.0, 0.5]), 2.0, 1.25
    want = (-((phi - mu_in) ** 2) / (2 * var_in) - 0.5 * np.log(var_in)
            + (phi - mu_out) ** 2 / (2 * var_out) + 0.5 * np.log(var_out))
    np.testing.assert_allclose(likelihood_ratio_scores(phi, shadow_phi, inside), want)


def test_likelihood_ratio_needs_both_sides() -> None:
    with pytest.raises(InvalidParameterError, match="in- and one out-shadow"):
        likelihood_ratio_scores(np.zeros(1), np.zeros((2, 1)), np.array([[True], [True]]))


def test_lira_finds_members_of_the_overfit_model(overfit: Overfit) -> None:
    pool = overfit.data
    shadows = train_shadows(lambda k: expunge.Retrain(**RECIPE, seed=k + 1), pool, pool,
                            n_shadows=6, seed=0)
    assert shadows.n_shadows == 6 and shadows.shadow_size == 500
    assert shadows.fit_seconds > 0 and shadows.phi_forgotten is None
    phi = logit_scaled_confidence(overfit.probs(pool), pool.y)
    scores = likelihood_ratio_scores(phi, shadows.phi_fit, shadows.membership)
    member, a, b = np.arange(1000) < 200, (np.arange(1000) >= 200) & (np.arange(1000) < 600), \
        np.arange(1000) >= 600

    def auc(pos: np.ndarray, neg: np.ndarray) -> float:
        return roc_auc(np.concatenate([scores[pos], scores[neg]]),
                       np.concatenate([np.ones(pos.sum()), np.zeros(neg.sum())]))

    assert auc(member, a) > 0.75
    assert abs(auc(a, b) - 0.5) < 0.08


def test_ulira_leave_one_out_separates_only_different_distributions() -> None:
    rng = np.random.default_rng(0)
    unlearned = shadow_membership(np.arange(300), 8, seed=1)
    same = rng.normal(size=(8, 300)) + rng.normal(size=300)  # per-sample offsets, no signal
    scores, labels = ulira_leave_one_out(same, unlearned)
    assert scores.shape == labels.shape == (2400,)
    assert labels.sum() == 1200
    assert abs(roc_auc(scores, labels) - 0.5) < 0.05
    shifted = same + 1.5 * unlearned  # unlearned models keep a trace of the sample
    assert roc_auc(*ulira_leave_one_out(shifted, unlearned)) > 0.8


def test_ulira_leave_one_out_is_unbiased_with_few_shadows() -> None:
    # holding one shadow out leaves its side a value short; without rebalancing, that bias
    # alone gives an AUC near 0.41 with 4 shadows when nothing can be told apart
    rng = np.random.default_rng(1)
    unlearned = shadow_membership(np.arange(20_000), 4, seed=2)
    same = rng.normal(size=(4, 20_000)) + 3 * rng.normal(size=20_000)
    assert abs(roc_auc(*ulira_leave_one_out(same, unlearned)) - 0.5) < 0.01
    with pytest.raises(InvalidParameterError, match="shadow_models >= 4"):
        ulira_leave_one_out(same[:2], shadow_membership(np.arange(20_000), 2, seed=2))

"""RMIA, KLoM, the linear probe, relearn time, the two seed axes with their intervals, the
shared cache and the memorisation ranking: closed forms first, then end to end."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.stats

import expunge
from expunge.data import IndexedDataset, random_forget_ids
from expunge.evaluation import (
    EvaluationCache,
    combine_reports,
    evaluate,
    klom_scores,
    memorisation_scores,
    memorised_forget_ids,
    rmia_scores,
)
from expunge.evaluation._klom import gaussian_klom
from expunge.evaluation._report import interval
from expunge.evaluation._shadow_pool import build_shadow_pool, pool_of
from expunge.exceptions import InvalidParameterError

FAST: dict[str, Any] = {"model": "logreg", "epochs": 3, "batch_size": 32, "lr": 0.1,
                        "momentum": 0.9}


@pytest.fixture(scope="module")
def data(digits: tuple[IndexedDataset, IndexedDataset]) -> tuple[IndexedDataset, IndexedDataset]:
    train, test = digits
    return train.select(train.ids[:400]), test.select(test.ids[:200])


@pytest.fixture(scope="module")
def forget_ids(data: tuple[IndexedDataset, IndexedDataset]) -> np.ndarray:
    return random_forget_ids(data[0], n=20, seed=1)


# ------------------------------------------------------------------------ closed forms
def test_rmia_scores_match_the_pairwise_definition():
    rng = np.random.default_rng(0)
    p_x, refs = rng.random(7), rng.random((4, 7))
    p_z, z_refs = rng.random(9), rng.random((4, 9))
    for gamma in (0.5, 1.0, 2.0):
        scores = rmia_scores(p_x, refs, p_z, z_refs, gamma=gamma)
        ratio_x, ratio_z = p_x / refs.mean(0), p_z / z_refs.mean(0)
        expected = [(ratio_x[i] / ratio_z >= gamma).mean() for i in range(7)]
        assert np.allclose(scores, expected)
    # a target that is itself a population sample is not compared with itself
    in_pop = np.full(7, -1)
    in_pop[2] = 3
    p_x2 = p_x.copy()
    p_x2[2], refs2 = p_z[3], refs.copy()
    refs2[:, 2] = z_refs[:, 3]
    scores = rmia_scores(p_x2, refs2, p_z, z_refs, in_population=in_pop)
    ratio = (p_x2[2] / refs2[:, 2].mean()) / (p_z / z_refs.mean(0))
    keep = np.arange(9) != 3
    assert scores[2] == pytest.approx((ratio[keep] >= 1.0).mean())
    with pytest.raises(InvalidParameterError, match="gamma"):
        rmia_scores(p_x, refs, p_z, z_refs, gamma=0.0)


def _klom_reference(u: np.ndarray, o: np.ndarray) -> float:
    """One point, as the reference code, with the maximum kept in the last bin."""
    u, o = np.clip(u, -100, 100), np.clip(o, -100, 100)
    lo, hi = min(u.min(), o.min()), max(u.max(), o.max())
    hi = hi if hi > lo else lo + 1
    edges = np.linspace(lo, hi, 21)
    p = np.histogram(u, edges)[0] / u.size
    q = np.histogram(o, edges)[0] / o.size
    q = np.where(p > 0, np.maximum(q, 1e-5), q)
    return float(scipy.stats.entropy(pk=p, qk=q))


def test_klom_matches_binned_kl_per_point():
    rng = np.random.default_rng(1)
    u, o = rng.normal(0, 1, (30, 12)), rng.normal(0.5, 2, (25, 12))
    scores = klom_scores(u, o)
    assert np.allclose(scores, [_klom_reference(u[:, j], o[:, j]) for j in range(12)])
    assert np.allclose(klom_scores(o, o), 0.0)
    # few models, disjoint margins: saturates near ln(1/eps)
    assert klom_scores(np.zeros((3, 1)), np.ones((3, 1)))[0] == pytest.approx(np.log(1e5),
                                                                              rel=1e-3)


def test_gaussian_klom_closed_form():
    u = np.array([[0.0], [1.0], [2.0]])
    o = np.array([[3.0], [5.0], [7.0]])
    s_u, s_o = 1.0, 2.0
    expected = np.log(s_o / s_u) + (s_u**2 + (1.0 - 5.0) ** 2) / (2 * s_o**2) - 0.5
    assert gaussian_klom(u, o)[0] == pytest.approx(expected)
    assert gaussian_klom(o, o)[0] == 0.0
    assert gaussian_klom(np.zeros((1, 1)), np.zeros((1, 1)))[0] == 0.0  # floored, equal


def test_interval_is_a_t_interval_over_training_seeds():
    values = [1.0, 1.2, 2.0, 2.4, 3.0, 3.1]
    groups = [0, 0, 1, 1, 2, 2]
    mean, std, ci = interval(values, groups)
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))
    units = [1.1, 2.2, 3.05]
    low, high = scipy.stats.t.interval(0.95, 2, loc=np.mean(units), scale=scipy.stats.sem(units))
    assert ci == pytest.approx((high - low) / 2)
    _, _, ci_one = interval([1.0, 2.0, 4.0], [0, 0, 0])  # one training seed: over the runs
    low, high = scipy.stats.t.interval(0.95, 2, loc=7 / 3, scale=scipy.stats.sem([1, 2, 4]))
    assert ci_one == pytest.approx((high - low) / 2)
    assert interval([5.0], [0]) == (5.0, None, None)


# ------------------------------------------------------------------------ end to end
def test_exact_strategy_matches_its_reference_on_every_new_metric(data, forget_ids):
    train, test = data
    report = evaluate(expunge.Retrain(**FAST), train=train, test=test, forget_ids=forget_ids,
                      reference="retrain", attacks=["rmia", "klom"], checks="all",
                      seeds=[0, 1], shadow_models=4)
    assert report.seeds == [0, 1] and report.unlearn_seeds == [None, None]
    for key in ("mia.rmia.auc", "mia.rmia.tpr_at_1pct", "probe.forget_acc", "relearn.steps"):
        assert report[key].gap == 0.0, key
    for key in ("klom.forget.mean", "klom.retain.mean", "klom.test.gaussian"):
        assert report[key].model == 0.0, key
    assert report["UA"].model_ci is not None and report["UA"].gap_ci == 0.0
    assert 0.0 <= report["probe.forget_acc"].model <= 1.0
    assert any("t-interval over 2 training seeds" in n for n in report.notes)


def test_two_seed_axes_and_their_errors(data, forget_ids):
    train, test = data
    template = expunge.get_strategy("finetune")(**FAST, unlearn_epochs=1.0)
    report = evaluate(template, train=train, test=test, forget_ids=forget_ids,
                      reference="retrain", attacks=["loss"],
                      seeds={"train": [0, 1], "unlearn": [3, 4]})
    assert report.seeds == [0, 0, 1, 1] and report.unlearn_seeds == [3, 4, 3, 4]
    fingerprints = {run["fingerprint"] for run in report.runs}
    assert len(fingerprints) == 4  # every (training, unlearning) pair is its own model
    assert report["UA"].model_ci is not None
    pairs = evaluate(template, train=train, test=test, forget_ids=forget_ids,
                     reference="retrain", attacks=["loss"], seeds=[(0, 3), (1, 4)])
    assert {r["fingerprint"] for r in pairs.runs} <= fingerprints
    with pytest.raises(InvalidParameterError, match="no unlearning randomness"):
        evaluate(expunge.Retrain(**FAST), train=train, test=test, forget_ids=forget_ids,
                 seeds={"train": [0], "unlearn": [1]})
    with pytest.raises(InvalidParameterError, match="'train'"):
        evaluate(template, train=train, test=test, forget_ids=forget_ids,
                 seeds={"unlearn": [1]})


def test_cache_shares_references_and_shadows_across_strategies(data, forget_ids):
    train, test = data
    cache = EvaluationCache()
    reports = []
    for name in ("retrain", "finetune"):
        strategy = expunge.get_strategy(name)(**FAST).fit(train)
        reports.append(evaluate(strategy, test=test, forget_ids=forget_ids,
                                reference="retrain", attacks=["rmia", "lira"], forget=True,
                                shadow_models=4, cache=cache))
    assert cache.misses == {"reference": 1, "shadow": 4}
    assert cache.hits == {"reference": 1, "shadow": 4}
    # the same references attack both: the reference column is the same number
    assert reports[0]["mia.rmia.auc"].reference == reports[1]["mia.rmia.auc"].reference
    assert any("4 from the evaluation cache" in n for n in reports[1].notes)


def test_shadow_recipe_retrain_for_an_ensemble(data, forget_ids):
    train, test = data
    sisa = expunge.SISA(**FAST, n_shards=2, n_slices=1).fit(train)
    report = evaluate(sisa, test=test, forget_ids=forget_ids, attacks=["rmia"],
                      shadow_models=4, shadow_recipe="retrain", checks="all")
    assert any("4 shadow retrain models" in n for n in report.notes)
    assert any("linear probe: n/a" in n for n in report.notes)
    with pytest.raises(InvalidParameterError, match="shadow_recipe"):
        evaluate(sisa, test=test, forget_ids=forget_ids, shadow_recipe="sisa")


def test_memorisation_is_in_minus_out_and_ranks_the_forget_set(data):
    train, test = data
    template = expunge.Retrain(**FAST)
    cache = EvaluationCache()
    ids, scores = memorisation_scores(template, train, test, n_models=4, seed=2, cache=cache)
    pool, _ = pool_of(train, test)
    shadows, _, _ = build_shadow_pool(template, pool, n_shadows=4, seed=2, cache=cache)
    assert cache.hits == {"shadow": 4}
    cols = shadows.columns(train.ids)
    inside, p = shadows.membership[:, cols], shadows.p_label[:, cols]
    for j in (0, 17, 399):
        expected = p[inside[:, j], j].mean() - p[~inside[:, j], j].mean()
        assert scores[j] == pytest.approx(expected)
    chosen = memorised_forget_ids(template, train, test, fraction=0.05, n_models=4, seed=2,
                                  cache=cache, exclude_ids=ids[np.argsort(-scores)[:3]])
    assert len(chosen) == 20
    assert not np.isin(ids[np.argsort(-scores)[:3]], chosen).any()
    assert scores[np.isin(ids, chosen)].min() >= np.sort(scores)[-23] - 1e-12


def test_combine_reports_equals_seeds(data, forget_ids):
    train, test = data
    template = expunge.Retrain(**FAST)
    together = evaluate(template, train=train, test=test, forget_ids=forget_ids,
                        reference="retrain", attacks=["loss", "klom"], seeds=[0, 1])
    singles = []
    for seed in (0, 1):
        model = expunge.Retrain(**{**FAST, "seed": seed}).fit(train)
        singles.append(evaluate(model, test=test, forget_ids=forget_ids, reference="retrain",
                                attacks=["loss", "klom"], forget=True))
    combined = combine_reports(singles)
    assert combined.seeds == [0, 1]
    for key in ("UA", "TA", "mia.loss.auc", "klom.forget.mean"):
        assert combined[key].model == pytest.approx(together[key].model), key
        assert combined[key].model_ci == pytest.approx(together[key].model_ci), key
    other = evaluate(expunge.Retrain(**FAST).fit(train), test=test,
                     forget_ids=forget_ids[:5], attacks=["loss"])
    with pytest.raises(InvalidParameterError, match="one strategy on one forget set"):
        combine_reports([singles[0], other])

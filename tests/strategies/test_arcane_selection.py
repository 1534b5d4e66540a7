"""ARCANE's representative selection: greedy log-det against brute force, and its invariances."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch

from expunge.exceptions import InvalidParameterError
from expunge.strategies.exact._features import FeatureMap
from expunge.strategies.exact._selection import (
    greedy_logdet,
    logdet_objective,
    unit_rows,
)


def toy(n: int = 9, p: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, p))
    ids = rng.permutation(np.arange(100, 100 + n))  # ids not in row order
    return features, ids


def brute_gains(features: np.ndarray, chosen: list[int], noise: float) -> dict[int, float]:
    """Marginal gain f(S + i) - f(S) of every row i not in S, from log-determinants."""
    base = logdet_objective(features[chosen], noise)
    return {i: logdet_objective(features[[*chosen, i]], noise) - base
            for i in range(len(features)) if i not in chosen}


@pytest.mark.parametrize("noise", [0.05, 0.3, 2.0])
def test_each_pick_has_the_largest_brute_force_gain(noise):
    features, ids = toy()
    result = greedy_logdet(features, ids, n_select=6, noise=noise)
    row_of = {int(i): r for r, i in enumerate(ids)}
    chosen: list[int] = []
    for picked, gain in zip(result.ids.tolist(), result.gains.tolist()):
        gains = brute_gains(features, chosen, noise)
        best = max(gains.values())
        assert gains[row_of[picked]] == pytest.approx(best, abs=1e-10)
        assert gain == pytest.approx(gains[row_of[picked]], abs=1e-10)
        chosen.append(row_of[picked])
    # the gains telescope to the objective of the selected set
    assert result.gains.sum() == pytest.approx(logdet_objective(features[chosen], noise), abs=1e-9)


def test_greedy_is_within_1_minus_1_over_e_of_the_best_subset():
    for seed in range(5):
        features, ids = toy(n=10, p=3, seed=seed)
        m, noise = 4, 0.2
        result = greedy_logdet(features, ids, n_select=m, noise=noise)
        best = max(logdet_objective(features[list(s)], noise)
                   for s in itertools.combinations(range(10), m))
        value = float(result.gains.sum())
        assert value <= best + 1e-9
        assert value >= (1 - 1 / math.e) * best


def test_gains_never_increase_and_count_rule_caps_at_the_class_size():
    features, ids = toy(n=12, p=5)
    result = greedy_logdet(features, ids, n_select=50, noise=0.1)
    assert len(result) == 12 and sorted(result.ids.tolist()) == sorted(ids.tolist())
    assert np.all(np.diff(result.gains) <= 1e-12)  # submodularity


def test_ties_go_to_the_smallest_id_and_row_order_does_not_matter():
    features = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    result = greedy_logdet(features, np.array([7, 3, 9, 5]), n_select=2, noise=0.1)
    # rows 0/1 and 2/3 are duplicates with equal gains: 3 (smallest overall), then 5
    assert result.ids.tolist() == [3, 5]
    features, ids = toy(n=15, p=4)
    shuffled = np.random.default_rng(1).permutation(15)
    a = greedy_logdet(features, ids, n_select=8, noise=0.1)
    b = greedy_logdet(features[shuffled], ids[shuffled], n_select=8, noise=0.1)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.gains, b.gains)


@pytest.mark.parametrize("rule", [{"n_select": 7}, {"n_select": None, "threshold": 0.15},
                                  {"n_select": 5, "threshold": 0.15}])
def test_removing_an_unselected_candidate_changes_nothing_bitwise(rule):
    features, ids = toy(n=30, p=5, seed=3)
    features = unit_rows(features)
    full = greedy_logdet(features, ids, noise=0.1, **rule)
    assert 0 < len(full) < 30
    for row in range(30):
        if ids[row] in full.ids:
            continue
        keep = np.arange(30) != row
        reduced = greedy_logdet(features[keep], ids[keep], noise=0.1, **rule)
        assert np.array_equal(reduced.ids, full.ids)
        assert np.array_equal(reduced.gains, full.gains)  # bitwise, not approximately


def test_removing_a_selected_candidate_keeps_the_picks_before_it():
    features, ids = toy(n=30, p=5, seed=4)
    full = greedy_logdet(features, ids, n_select=10, noise=0.1)
    for rank in (0, 4, 9):
        keep = ids != full.ids[rank]
        reduced = greedy_logdet(features[keep], ids[keep], n_select=10, noise=0.1)
        assert np.array_equal(reduced.ids[:rank], full.ids[:rank])
        assert full.ids[rank] not in reduced.ids and len(reduced) == 10


def test_threshold_rule_stops_at_the_first_gain_below_it():
    features, ids = toy(n=20, p=4, seed=5)
    threshold = 0.2
    result = greedy_logdet(features, ids, n_select=None, threshold=threshold, noise=0.1)
    assert np.all(result.gains >= threshold)
    row_of = {int(i): r for r, i in enumerate(ids)}
    remaining = brute_gains(features, [row_of[int(i)] for i in result.ids], 0.1)
    assert max(remaining.values()) < threshold


def test_bad_arguments_are_refused():
    features, ids = toy()
    with pytest.raises(InvalidParameterError, match="size rule"):
        greedy_logdet(features, ids, n_select=None, threshold=None)
    with pytest.raises(InvalidParameterError, match="noise"):
        greedy_logdet(features, ids, n_select=2, noise=0.0)
    with pytest.raises(InvalidParameterError, match="one row per id"):
        greedy_logdet(features, ids[:-1], n_select=2)


def test_projection_entries_are_standard_normal_over_sqrt_d():
    W = FeatureMap("projection", 128, seed=3).matrix(784) * math.sqrt(784)
    assert abs(W.mean()) < 0.01  # 100k entries: standard error 0.003
    assert W.var() == pytest.approx(1.0, rel=0.03)
    assert abs(np.mean(W > 1.0) - 0.1587) < 0.01  # a Gaussian tail, not a uniform one


def test_unit_rows():
    features = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 1.0]])
    out = unit_rows(features)
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0], [1 / math.sqrt(2), 1 / math.sqrt(2)]])


def test_a_6000_sample_class_is_selected_in_seconds():
    X = torch.from_numpy(np.random.default_rng(0).random((6000, 1, 28, 28), dtype=np.float32))
    ids = np.arange(6000)
    started = time.perf_counter()
    features = unit_rows(FeatureMap("projection", 128, seed=0).rowwise(X))
    result = greedy_logdet(features, ids, n_select=1000, noise=0.1)
    seconds = time.perf_counter() - started
    assert len(result) == 1000
    assert seconds < 30, f"selection took {seconds:.1f} s"  # ~2 s on one busy core

"""ARCANE's history independence under adversarial requests, with its default settings.

Each case forgets a sequence of requests and checks, after every request, that the model
equals ``ARCANE(**p).fit(D.drop(all forgotten so far))`` bit for bit (fingerprint and
predictions): forced gain ties (exact duplicate images), whole classes deleted, classes
shrunk to ``n_selected + 1``, ``n_selected`` and ``n_selected - 1``, reopened stores (one
``expunge.open`` per request, the CLI path), random request sequences, and the numpy
fallback against the compiled kernels.
"""

from __future__ import annotations

import numpy as np
import pytest

import expunge
from expunge.data import IndexedDataset
from expunge.strategies.exact import _class_state, _features, _greedy_kernel
from expunge.strategies.exact.arcane import ARCANE

DEFAULTS = dict(n_selected=12, n_blocks=3, seed=5)  # everything else: the library defaults


@pytest.fixture(scope="module")
def data(digits):
    train, _ = digits
    keep = train.y.numpy() < 4  # four classes keep every case under a few seconds
    return train.where(keep).select(train.ids[keep][:160])


def assert_exact(model, params, data, dropped):
    reference = ARCANE(**params).fit(data.drop(dropped))
    assert model.fingerprint() == reference.fingerprint()
    assert np.array_equal(model.predict_proba(data.X).numpy(),
                          reference.predict_proba(data.X).numpy())


def run_sequence(params, data, requests, tmp_path=None):
    path = None if tmp_path is None else tmp_path / "store"
    model = ARCANE(**params, store=path).fit(data)
    dropped: list[int] = []
    for request in requests:
        if path is not None:  # every request through a reopened store, as the CLI does
            model.close()
            model = expunge.open(path)
        model.forget(request)
        dropped += [int(i) for i in request]
        assert_exact(model, params, data, dropped)
        assert_committed_state_checks_out(model)
    model.close()


def assert_committed_state_checks_out(model):
    """Every committed feature and selection blob matches its name (none would be
    recomputed or re-selected by the next request), and holds only retained ids."""
    retained = set(model.training_data.ids.tolist())
    key = model._state_key(model.training_data.input_shape)
    for k, blobs in model.store_.read_state()["model"]["classes"].items():
        for name in blobs.get("features", []):
            arrays = _class_state._read_features(model.store_, name, key, int(k))
            assert arrays is not None, name
            assert set(arrays["ids"].tolist()) <= retained
        if "selection" in blobs:
            selection = _class_state.read_selection(model.store_, key, int(k), blobs, True)
            assert selection is not None and selection.trace is not None
            assert set(selection.trace.candidates.tolist()) <= retained


def selected_of(params, data, k):
    return ARCANE(**params).fit(data).fitted_.classes[k].selection.ids


def test_the_defaults_are_resolved_and_recorded(data, tmp_path):
    model = ARCANE(**DEFAULTS, store=tmp_path / "s").fit(data)
    resolved = model.store_.read_manifest()["resolved"]
    assert resolved == {"features": "conv", "feature_dim": 512, "blocks": "incremental",
                        "order": "greedy", "shrinkage": 0.005, "calibration": "raw"}
    assert model.store_.read_manifest()["params"]["order"] == "auto"  # as given
    svdd = ARCANE(learner="svdd", selection=False, epochs=2, n_blocks=2)
    assert (svdd.blocks_mode, svdd.order_mode) == ("cumulative", "hash")
    model.close()


def test_forced_gain_ties_between_duplicate_images(data):
    """Every image twice (ids i and i + 10,000): each pair has bitwise equal features and
    gains, so the id tie-break decides; forgetting the picked twin must pick the other."""
    twins = IndexedDataset.concat([data, IndexedDataset(data.X, data.y, data.ids + 10_000,
                                                        n_classes=data.n_classes)])
    picks = selected_of(DEFAULTS, twins, 2)
    assert (picks < 10_000).all()  # ties went to the smaller id
    first, later = int(picks[0]), int(picks[7])
    run_sequence(DEFAULTS, twins, [[first], [first + 10_000], [later], [int(picks[3]) + 10_000]])


def test_whole_classes_deleted(data):
    everything_1 = data.ids_of_class(1).tolist()
    picks = selected_of(DEFAULTS, data, 3)
    run_sequence(DEFAULTS, data, [everything_1, [int(picks[0])], data.ids_of_class(0).tolist()])


@pytest.mark.parametrize("margin", [1, 0, -1])
def test_a_class_shrunk_around_n_selected(data, margin):
    """Class 2 cut to n_selected + margin samples; then forget through the boundary."""
    n = DEFAULTS["n_selected"]
    class_2 = data.ids_of_class(2)
    small = data.drop(class_2[n + margin:])
    picks = selected_of(DEFAULTS, small, 2)
    unpicked = np.setdiff1d(small.ids_of_class(2), picks)
    requests = [[int(unpicked[0])]] if unpicked.size else []
    requests += [[int(picks[-1])], [int(picks[0]), int(picks[5])]]
    run_sequence(DEFAULTS, small, requests)


def test_reopened_stores_forget_like_the_process_that_fitted(data, tmp_path):
    picks = selected_of(DEFAULTS, data, 1)
    unpicked = np.setdiff1d(data.ids_of_class(1), picks)
    requests = [[int(unpicked[0])], [int(unpicked[2])], [int(picks[4])],
                [int(picks[0]), int(unpicked[1])], data.ids_of_class(3)[:5].tolist()]
    run_sequence(DEFAULTS, data, requests, tmp_path)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_request_sequences(data, seed):
    rng = np.random.default_rng(seed)
    order = rng.permutation(data.ids)
    sizes = [1, 1, 3, 1, 8, 2]
    requests, at = [], 0
    for size in sizes:
        requests.append(order[at:at + size].tolist())
        at += size
    run_sequence(DEFAULTS, data, requests)


def test_the_numpy_fallback_gives_the_same_model(data, monkeypatch):
    picks = selected_of(DEFAULTS, data, 0)
    compiled = ARCANE(**DEFAULTS).fit(data)
    compiled.forget([int(picks[2])])
    monkeypatch.setattr(_greedy_kernel, "HAVE_NUMBA", False)
    monkeypatch.setattr(_features, "HAVE_NUMBA", False)
    fallback = ARCANE(**DEFAULTS).fit(data)
    fallback.forget([int(picks[2])])
    assert fallback.fingerprint() == compiled.fingerprint()

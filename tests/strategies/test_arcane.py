"""ARCANE: bitwise exactness, what each component retrains, sorting, priors, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import expunge
from expunge.exceptions import InvalidParameterError, StoreIntegrityError
from expunge.store import DirectoryStore, unpack
from expunge.strategies.exact._features import FeatureMap
from expunge.strategies.exact._one_class import (
    GaussianDensity,
    calibrate,
    calibration_stats,
)
from expunge.strategies.exact.arcane import ARCANE
from expunge.strategies.exact.sharded import checkpoint_blob

BASE = dict(n_selected=15, n_blocks=3, features="projection", feature_dim=16, seed=3)
SVDD = dict(BASE, learner="svdd", model="logreg", rep_dim=8, epochs=3, batch_size=8, lr=0.05,
            momentum=0.9, weight_decay=1e-4)


@pytest.fixture(scope="module")
def data(digits):
    train, _ = digits
    return train.select(train.ids[:400])  # ~40 samples per class, 15 selected


@pytest.fixture(scope="module")
def fitted(data):
    """One fitted instance per configuration, for read-only inspection."""
    cache = {}

    def get(**params):
        key = repr(sorted(params.items()))
        if key not in cache:
            cache[key] = ARCANE(**params).fit(data)
        return cache[key]

    return get


def layout(strategy, data):
    """Per class: selected ids and {id: block} from the strategy's plan on ``data``."""
    plans = strategy._plans(data)
    return [{int(i): b for b, block in enumerate(plan.blocks) for i in block} for plan in plans]


def labels_of(data, ids):
    return data.y.numpy()[data.positions(ids)].tolist()


def pick(data, lay, *, selected, cls, block=None, n=1):
    out = []
    class_ids = data.ids_of_class(cls)
    for i in class_ids.tolist():
        in_sel = i in lay[cls]
        if in_sel != selected or (block is not None and lay[cls].get(i) != block):
            continue
        out.append(i)
        if len(out) == n:
            return out
    raise AssertionError(f"no id with selected={selected}, class={cls}, block={block}")


def assert_identical(a, b, data):
    assert a.fingerprint() == b.fingerprint()
    assert np.array_equal(a.predict_proba(data.X).numpy(), b.predict_proba(data.X).numpy())


def requests_for(case, data, lay):
    if case == "unselected":
        return [pick(data, lay, selected=False, cls=2)]
    if case == "selected":
        return [pick(data, lay, selected=True, cls=4, block=1)]
    if case == "several classes":
        return [[pick(data, lay, selected=True, cls=c)[0] for c in (0, 5, 9)]
                + pick(data, lay, selected=False, cls=7)]
    if case == "first block":
        return [pick(data, lay, selected=True, cls=1, block=0, n=2)]
    # a sequence mixing all of the above
    return [pick(data, lay, selected=False, cls=3), pick(data, lay, selected=True, cls=3, block=2),
            pick(data, lay, selected=True, cls=6, block=0) + pick(data, lay, selected=True, cls=8),
            pick(data, lay, selected=False, cls=6, n=3)]


CASES = ["unselected", "selected", "several classes", "first block", "sequence"]


@pytest.mark.parametrize("params", [BASE, SVDD], ids=["gaussian", "svdd"])
@pytest.mark.parametrize("case", CASES)
def test_forget_equals_fit_without(case, params, data, fitted):
    lay = layout(fitted(**params), data)
    strategy = ARCANE(**params).fit(data)
    dropped: list[int] = []
    for request in requests_for(case, data, lay):
        strategy.forget(request)
        dropped += request
        assert_identical(strategy, ARCANE(**params).fit(data.drop(dropped)), data)


PRIOR = np.linspace(0.0, 1.0, 2000)[::-1].copy()  # indexed by id: small ids likely deleted

VARIANTS = {
    "incremental": dict(BASE, blocks="incremental"),
    "svdd incremental adam": dict(SVDD, blocks="incremental", optimizer="adam", lr=0.01),
    "greedy order": dict(BASE, order="greedy"),
    "no selection": dict(BASE, selection=False),
    "threshold rule": dict(BASE, n_selected=None, selection_threshold=0.3),
    "sorting with prior": dict(BASE, deletion_prior=PRIOR),
    "prior, sorting off": dict(BASE, deletion_prior=PRIOR, sorting=False),
    "svdd sorting with prior": dict(SVDD, deletion_prior=PRIOR),
    "pixels, zscore": dict(BASE, features="pixels", calibration="zscore", shrinkage=0.5),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_setting_is_history_independent(name, data, fitted):
    params = VARIANTS[name]
    lay = layout(fitted(**BASE), data)  # ids chosen from the default layout still mix the cases
    strategy = ARCANE(**params).fit(data)
    dropped: list[int] = []
    for request in requests_for("sequence", data, lay):
        strategy.forget(request)
        dropped += request
    assert_identical(strategy, ARCANE(**params).fit(data.drop(dropped)), data)


def test_unselected_forget_retrains_and_purges_nothing(data, fitted):
    lay = layout(fitted(**BASE), data)
    strategy = ARCANE(**BASE).fit(data)
    before = strategy.fingerprint()
    report = strategy.forget(pick(data, lay, selected=False, cls=5, n=3))
    assert (report.samples_retrained, report.sample_passes) == (0, 0)
    assert report.submodels_retrained == []
    assert report.details["classes_touched"] == [5]
    assert report.details["classes_reselected"] == []
    # only the old data bucket(s) and class 5's committed features and trace (its candidates
    # changed: the forgotten rows leave them); its picks are the same blob
    assert report.purged and all(
        name.startswith(("data/", "arcane/features-005-", "arcane/trace-005-"))
        for name in report.purged)
    assert not any(name.startswith("arcane/selection-") for name in report.purged)
    assert strategy.fingerprint() == before


def test_selected_forget_retrains_its_class_from_its_block(data, fitted):
    for params in (BASE, SVDD):
        lay = layout(fitted(**params), data)
        strategy = ARCANE(**params).fit(data)
        before = dict(strategy.fitted_.learned_tensors())
        plans_before = strategy._plans(data)
        request = pick(data, lay, selected=True, cls=4, block=2)
        report = strategy.forget(request)
        plans_after = strategy._plans(data.drop(request))
        # the first block whose content changed, computed independently of the machinery
        first = next(b for b in range(3)
                     if not np.array_equal(plans_before[4].blocks[b], plans_after[4].blocks[b]))
        assert report.submodels_retrained == [4]
        assert report.details["from_block"] == {"4": first}
        assert report.details["classes_reselected"] == [4]
        plan = plans_after[4]
        epochs = plan.epochs
        expected = sum(len(plan.training_ids(b)) * epochs[b] for b in range(first, 3))
        distinct = len(np.unique(np.concatenate([plan.training_ids(b) for b in range(first, 3)])))
        assert (report.sample_passes, report.samples_retrained) == (expected, distinct)
        after = dict(strategy.fitted_.learned_tensors())
        for name, tensor in before.items():  # every other class is untouched, bit for bit
            if not name.startswith("4/"):
                assert torch.equal(tensor, after[name]), name
        assert any(not torch.equal(t, after[n]) for n, t in before.items() if n.startswith("4/"))


def test_greedy_order_keeps_every_block_before_the_deleted_pick(data):
    params = dict(BASE, order="greedy")
    strategy = ARCANE(**params).fit(data)
    ranked = strategy.fitted_.classes[6].selection.ids  # class 6 in greedy order
    request = [int(ranked[11])]  # rank 11 of 15: block 2 (blocks of 5 by rank)
    report = strategy.forget(request)
    assert report.details["from_block"] == {"6": 2}


def test_sorting_puts_likely_deleted_samples_in_the_last_blocks(data, fitted):
    prior = np.zeros(2000)
    likely = [int(i) for c in range(10) for i in data.ids_of_class(c)[:12]]
    prior[likely] = 1.0
    for selection in (True, False):
        strategy = fitted(**dict(BASE, deletion_prior=prior, selection=selection))
        for k, blocks in enumerate(layout(strategy, data)):
            high = [b for i, b in blocks.items() if prior[i] > 0]
            low = [b for i, b in blocks.items() if prior[i] == 0]
            assert high and low, k
            assert max(low) <= min(high)  # nothing likely-deleted before anything stable
    # without re-selection, forgetting a likely-deleted sample leaves every block before it
    params = dict(BASE, deletion_prior=prior, selection=False)
    lay = layout(fitted(**params), data)
    k = next(c for c in range(10) if len(lay[c]) % 3 != 1)  # block size stays ceil(n/3)
    last = max(lay[k].values())
    request = [i for i, b in lay[k].items() if b == last][-1:]
    report = ARCANE(**params).fit(data).forget(request)
    assert report.details["from_block"] == {str(k): last}
    without = dict(BASE, selection=False)  # the same id without the prior sits anywhere
    assert layout(fitted(**without), data)[k][request[0]] <= last


def test_prior_as_callable_mapping_or_array_gives_the_same_model(data, fitted):
    values = np.random.default_rng(0).random(2000)
    by_array = fitted(**dict(SVDD, deletion_prior=values))
    by_map = ARCANE(**SVDD, deletion_prior={i: float(values[i]) for i in range(2000)}).fit(data)
    by_fn = ARCANE(**SVDD, deletion_prior=_lookup).fit(data)
    assert by_array.fingerprint() == by_map.fingerprint() == by_fn.fingerprint()
    assert layout(by_array, data) == layout(by_fn, data) != layout(fitted(**SVDD), data)
    # SGD sees the blocks in another order; the cumulative Gaussian only sees the final set
    assert by_array.fingerprint() != fitted(**SVDD).fingerprint()
    cumulative = dict(BASE, blocks="cumulative")
    assert fitted(**dict(cumulative, deletion_prior=values)).fingerprint() == \
        fitted(**cumulative).fingerprint()


def _lookup(ids):
    return np.random.default_rng(0).random(2000)[ids]


@pytest.mark.parametrize("prior, message", [
    (np.zeros(10), "indexed by id.*10 entries"),
    (np.full(2000, np.nan), "finite"),
    (lambda ids: np.zeros(3), "one value per id"),
    ({"a": 1.0}, "integer ids"),
    (torch.zeros(2000), "deletion_prior"),
])
def test_bad_priors_are_refused_before_anything_is_written(prior, message, data, tmp_path):
    store = tmp_path / "s"
    with pytest.raises(InvalidParameterError, match=message):
        ARCANE(**BASE, deletion_prior=prior, store=store).fit(data)
    assert not store.exists()


@pytest.mark.parametrize("params, message", [
    (dict(n_selected=None), "needs a size rule"),
    (dict(order="greedy", selection=False), "needs selection=True"),
    (dict(learner="svdd", epochs=1, n_blocks=5), "0 epochs"),
    (dict(learner="forest"), "'learner'"),
    (dict(blocks="sliding"), "'blocks'"),
])
def test_bad_parameters_are_refused(params, message, data):
    with pytest.raises(InvalidParameterError, match=message):
        ARCANE(**{**BASE, **params}).fit(data)


def test_reopen_with_an_array_prior_needs_it_again(data, tmp_path):
    params = dict(BASE, deletion_prior=PRIOR)
    path = tmp_path / "store"
    ARCANE(**params, store=path).fit(data).close()
    lay = layout(ARCANE(**params), data)
    request = pick(data, lay, selected=True, cls=2)
    reopened = expunge.open(path)
    before = (reopened.fingerprint(), len(reopened.ledger), sorted(reopened.store_.list_blobs()))
    with pytest.raises(InvalidParameterError, match="pass it again"):
        reopened.forget(request)
    assert (reopened.fingerprint(), len(reopened.ledger),
            sorted(reopened.store_.list_blobs())) == before
    reopened.close()
    reopened = expunge.open(path, deletion_prior=PRIOR)
    reopened.forget(request)
    assert_identical(reopened, ARCANE(**params).fit(data.drop(request)), data)
    reopened.close()


def test_a_forgotten_class_is_never_predicted(data):
    gone = data.ids_of_class(7).tolist()
    strategy = ARCANE(**BASE).fit(data)
    strategy.forget(gone)
    proba = strategy.predict_proba(data.X)
    assert torch.all(proba[:, 7] == 0) and not (strategy.predict(data.X) == 7).any()
    assert torch.allclose(proba.sum(dim=1), torch.ones(len(data)))
    assert_identical(strategy, ARCANE(**BASE).fit(data.drop(gone)), data)


def test_predict_proba_is_the_softmax_of_calibrated_scores(data, fitted):
    strategy = fitted(**BASE)
    scores = strategy._class_scores(strategy.fitted_.submodels, data.X[:50])
    proba = strategy.predict_proba(data.X[:50])
    assert torch.allclose(proba, torch.softmax(scores, dim=1).float(), atol=1e-6)
    hot = ARCANE(**BASE, temperature=1000.0)
    hot_proba = hot._aggregate(strategy.fitted_.submodels, data.X[:50])
    assert torch.equal(hot_proba.argmax(dim=1), proba.argmax(dim=1))
    assert hot_proba.max() < proba.max()  # a higher temperature flattens
    assert strategy.score(data) > 0.9  # gaussian on 15 digits per class


def test_svdd_heads_have_no_bias_and_a_fixed_centre(data, fitted):
    strategy = fitted(**SVDD)
    for submodel in strategy.fitted_.submodels:
        head = submodel.module
        for name, param in head.net.named_parameters():
            if name.endswith("bias"):
                assert not param.requires_grad and torch.all(param == 0)
        first = unpack(*strategy.store_.read_blob(checkpoint_blob(submodel.index, 0,
                                                                  submodel.keys[0])))
        assert torch.equal(first.model["center"], head.center)  # set in block 0, never moved
        assert bool(head.center_set) and torch.all(head.center.abs() >= head.eps)
        distances = head.distances(data.X[data.y == submodel.index]).detach()
        assert float(distances.mean()) > 0  # no collapse onto the centre


def test_gaussian_density_matches_the_closed_form():
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(200, 1, 2, 3)).astype(np.float32))
    density = GaussianDensity(FeatureMap("pixels"), 6)
    density.fit(X)
    flat = X.reshape(200, 6).double()
    cov = torch.cov(flat.T, correction=0)
    # no shrinkage: the maximum-likelihood Gaussian, up to the constant -p/2 log 2π
    extras = density.density(shrinkage=0.0, jitter=0.0)
    reference = torch.distributions.MultivariateNormal(flat.mean(0), cov)
    assert torch.allclose(density.score(X[:20], extras),
                          reference.log_prob(flat[:20]) + 3 * math.log(2 * math.pi), atol=1e-9)
    # shrinkage: (1-λ)Σ + λ tr(Σ)/p I
    shrunk = density.density(shrinkage=0.3, jitter=0.0)
    target = 0.7 * cov + 0.3 * torch.trace(cov) / 6 * torch.eye(6, dtype=torch.float64)
    assert torch.allclose(shrunk["chol"] @ shrunk["chol"].T, target, atol=1e-12)
    # merging blocks gives the statistics of their union
    merged = GaussianDensity(FeatureMap("pixels"), 6)
    for part in (X[:70], X[70:71], X[71:]):
        merged.merge(part)
    assert float(merged.count) == 200
    assert torch.allclose(merged.mean, density.mean, atol=1e-12)
    assert torch.allclose(merged.scatter, density.scatter, atol=1e-10)


def test_zscore_calibration_corrects_raw_scores_that_favour_the_widest_class():
    """Two 1-D classes of equal spread at 0 and 4. Class 1's one-class model scores in a space
    shrunk 50x (as an SVDD network that maps everything close to its centre does): its raw
    distances are tiny everywhere, so it accepts the widest region and raw scores give it
    almost every point. Calibrating each class against its own training scores restores the
    Bayes rule (x < 2 -> class 0), whatever the scale."""
    rng = np.random.default_rng(0)
    train = {0: rng.normal(0.0, 1.0, 2000), 1: rng.normal(4.0, 1.0, 2000)}
    x = np.concatenate([rng.normal(0.0, 1.0, 1000), rng.normal(4.0, 1.0, 1000)])
    y = np.repeat([0, 1], 1000)

    def predictions(scale_1: float, method: str) -> np.ndarray:
        scale = {0: 1.0, 1: scale_1}
        columns = []
        for k in (0, 1):
            def raw(v, k=k):
                return torch.from_numpy(-(scale[k] * (v - train[k].mean())) ** 2)
            columns.append(calibrate(raw(x), calibration_stats(raw(train[k])), method))
        return torch.stack(columns, dim=1).argmax(dim=1).numpy()

    raw = predictions(0.02, "raw")
    assert np.mean(raw[y == 0] == 1) > 0.9  # the widest class takes class 0's points
    calibrated = predictions(0.02, "zscore")
    far = np.abs(x - 2.0) > 0.3
    assert np.array_equal(calibrated[far], (x[far] > 2.0).astype(int))
    assert np.mean(calibrated == y) > 0.95  # Bayes accuracy: Φ(2) = 0.977
    assert np.array_equal(predictions(1.0, "zscore")[far], calibrated[far])  # scale-free


def test_reopen_with_a_mapping_prior_needs_nothing_more(data, tmp_path):
    prior = {int(i): float(i % 7) for i in data.ids}  # recorded in full (keys become strings)
    params = dict(BASE, deletion_prior=prior)
    path = tmp_path / "store"
    ARCANE(**params, store=path).fit(data).close()
    request = pick(data, layout(ARCANE(**params), data), selected=True, cls=5)
    reopened = expunge.open(path)
    reopened.forget(request)
    assert_identical(reopened, ARCANE(**params).fit(data.drop(request)), data)
    reopened.close()


def test_a_reopened_store_reuses_the_committed_selection(data, fitted, tmp_path):
    """Every CLI request reopens the store: the selection is committed with the model, so an
    unselected deletion after a reopen still selects nothing again, and stays exact."""
    lay = layout(fitted(**BASE), data)
    path = tmp_path / "store"
    ARCANE(**BASE, store=path).fit(data).close()
    reopened = expunge.open(path)
    classes = reopened.store_.read_state()["model"]["classes"]
    assert sorted(classes) == [str(k) for k in range(10)]
    assert all({"selection", "trace", "features"} <= set(c) for c in classes.values())
    unselected = pick(data, lay, selected=False, cls=2, n=2)
    report = reopened.forget(unselected)
    assert report.details["classes_reselected"] == [] and report.sample_passes == 0
    reopened.close()
    reopened = expunge.open(path)  # again: the committed selection now has new candidates
    selected = pick(data, lay, selected=True, cls=7)
    report = reopened.forget(selected)
    assert report.details["classes_reselected"] == [7]
    assert_identical(reopened, ARCANE(**BASE).fit(data.drop(unselected + selected)), data)
    reopened.close()


def test_a_changed_selection_blob_is_not_trusted(data, tmp_path):
    """A selection blob replaced under its name no longer matches the digest committed for
    it: the store refuses to read it (before ARCANE's own check against the name). ARCANE
    reads a class's picks when a request needs them, so the next request is refused and
    changes nothing; ``verify`` names the blob at once."""
    path = tmp_path / "store"
    ARCANE(**BASE, store=path).fit(data).close()
    reopened = expunge.open(path)
    name = reopened.store_.read_state()["model"]["classes"]["3"]["selection"]
    tensors, metadata = reopened.store_.read_blob(name)
    reopened.close()
    blob = next((path / "blobs").rglob(name.split("/")[-1] + ".safetensors"))
    blob.unlink()  # replace its content under the same name: a stale or edited selection
    raw = DirectoryStore(path, create=False)
    raw.write_blob(name, {"ids": tensors["ids"].flip(0).contiguous(), "gains": tensors["gains"]},
                   metadata)
    raw.close()
    reopened = expunge.open(path)
    before = (reopened.fingerprint(), len(reopened.ledger))
    with pytest.raises(StoreIntegrityError, match=f"{name}.*does not match the digest"):
        reopened.verify()
    with pytest.raises(StoreIntegrityError, match=f"{name}.*does not match the digest"):
        reopened.forget([int(data.ids_of_class(5)[0])])
    assert (reopened.fingerprint(), len(reopened.ledger)) == before
    reopened.close()

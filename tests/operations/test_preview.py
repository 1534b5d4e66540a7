"""Cost preview: for exact strategies, exactly what the request then reports.

Besides the cases here, ``tests/conftest.py`` previews *every* exact request the suite
makes and compares it with the request's report.
"""

from __future__ import annotations

import numpy as np
import pytest

import expunge
from expunge.data import IndexedDataset
from expunge.exceptions import AlreadyForgottenError, InvalidRequestError, UnknownSampleError
from expunge.operations.preview import estimate_seconds

EXACT = [n for n in expunge.available_strategies()
         if expunge.get_strategy(n).guarantee == "exact"]
VARIANTS = [
    ("retrain", {}),
    ("sisa", {}),
    ("sisa", {"n_shards": 4, "n_slices": 3, "epochs": 3}),
    ("arcane", {}),
    ("arcane", {"n_selected": 8}),  # most ids unselected: nothing to retrain for them
    ("arcane", {"blocks": "incremental"}),
    ("arcane", {"selection": False, "n_selected": None}),
    ("arcane", {"order": "greedy"}),
    ("arcane", {"learner": "svdd", "model": "logreg", "epochs": 2, "rep_dim": 4}),
]


def make(name: str, **overrides):
    cls = expunge.get_strategy(name)
    return cls(**{**cls._test_params(), **overrides})


def state_of(m):
    return (m.fingerprint(), len(m.ledger), sorted(m.store_.list_blobs()),
            m.training_data.ids.tolist())


def test_every_exact_strategy_is_covered():
    assert {name for name, _ in VARIANTS} == set(EXACT)


@pytest.mark.parametrize("name, params", VARIANTS)
def test_preview_is_exactly_the_request(name, params, small_digits, tmp_path):
    m = make(name, store=tmp_path / "s", **params).fit(small_digits)
    rng = np.random.default_rng(0)
    requests = [[int(small_digits.ids[0])], rng.choice(small_digits.ids[1:], 5, replace=False),
                rng.choice(small_digits.ids[1:], 1), small_digits.ids[-20:]]
    for i, ids in enumerate(requests):
        ids = [int(x) for x in ids if x in set(m.training_data.ids.tolist())]
        if i == 2:  # and across a reopen
            m.close()
            m = expunge.open(tmp_path / "s")
        before = state_of(m)
        preview = m.preview(ids)
        assert state_of(m) == before  # nothing trained, written or recorded
        report = m.forget(ids)
        assert preview.exact
        assert preview.sample_passes == report.sample_passes
        assert preview.samples_retrained == report.samples_retrained
        assert preview.submodels_retrained == report.submodels_retrained
        assert preview.from_block == {str(k): v for k, v in
                                      report.details.get("from_block", {}).items()}
        assert preview.purged == report.purged
        assert preview.guarantee == report.guarantee
    m.close()


def test_preview_of_a_subject(small_digits):
    keys = [f"s{i % 30}" for i in range(len(small_digits))]
    data = IndexedDataset(small_digits.X, small_digits.y, small_digits.ids, keys)
    m = make("sisa").fit(data)
    preview = m.preview(subject="s4")
    report = m.forget_subject("s4")
    assert preview.ids == report.ids and preview.sample_passes == report.sample_passes
    with pytest.raises(InvalidRequestError, match="exactly one of ids or subject"):
        m.preview([1], subject="s5")


def test_preview_refuses_what_forget_refuses(small_digits):
    m = make("sisa").fit(small_digits)
    m.forget([7])
    with pytest.raises(AlreadyForgottenError):
        m.preview([7])
    with pytest.raises(UnknownSampleError):
        m.preview([10**9])
    with pytest.raises(InvalidRequestError):
        m.preview([])


def test_approximate_preview_is_honest(small_digits):
    m = make("puma").fit(small_digits)
    preview = m.preview([int(small_digits.ids[5])])
    assert not preview.exact and preview.sample_passes is None
    assert preview.estimated_seconds is None  # no past request to learn from yet
    report = m.forget([int(small_digits.ids[5])])
    assert set(preview.purged) <= set(report.purged)
    later = m.preview([int(small_digits.ids[6])])
    assert later.estimated_seconds == pytest.approx(report.seconds, rel=0.5)


class _Entry:
    def __init__(self, kind, passes, seconds):
        self.kind, self.sample_passes, self.seconds = kind, passes, seconds


def test_time_estimate_learns_from_the_ledger():
    # the fit: 1 µs per sample-pass; requests: 0.2 s + 1 µs per pass
    fit = _Entry("fit", 1_000_000, 1.0)
    seconds, basis = estimate_seconds([fit], 500_000)
    assert seconds == pytest.approx(0.5) and "fit" in basis
    history = [fit] + [_Entry("forget", p, 0.2 + p * 1e-6) for p in (0, 10_000, 50_000, 90_000)]
    seconds, basis = estimate_seconds(history, 200_000)
    assert seconds == pytest.approx(0.4, rel=1e-6) and "line" in basis
    assert estimate_seconds([_Entry("forget", 0, 0.3)], None)[0] == pytest.approx(0.3)

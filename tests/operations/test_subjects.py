"""Subjects: keys on IndexedDataset, forget_subject, and no clear key ever on disk."""

from __future__ import annotations

import numpy as np
import pytest

import expunge
from expunge.data import IndexedDataset
from expunge.exceptions import DatasetError, InvalidRequestError, UnknownSubjectError

NAMES = expunge.available_strategies()


def make(name: str, **overrides):
    cls = expunge.get_strategy(name)
    return cls(**{**cls._test_params(), **overrides})


def with_subjects(data: IndexedDataset, n_subjects: int = 40) -> IndexedDataset:
    # e-mail-like keys, one subject per ~7 samples; every 11th sample has no subject
    keys = [None if i % 11 == 0 else f"person-{i % n_subjects}@example.org"
            for i in range(len(data))]
    return IndexedDataset(data.X, data.y, data.ids, keys, n_classes=data.n_classes)


def test_subjects_follow_the_samples_through_drop_select_where_concat(small_digits):
    data = with_subjects(small_digits)
    ids = data.ids_of_subject("person-3@example.org")
    assert ids.size > 1
    dropped = data.drop(ids[:1])
    assert dropped.ids_of_subject("person-3@example.org").tolist() == ids[1:].tolist()
    picked = data.select(ids[::-1])
    assert set(picked.subjects.tolist()) == {"person-3@example.org"}
    both = IndexedDataset.concat([picked, small_digits.select(small_digits.ids[-3:])])
    assert both.subjects.tolist()[-3:] == [None, None, None]
    assert data.with_labels(data.y).subjects.tolist() == data.subjects.tolist()
    # ints name the same subject as their text
    numbered = IndexedDataset(data.X[:3], data.y[:3], data.ids[:3], [17, "17", None])
    assert numbered.ids_of_subject(17).tolist() == data.ids[:2].tolist()


def test_subjects_change_the_fingerprint_only_when_given(small_digits):
    plain = IndexedDataset(small_digits.X, small_digits.y, small_digits.ids)
    assert plain.fingerprint() == small_digits.fingerprint()
    a, b = with_subjects(small_digits, 40), with_subjects(small_digits, 41)
    assert len({small_digits.fingerprint(), a.fingerprint(), b.fingerprint()}) == 3


@pytest.mark.parametrize("bad, message", [
    ("abc", "one key per sample"),
    (["a", "b"], "2 entries but there are 3"),
    (["a", "", "c"], "position 1"),
    (["a", 1.5, "c"], "position 1"),
    (["a", True, "c"], "position 1"),
])
def test_bad_subject_keys_are_refused(bad, message):
    with pytest.raises(DatasetError, match=message):
        IndexedDataset([[0.0], [1.0], [2.0]], [0, 1, 1], None, bad)


@pytest.mark.parametrize("name", NAMES)
def test_forget_subject_forgets_exactly_that_subjects_samples(name, small_digits, tmp_path):
    data = with_subjects(small_digits)
    m = make(name, store=tmp_path / "s").fit(data)
    target = data.ids_of_subject("person-5@example.org")
    report = m.forget_subject("person-5@example.org", tag="ticket-9")
    assert report.ids == sorted(target.tolist())
    assert not m.training_data.contains(target).any()
    entry = m.ledger[report.seq]
    assert entry.details["subject_hashes"] and "person-5" not in str(entry.to_dict())
    assert expunge.verify_receipt(report.receipt, m.public_key, subject="person-5@example.org",
                                  subject_nonce=report.subject_nonce)
    with pytest.raises(UnknownSubjectError, match=f"already forgotten, by request.*#{report.seq}"):
        m.forget_subject("person-5@example.org")
    with pytest.raises(UnknownSubjectError, match="No retained sample belongs"):
        m.forget_subject("nobody@example.org")
    with pytest.raises(InvalidRequestError, match="non-empty string"):
        m.forget_subject("")
    m.close()
    # a reopened store finds the subject's samples from the stored hashes alone
    again = expunge.open(tmp_path / "s")
    other = data.ids_of_subject("person-6@example.org")
    assert again.forget_subject("person-6@example.org").ids == sorted(other.tolist())
    again.close()


def test_exactness_holds_for_a_subject_request(small_digits):
    data = with_subjects(small_digits)
    m = make("sisa").fit(data)
    ids = m.forget_subject("person-7@example.org").ids
    twin = make("sisa").fit(data.drop(ids))
    assert m.fingerprint() == twin.fingerprint()


def test_no_subject_key_reaches_the_disk(small_digits, tmp_path, readable_contents):
    data = with_subjects(small_digits)
    m = make("sisa", store=tmp_path / "s").fit(data)
    m.forget_subject("person-1@example.org")
    m.forget([int(data.ids_of_subject("person-2@example.org")[0])])
    m.close()
    for path in (tmp_path / "s").rglob("*"):
        if path.is_file():
            assert all(b"example.org" not in c for c in readable_contents(path)), path
    # the hashes depend on the store's secret: another store gives other hashes
    other = make("sisa", store=tmp_path / "t").fit(data)
    first = expunge.open(tmp_path / "s")
    h1 = first.subject_hash("person-3@example.org")
    h2 = other.subject_hash("person-3@example.org")
    assert h1 != h2  # keyed with each store's own secret (secret.key)
    first.close()
    other.close()


def test_a_store_without_subjects_says_so(small_digits):
    m = make("retrain").fit(small_digits)
    with pytest.raises(UnknownSubjectError, match="fitted without subject keys"):
        m.forget_subject("someone")
    assert np.array_equal(m.training_data.ids, small_digits.ids)

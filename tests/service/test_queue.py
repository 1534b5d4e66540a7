"""The service's durable queue and its worker, without HTTP (standard library only)."""

from __future__ import annotations

import threading

import pytest

import expunge
from expunge.data import IndexedDataset
from expunge.service._processor import Processor
from expunge.service._queue import DONE, FAILED, QUEUED, RUNNING, RequestQueue


def make(name: str, **overrides):
    cls = expunge.get_strategy(name)
    return cls(**{**cls._test_params(), **overrides})


def test_submit_is_durable_and_idempotent(tmp_path):
    queue = RequestQueue(tmp_path / "q.sqlite")
    row, created = queue.submit("k1", ids=[3, 4], tag="t")
    assert created and row.status == QUEUED and row.ids == [3, 4]
    again, created = queue.submit("k1", ids=[99])
    assert not created and again.ids == [3, 4]
    queue.close()
    # committed before submit returned: another connection sees it
    reopened = RequestQueue(tmp_path / "q.sqlite")
    assert reopened.get("k1").ids == [3, 4]
    assert reopened.counts()[QUEUED] == 1


def test_claim_takes_the_oldest_in_order_once(tmp_path):
    queue = RequestQueue(tmp_path / "q.sqlite")
    for i in range(5):
        queue.submit(f"k{i}", ids=[i])
    first = queue.claim(2)
    second = queue.claim(10)
    assert [r.request_key for r in first] == ["k0", "k1"]
    assert [r.request_key for r in second] == ["k2", "k3", "k4"]
    assert queue.claim(10) == [] and queue.counts()[RUNNING] == 5


def test_recover_settles_running_requests(tmp_path):
    queue = RequestQueue(tmp_path / "q.sqlite")
    for key in ("a", "b", "c"):
        queue.submit(key, ids=[1])
    queue.claim(3)
    done, requeued = queue.recover({"a": 7}, lambda seq: {"seq_seen": seq})
    assert (done, requeued) == (1, 2)
    assert queue.get("a").status == DONE and queue.get("a").seq == 7
    assert queue.get("a").result == {"seq_seen": 7}
    assert queue.get("b").status == QUEUED == queue.get("c").status


@pytest.fixture
def served(small_digits, tmp_path):
    keys = [f"user-{i % 25}" for i in range(len(small_digits))]
    data = IndexedDataset(small_digits.X, small_digits.y, small_digits.ids, keys)
    m = make("sisa", store=tmp_path / "s").fit(data)
    queue = RequestQueue(tmp_path / "q.sqlite")
    yield m, queue, data
    queue.close()
    m.close()


def test_processor_forgets_requests_one_at_a_time(served):
    m, queue, data = served
    processor = Processor(m, queue)
    queue.submit("r1", ids=[5, 6], tag="ticket 1")
    queue.submit("r2", subject_hash=m.subject_hash("user-3"), subject_commitment="c" * 64)
    queue.submit("r3", ids=[5])  # forgotten by r1 by the time it runs
    queue.submit("r4", ids=[10**9])
    for _ in range(4):
        processor.process(queue.claim(1))
    r1, r2, r3, r4 = (queue.get(k) for k in ("r1", "r2", "r3", "r4"))
    assert r1.status == DONE and r1.result["report"]["ids"] == [5, 6]
    assert r2.status == DONE
    assert r2.result["report"]["ids"] == sorted(data.ids_of_subject("user-3").tolist())
    assert (r3.status, r3.http_status) == (FAILED, 409) and "already forgotten" in r3.error
    assert (r4.status, r4.http_status) == (FAILED, 422) and "1000000000" in r4.error
    entries = m.ledger.entries("forget")
    assert [e.details["service_requests"] for e in entries] == [["r1"], ["r2"]]
    assert entries[0].details["tag"] == "ticket 1"
    assert entries[1].details["subject_commitments"] == ["c" * 64]
    assert expunge.verify_receipt(r2.result["receipt"], m.public_key)
    assert m.verify() == 3


def test_a_batch_is_one_ledger_entry_and_conflicts_are_answered(served):
    m, queue, _ = served
    processor = Processor(m, queue, batch_window=60)
    queue.submit("a", ids=[1, 2])
    queue.submit("b", ids=[3])
    queue.submit("c", ids=[2, 4])  # overlaps a: refused, the others go on
    queue.submit("d", ids=[-5])
    outcomes = processor.process(queue.claim(10))
    assert {k: v[0] for k, v in outcomes.items()} == {"a": DONE, "b": DONE, "c": FAILED,
                                                       "d": FAILED}
    (entry,) = m.ledger.entries("forget")
    assert entry.ids == [1, 2, 3] and entry.details["service_requests"] == ["a", "b"]
    assert queue.get("a").seq == queue.get("b").seq == entry.seq
    assert "same batch" in queue.get("c").error


def test_processor_thread_and_crash_recovery(served):
    m, queue, _ = served
    # a previous run committed r1's batch but died before recording it, and claimed r2
    queue.submit("r1", ids=[7])
    queue.submit("r2", ids=[8])
    queue.claim(2)
    m._apply_forget([7], tag=None, details={"service_requests": ["r1"]})
    finished: list[str] = []
    done = threading.Event()

    def on_finished(keys: list[str]) -> None:
        finished.extend(keys)
        done.set()

    processor = Processor(m, queue, on_finished=on_finished)
    processor.start()
    try:
        assert done.wait(60)
    finally:
        processor.stop()
    assert queue.get("r1").status == DONE and queue.get("r1").seq == 2
    assert queue.get("r2").status == DONE and finished == ["r2"]
    assert [e.ids for e in m.ledger.entries("forget")] == [[7], [8]]  # r1 not applied twice


def test_an_error_after_the_commit_is_answered_as_done(served, monkeypatch):
    """A failure after the ledger commit (here: recording the outcome the first time) must
    not report the request as failed: it happened."""
    m, queue, _ = served
    processor = Processor(m, queue)
    queue.submit("r1", ids=[9])
    real = queue.finish
    calls = []

    def flaky(outcomes):
        calls.append(outcomes)
        if len(calls) == 1:
            raise OSError("disk full")
        real(outcomes)

    monkeypatch.setattr(queue, "finish", flaky)
    processor._step()
    row = queue.get("r1")
    assert row.status == DONE and row.seq == 2
    assert [e.ids for e in m.ledger.entries("forget")] == [[9]]

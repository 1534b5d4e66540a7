"""Several processes on one store: one writer at a time, never on a stale state.

Claims: two processes that both loaded a store and then forget at (nearly) the same moment
never lose a request or commit on top of a state they did not read: at least one request
applies, the ledger's forgotten set is exactly what left the training data, the model is
bit-for-bit ``fit(D without the applied ids)`` and ``verify()`` passes, whatever the
interleaving; ``verify`` beside a running forget never fails and never deletes anything;
a waiting writer says that it waits, gives up at ``timeout``, and proceeds as soon as the
holder ends, even by SIGKILL; a SIGKILL at any moment of a request leaves a store that
verifies and holds exactly the requests committed before it.

The other processes are real interpreters (``_store_worker.py``), started once per test and
driven over a pipe, so that several trials share their start-up cost.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import expunge
from expunge.exceptions import (
    AlreadyForgottenError,
    ConcurrentModificationError,
    StoreLockedError,
)

WORKER = Path(__file__).with_name("_store_worker.py")
PARAMS = dict(model="logreg", n_shards=2, n_slices=2, epochs=2, batch_size=16, lr=0.1,
              momentum=0.9, seed=0)


class Worker:
    """Another Python process that acts on stores on command (see ``_store_worker.py``)."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, str(WORKER)], env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.process.pid

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def read(self, limit: float = 300.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], limit)
        assert ready, "the worker did not answer"
        line = self.process.stdout.readline()
        assert line, f"the worker died (exit code {self.process.poll()})"
        return json.loads(line)

    def ask(self, **command: Any) -> dict[str, Any]:
        self.send(**command)
        return self.read()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            self.send(op="exit")
            self.process.wait(timeout=60)


@pytest.fixture
def workers():
    started: list[Worker] = []

    def start(n: int = 1) -> list[Worker]:
        new = [Worker() for _ in range(n)]
        for worker in new:
            assert worker.read()["status"] == "started"
        started.extend(new)
        return new

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.kill()


def fit_store(path: Path, data) -> Path:
    expunge.SISA(**PARAMS, store=path).fit(data).close()
    return path


def assert_consistent(path: Path, data, applied: set[int]) -> None:
    """The store says exactly what happened, and holds exactly that."""
    strategy = expunge.open(path)
    assert strategy.verify() == 1 + len(applied)
    forgotten = set(strategy.ledger.forgotten())
    assert forgotten == applied
    assert set(data.ids.tolist()) - set(strategy.training_data.ids.tolist()) == applied
    twin = expunge.SISA(**PARAMS).fit(data.drop(sorted(applied)) if applied else data)
    assert strategy.fingerprint() == twin.fingerprint()
    # nothing left over: every blob is named by the committed state
    assert strategy.store_.list_blobs() == set(strategy.store_.read_state()["blobs"])
    strategy.close()


def test_two_handles_in_one_process_never_lose_a_request(small_digits, tmp_path):
    """The issue's reproduction: A and B loaded the same state; both requests must hold."""
    path = fit_store(tmp_path / "s", small_digits)
    first, second = int(small_digits.ids[5]), int(small_digits.ids[200])
    a, b = expunge.open(path), expunge.open(path)
    a.forget([first])
    b.forget([second])  # B's state is stale: it reloads, then applies on top of A's request
    assert b.training_data.contains([first, second]).tolist() == [False, False]
    with pytest.raises(AlreadyForgottenError, match=r"#2"):
        b.forget([first])
    a.close()
    b.close()
    assert_consistent(path, small_digits, {first, second})


def test_a_commit_on_a_stale_head_is_refused(small_digits, tmp_path):
    """Belt and braces: the commit re-checks the head inside its transaction, so even a
    writer that bypassed the request's reload (or the lock) cannot commit on a stale state."""
    path = fit_store(tmp_path / "s", small_digits)
    a, b = expunge.open(path), expunge.open(path)
    b.forget([int(small_digits.ids[1])])
    state = a.store_.read_state()
    with a.store_.writing(), pytest.raises(ConcurrentModificationError,
                                           match="planned on request #1.*#2 is committed"):
        a.store_.commit(state, {"kind": "forget", "strategy": "sisa", "guarantee": "exact",
                                "ids": [2], "fingerprint_before": "", "fingerprint_after": "",
                                "samples_retrained": 0, "sample_passes": 0, "seconds": 0.0},
                        live=set(state["blobs"]), expected=a._head)
    a.close()
    b.close()
    assert_consistent(path, small_digits, {int(small_digits.ids[1])})


#: (delay of process A, delay of process B, same id?): both have loaded the store before
INTERLEAVINGS = [
    (0.0, 0.0, False), (0.0, 0.05, False), (0.0, 0.2, False), (0.3, 0.0, False),
    (0.0, 1.0, False), (0.0, 0.0, True), (0.1, 0.0, True),
]


def test_two_processes_forgetting_at_once_stay_consistent(small_digits, tmp_path, workers):
    a, b = workers(2)
    for trial, (delay_a, delay_b, same_id) in enumerate(INTERLEAVINGS):
        path = fit_store(tmp_path / f"s{trial}", small_digits)
        ids = [int(small_digits.ids[7 + trial]),
               int(small_digits.ids[7 + trial if same_id else 250 - trial])]
        for worker in (a, b):
            assert worker.ask(op="open", store=str(path))["entries"] == 1  # both loaded it
        a.send(op="forget", ids=[ids[0]], delay=delay_a)  # ... now both forget at once
        b.send(op="forget", ids=[ids[1]], delay=delay_b)
        results = [a.read(), b.read()]
        applied = {r["ids"][0] for r in results if r["status"] == "applied"}
        where = f"trial {trial} {INTERLEAVINGS[trial]}: {results}"
        if same_id:
            assert sorted(r["status"] for r in results) == ["applied", "refused"], where
            assert {r.get("error") for r in results} == {None, "AlreadyForgottenError"}, where
        else:
            assert all(r["status"] == "applied" for r in results), where
        assert_consistent(path, small_digits, applied)


def test_verify_beside_a_forget_never_fails_or_deletes(small_digits, tmp_path, workers):
    (writer,) = workers(1)
    path = fit_store(tmp_path / "s", small_digits)
    ids = [int(i) for i in small_digits.ids[10:15]]
    writer.ask(op="open", store=str(path))
    handle = expunge.open(path)  # long-lived: verify reloads it whenever the store moved on
    writer.send(op="forget-each", ids=ids)
    seen, stdout = set(), writer.process.stdout
    while not select.select([stdout], [], [], 0)[0]:  # until the writer answers
        fresh = expunge.open(path)
        seen.add(fresh.verify())
        fresh.close()
        seen.add(handle.verify())
    assert writer.read()["status"] == "done"
    assert handle.verify() == 1 + len(ids)
    handle.close()
    assert len(seen) >= 2, seen  # it did verify while requests were being committed
    assert_consistent(path, small_digits, set(ids))


def test_a_waiting_writer_says_so_times_out_and_proceeds_when_the_holder_ends(
        small_digits, tmp_path, workers, capsys):
    (holder,) = workers(1)
    path = fit_store(tmp_path / "s", small_digits)
    holder.ask(op="open", store=str(path))
    strategy = expunge.open(path, show_progress=True)
    first, second = int(small_digits.ids[3]), int(small_digits.ids[4])
    # 1. the holder ends normally: give up at the timeout, then wait and proceed
    holder.send(op="hold", seconds=2.0)
    assert holder.read()["status"] == "held"
    before = (strategy.fingerprint(), strategy.ledger.head)
    started = time.monotonic()
    with pytest.raises(StoreLockedError, match=rf"after 0.5 s: held by pid {holder.pid}"):
        strategy.forget([first], timeout=0.5)
    assert time.monotonic() - started < 2.0
    assert (strategy.fingerprint(), strategy.ledger.head) == before
    strategy.forget([first])  # waits for the holder, then applies
    assert "waiting for the write lock" in capsys.readouterr().err
    assert holder.read()["status"] == "released"
    # 2. the holder is killed while holding: the OS releases the lock at once
    holder.send(op="hold", seconds=600)
    assert holder.read()["status"] == "held"
    holder.kill()
    strategy.forget([second], timeout=10)
    strategy.close()
    assert_consistent(path, small_digits, {first, second})


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_during_requests_leaves_a_consistent_store(small_digits, tmp_path, workers,
                                                          trial):
    """Kill a process at a random moment of a sequence of requests."""
    (writer,) = workers(1)
    path = fit_store(tmp_path / "s", small_digits)
    ids = [int(i) for i in small_digits.ids[20:40]]
    writer.ask(op="open", store=str(path))
    writer.send(op="forget-each", ids=ids)
    time.sleep(float(np.random.default_rng(trial).uniform(0.05, 1.5)))
    writer.kill()
    strategy = expunge.open(path)  # recovers: finishes or undoes the interrupted request
    forgotten = set(strategy.ledger.forgotten())
    strategy.close()
    assert forgotten == set(ids[:len(forgotten)])  # the requests before the kill, in order
    assert_consistent(path, small_digits, forgotten)

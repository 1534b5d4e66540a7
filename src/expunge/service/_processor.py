"""The service's one worker: takes queued requests and forgets them, one batch at a time.

One thread owns the strategy handle for writing. For each batch it takes the store's
inter-process write lock (``strategy.locked()``: a CLI ``expunge forget`` or another
process waits meanwhile, and the handle first reloads whatever they committed), validates
each request against the current state (a request that fails is answered with its reason;
the others go on), and forgets the union of the valid requests as **one** ledger entry
that lists their request keys. Without a batching window a batch is one request; with
``batch_window=W`` the worker waits until the oldest queued request is ``W`` seconds old
and takes everything queued by then (up to ``max_batch``), so that one retraining serves
them all.

Every other use of the handle (previews, ledger reads, receipts) takes ``model_lock``, so
threads never interleave on it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from expunge.exceptions import (
    AlreadyForgottenError,
    ExpungeError,
    InvalidParameterError,
    InvalidRequestError,
    StoreLockedError,
    UnknownSampleError,
    UnknownSubjectError,
)
from expunge.service._queue import DONE, FAILED, QueuedRequest, RequestQueue
from expunge.strategies.base import ForgetReport, UnlearningStrategy

_LOG = logging.getLogger("expunge.service")

Outcome = tuple[str, int | None, int, str | None, dict[str, Any] | None]


def http_status(error: BaseException) -> int:
    """The HTTP status a failed request is answered with."""
    if isinstance(error, AlreadyForgottenError):
        return 409
    if isinstance(error, UnknownSubjectError):
        return 404
    if isinstance(error, (InvalidRequestError, UnknownSampleError, InvalidParameterError)):
        return 422
    if isinstance(error, StoreLockedError):
        return 503
    return 500


def report_result(report: ForgetReport | dict[str, Any], receipt: dict[str, Any]) -> dict[str, Any]:
    """The part of a done request's answer that describes the ledger entry."""
    fields = report.to_dict() if isinstance(report, ForgetReport) else dict(report)
    fields.pop("receipt", None)
    fields.pop("subject_nonce", None)
    return {"report": fields, "receipt": receipt}


class Processor:
    """Processes the queue in a background thread (see the module docstring).

    Args:
        strategy: the opened store (``expunge.open``).
        queue: the durable queue.
        batch_window: seconds to let requests accumulate into one batch (0: none).
        max_batch: most requests in one batch.
        lock_timeout: seconds to wait for another process's lock before failing the batch
            with 503 (``None``: wait).
        on_finished: called from the worker thread with the keys of finished requests.
    """

    def __init__(self, strategy: UnlearningStrategy, queue: RequestQueue, *,
                 batch_window: float = 0.0, max_batch: int = 1000,
                 lock_timeout: float | None = None,
                 on_finished: Callable[[list[str]], None] | None = None) -> None:
        if batch_window < 0 or max_batch < 1:
            raise InvalidParameterError(
                f"batch_window must be >= 0 and max_batch >= 1; got {batch_window}, {max_batch}.")
        self.strategy = strategy
        self.queue = queue
        self.batch_window = float(batch_window)
        self.max_batch = int(max_batch)
        self.lock_timeout = lock_timeout
        self.on_finished = on_finished
        self.model_lock = threading.RLock()
        self.busy = False
        self.batches = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------------- control
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="expunge-processor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the batch in progress (a request is never cut in half)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """The store's inter-process write lock for one batch; the handle first reloads what
        other processes committed (``UnlearningStrategy.locked``)."""
        with self.strategy.locked(timeout=self.lock_timeout):
            yield

    def recover(self) -> tuple[int, int]:
        """Settle requests a previous run left ``running`` (see :mod:`._queue`)."""
        with self.model_lock:
            done, requeued = self.queue.recover(self._committed_keys(), self._result_of)
        if done or requeued:
            _LOG.warning("recovered %d committed and %d requeued request(s)", done, requeued)
        return done, requeued

    def _committed_keys(self) -> dict[str, int]:
        """Every request key the ledger records, with the seq of its entry."""
        committed: dict[str, int] = {}
        for entry in self.strategy.ledger.entries("forget"):
            for key in (entry.details or {}).get("service_requests", []):
                committed[str(key)] = entry.seq
        return committed

    def _result_of(self, seq: int) -> dict[str, Any]:
        entry = self.strategy.ledger[seq]
        return report_result(ForgetReport.from_entry(entry), self.strategy.receipt(seq))

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # the queue itself failed (disk full...): retry, do not die
                _LOG.exception("the request queue failed; retrying in 1 s")
                self._stop.wait(1.0)

    def _step(self) -> None:
        batch = self._next_batch()
        if not batch:
            return
        try:
            outcomes = self.process(batch)
        except Exception as err:  # never lose the worker; answer the batch truthfully
            _LOG.exception("batch failed")
            with self.model_lock:
                committed = self._committed_keys()
                outcomes = {}
                for row in batch:
                    seq = committed.get(row.request_key)
                    outcomes[row.request_key] = (
                        (DONE, seq, 200, None, self._result_of(seq)) if seq is not None
                        else (FAILED, None, 500, f"internal error: {err}", None))
            self.queue.finish(outcomes)
        if self.on_finished is not None:
            self.on_finished(list(outcomes))

    def _next_batch(self) -> list[QueuedRequest]:
        first = self.queue.oldest_queued()
        if first is None:
            self._wake.wait(0.5)
            self._wake.clear()
            return []
        if self.batch_window > 0:
            due = first.submitted_ts + self.batch_window
            while not self._stop.is_set() and time.time() < due:
                self._stop.wait(min(due - time.time(), 0.5))
            if self._stop.is_set():
                return []
        return self.queue.claim(self.max_batch if self.batch_window > 0 else 1)

    # --------------------------------------------------------------- process
    def process(self, batch: list[QueuedRequest]) -> dict[str, Outcome]:
        """Forget one claimed batch; record and return every request's outcome."""
        outcomes: dict[str, Outcome] = {}
        with self.model_lock:
            self.busy = True
            try:
                with self._store_lock():
                    accepted = self._validate(batch, outcomes)
                    if accepted:
                        self._forget(accepted, outcomes)
            except ExpungeError as err:  # the lock or the store: the whole batch fails
                for row in batch:
                    outcomes.setdefault(row.request_key,
                                        (FAILED, None, http_status(err), str(err), None))
            finally:
                self.busy = False
        self.queue.finish(outcomes)
        self.batches += 1
        return outcomes

    def _validate(self, batch: list[QueuedRequest], outcomes: dict[str, Outcome]
                  ) -> list[tuple[QueuedRequest, np.ndarray]]:
        """The requests that can be forgotten now, each with its validated ids."""
        accepted: list[tuple[QueuedRequest, np.ndarray]] = []
        claimed: dict[int, str] = {}
        for row in batch:
            try:
                if row.subject_hash is not None:
                    ids: Any = self.strategy.subject_ids(row.subject_hash)
                else:
                    ids = row.ids
                request = self.strategy.validate_request(ids)
                taken = [int(i) for i in request.tolist() if int(i) in claimed]
                if taken:
                    raise AlreadyForgottenError(
                        f"Ids {taken[:10]} are also in request {claimed[taken[0]]!r} of the same "
                        "batch, which forgets them; drop them from this request.")
            except ExpungeError as err:
                outcomes[row.request_key] = (FAILED, None, http_status(err), str(err), None)
                continue
            claimed.update({int(i): row.request_key for i in request.tolist()})
            accepted.append((row, request))
        return accepted

    def _forget(self, accepted: list[tuple[QueuedRequest, np.ndarray]],
                outcomes: dict[str, Outcome]) -> None:
        ids = np.sort(np.concatenate([request for _, request in accepted]))
        rows = [row for row, _ in accepted]
        details: dict[str, Any] = {"service_requests": [r.request_key for r in rows]}
        subjects = [r for r in rows if r.subject_hash is not None]
        if subjects:
            details["subject_hashes"] = [r.subject_hash for r in subjects]
            details["subject_commitments"] = [r.subject_commitment for r in subjects]
        if len(rows) == 1:
            tag = rows[0].tag
        else:
            tag = f"batch of {len(rows)} service requests"
            details["service_tags"] = [r.tag for r in rows]
        report = self.strategy._apply_forget(ids, tag=tag, details=details)
        assert report.receipt is not None
        result = report_result(report, report.receipt)
        for row in rows:
            outcomes[row.request_key] = (DONE, report.seq, 200, None, result)

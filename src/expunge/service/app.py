"""The HTTP API of ``expunge serve`` (FastAPI; optional extra ``expunge[service]``).

Endpoints (every one needs ``Authorization: Bearer <token>``; 401 otherwise):

``POST /v1/forget``   ``{"ids": [...]}`` or ``{"subject": "..."}`` (+ ``tag``,
                      ``request_key``, ``subject_nonce``, ``wait``, ``timeout``): the request
                      is queued durably, then (``wait``, the default) answered with the
                      report and its signed receipt once processed (200), or 202 with its
                      status if it takes longer than ``timeout``; a failed request gets 409
                      (already forgotten), 404 (unknown subject), 422 (invalid) with the reason.
``GET  /v1/requests/{key}``  the status or outcome of a request.
``POST /v1/preview``  the same body: what the request would cost (``m.preview``).
``GET  /v1/ledger``   ledger entries (``?after=SEQ&limit=N``) and the head.
``GET  /v1/receipts/{seq}``  the signed receipt of ledger entry ``seq``.
``GET  /v1/public-key``  the PEM key that verifies receipts.
``GET  /v1/health``   liveness, queue counts, the store's strategy and ledger length.

Bodies that do not validate get 422 with the reason (pydantic's, or expunge's own message).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from expunge.exceptions import ExpungeError
from expunge.operations.receipts import new_nonce, subject_commitment
from expunge.operations.subjects import normalise_subject
from expunge.service._processor import Processor, http_status
from expunge.service._queue import FINAL, RequestQueue
from expunge.service._tokens import token_matches
from expunge.strategies.base import UnlearningStrategy

_KEY = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_INT64 = (-(2**63), 2**63 - 1)


class ForgetBody(BaseModel):
    """A deletion request: sample ``ids`` or one ``subject`` key, not both."""

    model_config = ConfigDict(extra="forbid")

    ids: list[int] | None = Field(default=None, min_length=1, max_length=10_000_000)
    subject: str | int | None = None
    tag: str | None = Field(default=None, max_length=500)
    request_key: str | None = Field(default=None, description="idempotency key")
    subject_nonce: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    wait: bool = True
    timeout: float = Field(default=60.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _one_target(self) -> ForgetBody:
        if (self.ids is None) == (self.subject is None):
            raise ValueError("give exactly one of 'ids' (a list of sample ids) or 'subject'")
        if self.ids is not None:
            if len(set(self.ids)) != len(self.ids):
                raise ValueError("'ids' lists an id more than once; pass each id once")
            bad = [i for i in self.ids if not _INT64[0] <= i <= _INT64[1]]
            if bad:
                raise ValueError(f"ids {bad[:5]} do not fit in 64 bits")
        if isinstance(self.subject, bool) or self.subject == "":
            raise ValueError("'subject' must be a non-empty string or an int")
        if self.request_key is not None and not _KEY.match(self.request_key):
            raise ValueError("'request_key' must be 1-128 characters from A-Z a-z 0-9 _ . : -")
        if self.subject_nonce is not None and self.subject is None:
            raise ValueError("'subject_nonce' goes with 'subject'")
        return self


class PreviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[int] | None = Field(default=None, min_length=1)
    subject: str | int | None = None

    @model_validator(mode="after")
    def _one_target(self) -> PreviewBody:
        if (self.ids is None) == (self.subject is None):
            raise ValueError("give exactly one of 'ids' or 'subject'")
        return self


class _Waiters:
    """asyncio events the worker thread sets when requests finish."""

    def __init__(self) -> None:
        self._events: dict[str, list[asyncio.Event]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def register(self, key: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(key, []).append(event)
        return event

    def discard(self, key: str, event: asyncio.Event) -> None:
        events = self._events.get(key, [])
        if event in events:
            events.remove(event)
        if not events:
            self._events.pop(key, None)

    def notify(self, keys: list[str]) -> None:  # from the worker thread
        loop = self.loop
        if loop is None:
            return
        loop.call_soon_threadsafe(self._set, keys)

    def _set(self, keys: list[str]) -> None:
        for key in keys:
            for event in self._events.get(key, []):
                event.set()


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, **extra})


def create_app(strategy: UnlearningStrategy, tokens: list[bytes], queue_path: str | Path, *,
               batch_window: float = 0.0, max_batch: int = 1000,
               lock_timeout: float | None = None) -> FastAPI:
    """The service for an opened store. The worker thread runs while the app does
    (FastAPI's lifespan); the queue lives in ``queue_path``."""
    queue = RequestQueue(queue_path)
    waiters = _Waiters()
    processor = Processor(strategy, queue, batch_window=batch_window, max_batch=max_batch,
                          lock_timeout=lock_timeout, on_finished=waiters.notify)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        waiters.loop = asyncio.get_running_loop()
        await run_in_threadpool(processor.start)
        try:
            yield
        finally:
            await run_in_threadpool(processor.stop)
            queue.close()

    app = FastAPI(title="expunge", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.processor = processor
    app.state.queue = queue

    def authorised(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token_matches(token.strip(), tokens):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorised)]

    def answer(row: Any, nonce: str | None = None) -> JSONResponse:
        content = row.public()
        if nonce is not None:
            content["subject_nonce"] = nonce
        if row.status == "failed":
            return JSONResponse(status_code=row.http_status or 500, content=content)
        if row.status in FINAL:
            return JSONResponse(status_code=200, content=content)
        content["location"] = f"/v1/requests/{row.request_key}"
        return JSONResponse(status_code=202, content=content)

    @app.post("/v1/forget", dependencies=auth)
    async def forget(body: ForgetBody) -> JSONResponse:
        key = body.request_key or uuid.uuid4().hex
        nonce = subject_hash = commitment = None
        if body.subject is not None:
            try:
                subject = normalise_subject(body.subject)
            except ExpungeError as err:
                return _error(422, str(err))
            nonce = body.subject_nonce or new_nonce()
            subject_hash = await run_in_threadpool(strategy.subject_hash, subject)
            commitment = subject_commitment(subject, nonce)
        event = waiters.register(key)
        try:
            row, created = await run_in_threadpool(
                queue.submit, key, ids=body.ids, subject_hash=subject_hash,
                subject_commitment=commitment, tag=body.tag)
            if not created:
                nonce = None  # the first submission got it; it is not kept
            else:
                processor.wake()
            if body.wait and row.status not in FINAL:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=body.timeout)
                latest = await run_in_threadpool(queue.get, key)
                row = latest if latest is not None else row
        finally:
            waiters.discard(key, event)
        return answer(row, nonce)

    @app.get("/v1/requests/{key}", dependencies=auth)
    async def request_status(key: str) -> JSONResponse:
        row = await run_in_threadpool(queue.get, key) if _KEY.match(key) else None
        if row is None:
            return _error(404, f"no request with key {key!r}")
        return answer(row)

    @app.post("/v1/preview", dependencies=auth)
    def preview(body: PreviewBody) -> JSONResponse:
        try:
            with processor.model_lock:
                result = strategy.preview(body.ids, subject=body.subject)
        except ExpungeError as err:
            return _error(http_status(err), str(err))
        return JSONResponse(content=result.to_dict())

    @app.get("/v1/ledger", dependencies=auth)
    def ledger(after: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=10_000)
               ) -> dict[str, Any]:
        with processor.model_lock:
            entries = [e.to_dict() for e in strategy.ledger.entries() if e.seq > after][:limit]
            return {"entries": entries, "head": strategy.ledger.head,
                    "count": len(strategy.ledger)}

    @app.get("/v1/receipts/{seq}", dependencies=auth)
    def receipt(seq: int) -> JSONResponse:
        try:
            with processor.model_lock:
                return JSONResponse(content=strategy.receipt(seq))
        except ExpungeError as err:
            return _error(404, str(err))

    @app.get("/v1/public-key", dependencies=auth)
    def public_key() -> PlainTextResponse:
        with processor.model_lock:
            pem = strategy.public_key
        return PlainTextResponse(pem.decode("ascii"), media_type="application/x-pem-file")

    @app.get("/v1/health", dependencies=auth)
    async def health() -> dict[str, Any]:
        counts = await run_in_threadpool(queue.counts)
        return {"status": "ok", "strategy": strategy.name, "guarantee": strategy.guarantee,
                "queue": counts, "processing": processor.busy,
                "batches_processed": processor.batches, "batch_window": processor.batch_window}

    return app


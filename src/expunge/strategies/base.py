"""UnlearningStrategy: the public verbs, shared by every strategy by construction.

The base class owns everything that must behave the same for every strategy: parameter
validation, request validation (errors change nothing), the store manifest, the retained
training data, the commit of state + ledger row in one transaction, the purge, and the
fingerprint. A subclass supplies three hooks that build a new :class:`FittedModel`
without mutating anything live:

* ``_fit(data, store, progress) -> FittedModel``
* ``_forget(fitted, ids, retained, store, progress) -> (FittedModel, ForgetStats)``
* ``_restore(state, store) -> FittedModel``

The live model is swapped only after the commit, so an exception anywhere before it
leaves the strategy, the store and the ledger exactly as they were. Every mutating verb runs
under the store's write lock and first re-reads the committed head: if another process
committed since this handle loaded its state, the handle reloads it (and re-validates the
request) before planning, so a request never commits on top of a state it did not read.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import logging
import math
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from expunge._imports import import_callable, is_import_string
from expunge._progress import Progress
from expunge._validation import Constraint, validate_params
from expunge.data import IndexedDataset, Transform
from expunge.exceptions import (
    AlreadyForgottenError,
    DatasetError,
    InvalidParameterError,
    InvalidRequestError,
    LedgerIntegrityError,
    NotFittedError,
    StoreIntegrityError,
    StoreMismatchError,
    UnknownModelError,
    UnknownSampleError,
    UnknownSubjectError,
)
from expunge.export import ExportedClassifier
from expunge.store import CACHE_PREFIX as CACHE_PREFIX  # evaluation and PUMA name caches with it
from expunge.store import Head, Ledger, LedgerEntry, Store, open_store, verify_store
from expunge.strategies._checks import (
    check_finite,
    check_retained,
    check_store_param,
    check_training_data,
    parse_request,
)
from expunge.strategies._manifest import prepare_manifest
from expunge.strategies._params import check_overrides
from expunge.strategies._params import jsonable_param as _jsonable_param
from expunge.strategies._stored_data import (
    check_training_ids,
    read_stored_data,
    training_ids_digest,
    write_training_data,
)

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

Guarantee = Literal["exact", "certified", "approximate"]
#: what a strategy may promise: bit-for-bit retraining, a certified (epsilon, delta)
#: bound, or an approximation measured by the evaluation
GUARANTEES: tuple[str, ...] = ("exact", "certified", "approximate")
#: 2: per-store key, keyed digests of every file in the state, state digests in the ledger,
#: a chain that starts at the store's genesis (stores of format 1 are refused, not migrated)
FORMAT_VERSION = 2

_LOG = logging.getLogger("expunge")


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ForgetStats:
    """What a strategy's ``_forget`` did, before the base class records it."""

    samples_retrained: int = 0
    sample_passes: int = 0
    submodels_retrained: tuple[int, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ForgetReport:
    """The outcome of one ``forget`` request, as recorded in the ledger.

    Attributes:
        request_id: the ledger's id for this request.
        seq: its position in the ledger (1 = the fit).
        ids: the forgotten sample ids.
        seconds: wall-clock time of the whole request (validation to purge).
        samples_retrained: distinct samples that were trained on again.
        sample_passes: forward+backward passes spent retraining (samples x epochs,
            summed over every retrained block); the cost unit of SISA and ARCANE.
        submodels_retrained: which sub-models (shards, classes) were retrained.
        purged: store entries deleted because they were computed from a forgotten id.
        guarantee: ``"exact"`` or ``"approximate"``.
        fingerprint_before / fingerprint_after: model fingerprints around the request.
        details: strategy-specific facts (first retrained block per sub-model, PUMA's
            solver residual and number of re-weighted samples, ...).
        receipt: the signed receipt of the request (``expunge.verify_receipt(receipt,
            m.public_key)``; see docs/operations.md).
        subject_nonce: for ``forget_subject``, the nonce that lets the data subject check
            the receipt concerns them (give it to them; the store does not keep it).
    """

    request_id: str
    seq: int
    ids: list[int]
    seconds: float
    samples_retrained: int
    sample_passes: int
    submodels_retrained: list[int]
    purged: list[str]
    guarantee: str
    fingerprint_before: str
    fingerprint_after: str
    details: dict[str, Any]
    receipt: dict[str, Any] | None = None
    subject_nonce: str | None = None

    @classmethod
    def from_entry(cls, entry: LedgerEntry) -> ForgetReport:
        return cls(
            request_id=entry.request_id, seq=entry.seq, ids=list(entry.ids),
            seconds=entry.seconds, samples_retrained=entry.samples_retrained,
            sample_passes=entry.sample_passes,
            submodels_retrained=list(entry.submodels_retrained), purged=list(entry.purged),
            guarantee=entry.guarantee, fingerprint_before=entry.fingerprint_before or "",
            fingerprint_after=entry.fingerprint_after, details=dict(entry.details),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class FittedModel(ABC):
    """The in-memory, immutable result of fitting: what predicts and what is fingerprinted.

    Besides the abstract methods, every fitted model has the attributes below (defaults
    here; a subclass sets them in its constructor) and :meth:`single_module`: the base
    class, the evaluation and the benchmarks read them, never through ``getattr``.
    """

    #: forward+backward passes spent building this model (recorded by a fit's ledger entry)
    sample_passes: int = 0
    #: facts about how it was built (e.g. precompute seconds): the finite scalars among them
    #: are recorded in the fit's ledger entry (:meth:`fit_details`)
    info: Mapping[str, Any] = MappingProxyType({})

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """JSON-able description of the committed state (blob names, counts...)."""

    @abstractmethod
    def live_blobs(self) -> set[str]:
        """Store blobs this model needs; everything else in the store is garbage."""

    @abstractmethod
    def learned_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every learned tensor, in a fixed order (for :meth:`fingerprint`)."""

    @abstractmethod
    def predict_proba(self, X: torch.Tensor) -> torch.Tensor:
        """Class probabilities, shape ``(n, n_classes)``."""

    def single_module(self) -> nn.Module | None:
        """The network when the model is exactly one (Retrain, PUMA), else ``None``
        (ensembles, density models): what the evaluation's parameter distance compares."""
        return None

    def fit_details(self) -> dict[str, Any]:
        """Facts about the fit worth keeping in its ledger entry (e.g. precompute seconds)."""
        info = self.info

        def scalar(value: Any) -> bool:
            if isinstance(value, float):
                return math.isfinite(value)
            return isinstance(value, (bool, int, str))

        return {k: v for k, v in info.items() if scalar(v)}

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for name, tensor in self.learned_tensors():
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()


# --------------------------------------------------------------------------- helpers
def _as_inputs(X: Any, transform: Transform) -> torch.Tensor:
    """The model inputs for raw ``X``: the fitted input ``transform`` applied to it.

    ``X`` is what the training data stored (uint8 pixels, say), as a tensor, an array or an
    :class:`IndexedDataset`, whose own transform must then be the fitted one.
    """
    if isinstance(X, IndexedDataset):
        if X.transform != transform:
            raise DatasetError(
                f"This dataset's input transform is {X.transform!r} but the model was fitted "
                f"with {transform!r}: the same inputs would be fed differently. Pass "
                f"data.with_transform({transform!r}), or the raw inputs (data.X)."
            )
        chunks = list(X.iter_stored())
        raw = torch.cat(chunks) if chunks else X.gather(np.arange(0))
    elif isinstance(X, torch.Tensor):
        raw = X.detach().cpu()
    else:
        try:
            array = np.asarray(X)
            if array.dtype.kind not in "biuf":
                raise TypeError(f"dtype {array.dtype}")
            raw = torch.from_numpy(np.ascontiguousarray(array))
        except (TypeError, ValueError) as err:
            raise DatasetError(f"X must be a numeric array or tensor ({err}).") from None
    if raw.ndim == 0:
        raise DatasetError("X must have a sample dimension; got a scalar.")
    check_finite(raw, "X")
    inputs = transform(raw)
    check_finite(inputs, "X after the input transform")
    return inputs


# --------------------------------------------------------------------------- the base
class UnlearningStrategy(ABC):
    """A model trained on an :class:`IndexedDataset` that can forget samples by id.

    Subclasses set ``name``, ``guarantee``, ``summary`` and ``_parameter_constraints`` and
    implement ``_fit``, ``_forget`` and ``_restore``. Constructor arguments are stored
    as given (scikit-learn style); ``fit`` validates them.
    """

    name: ClassVar[str]
    guarantee: ClassVar[Guarantee]
    summary: ClassVar[str] = ""
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}
    #: parameters that do not change what is computed (not recorded in the manifest)
    _runtime_params: ClassVar[frozenset[str]] = frozenset({"store", "show_progress"})
    #: recorded parameters that act only when a request is computed, never on what ``fit``
    #: stored (PUMA's ``eta``): ``expunge.open`` may set them, and every ``forget`` records
    #: the values it used in its ledger entry (``details["request_params"]``)
    _request_params: ClassVar[frozenset[str]] = frozenset()

    store: str | Path | None
    show_progress: bool

    # -------------------------------------------------------------- parameters
    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        """Small, fast parameters for the shared contract tests (sklearn's _get_test_params)."""
        return {}

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [p.name for p in signature.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    @classmethod
    def runtime_param_names(cls) -> frozenset[str]:
        """Parameters that choose where and how visibly the work runs, never what is
        computed: not recorded in the manifest, changeable on ``expunge.open`` and on a
        fitted strategy (:meth:`set_params`). Declared once per class, in
        ``_runtime_params`` (the base's ``store``, ``show_progress``; the exact engine adds
        its executor parameters)."""
        return cls._runtime_params

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, as given (scikit-learn's ``get_params``)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Self:
        """Set constructor parameters by name and return ``self`` (scikit-learn semantics:
        values are validated when :meth:`fit` runs).

        A fitted strategy's committed state was computed with its recorded parameters, so
        once fitted only runtime parameters other than ``store`` (``show_progress``, the
        executor's) and request parameters (PUMA's ``eta``) may change; use :meth:`clone`
        for a new, unfitted strategy with other parameters.

        Raises:
            InvalidParameterError: a name the constructor does not take, or a recorded
                parameter (or ``store``) of a fitted strategy; nothing is set then.
        """
        names = self._param_names()
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise InvalidParameterError(
                f"{type(self).__name__} has no parameter(s) {unknown}; its parameters are: "
                f"{', '.join(names)}."
            )
        if self.is_fitted:
            changeable = (self._runtime_params - {"store"}) | self._request_params
            fixed = sorted(k for k, v in params.items() if k not in changeable
                           and _jsonable_param(v) != _jsonable_param(getattr(self, k)))
            if fixed:
                raise InvalidParameterError(
                    f"{type(self).__name__} is fitted, and its state was computed with "
                    f"{', '.join(f'{k}={getattr(self, k)!r}' for k in fixed)}: these cannot "
                    "change now. Use strategy.clone().set_params(...) for a new strategy to "
                    f"fit; a fitted one may change {', '.join(sorted(changeable))}."
                )
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def clone(self) -> Self:
        """A new, unfitted strategy with the same parameters (scikit-learn's ``clone``):
        parameter values are deep-copied (functions and classes are shared), nothing fitted,
        no store handle, data or cache is carried over. The clone has the same ``store``
        parameter: set another one (``clone().set_params(store=...)``) before fitting it
        alongside the original."""
        params = {k: v if callable(v) else copy.deepcopy(v) for k, v in self.get_params().items()}
        return type(self)(**params)

    def recorded_params(self) -> dict[str, Any]:
        """The parameters as the store's manifest records them (JSON; runtime parameters
        left out, callables by qualified name, arrays by digest)."""
        return {k: _jsonable_param(v) for k, v in self.get_params().items()
                if k not in self._runtime_params}

    def _validate_params(self) -> None:
        validate_params(self._parameter_constraints, self.get_params(), type(self).__name__)
        self._check_params()

    def _check_params(self) -> None:
        """Cross-parameter checks; override and raise InvalidParameterError."""

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({shown})"

    # ----------------------------------------------------------------- hooks
    @abstractmethod
    def _fit(self, data: IndexedDataset, store: Store, progress: Progress) -> FittedModel: ...

    @abstractmethod
    def _forget(
        self, fitted: FittedModel, ids: np.ndarray, retained: IndexedDataset,
        store: Store, progress: Progress,
    ) -> tuple[FittedModel, ForgetStats]: ...

    @abstractmethod
    def _restore(self, state: dict[str, Any], store: Store) -> FittedModel: ...

    # ------------------------------------------------------------------ state
    @property
    def is_fitted(self) -> bool:
        return getattr(self, "fitted_", None) is not None

    def _require_fitted(self, verb: str) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' before "
                f"'{verb}'."
            )

    @property
    def ledger(self) -> Ledger:
        """The request history (read-only). Each entry is a :class:`LedgerEntry`."""
        self._require_fitted("ledger")
        return self.store_.ledger

    @property
    def training_data(self) -> IndexedDataset:
        """The retained training data (the original data minus everything forgotten)."""
        self._require_fitted("training_data")
        return self.data_

    @property
    def input_transform(self) -> Transform:
        """The input transform the model was fitted with (recorded in the store):
        ``predict_proba`` applies it to raw inputs, as training did per batch."""
        self._require_fitted("input_transform")
        return self.data_.transform

    @property
    def forgotten_ids(self) -> np.ndarray:
        """Every id forgotten so far, sorted."""
        self._require_fitted("forgotten_ids")
        return np.array(sorted(self._forgotten), dtype=np.int64)

    # ------------------------------------------------------------------- fit
    def fit(self, dataset: IndexedDataset, *, timeout: float | None = None
            ) -> UnlearningStrategy:
        """Train on ``dataset`` and record the fit as the ledger's first entry.

        With ``store=PATH`` everything is persisted there, under the store's write lock.
        Fitting again into a store with the same parameters and data resumes (finished
        checkpoints are reused); a store whose fit never committed (interrupted, or refused
        a data-dependent parameter) is taken over by any parameters; a committed store with
        other parameters or data raises :class:`StoreMismatchError`.

        Args:
            dataset: the training data (finite inputs, samples of at least 2 classes).
            timeout: seconds to wait for another process's request on the same store
                (``None``: wait, saying so after half a second).

        Returns:
            ``self``.
        """
        self._validate_params()
        model = getattr(self, "model", None)
        if is_import_string(model):  # fail before anything is written, naming the fix
            import_callable(str(model), "model", UnknownModelError)
        check_store_param(self.store)
        check_training_data(dataset)
        self._check_dataset(dataset)
        store = open_store(self.store, create=True)
        try:
            with store.writing(timeout=timeout, on_wait=self._lock_notice(), operation="fit"):
                store.recover()
                store.ensure_key()
                self._prepare_store(store, dataset)
                expected = store.committed_head()
                started = time.perf_counter()
                progress = Progress(bool(self.show_progress))
                positions = np.arange(len(dataset), dtype=np.int64)
                ring = self._keyring_for(store)
                ring.signing_key()  # a bad key fails now, before anything is trained
                subject_hashes = None
                if dataset.subjects is not None:
                    from expunge.store.subjects import hash_subjects

                    subject_hashes = hash_subjects(dataset.subjects, store)
                data_blobs = self._write_data(store, dataset, positions, subject_hashes)
                with progress.running():
                    fitted = self._fit(dataset, store, progress)
                state = {"data": data_blobs, "model": fitted.state()}
                live = fitted.live_blobs() | set(data_blobs)
                purged = store.collect_garbage(live)
                manifest = store.read_manifest() or {}
                entry = store.commit(state, {
                    "kind": "fit", "strategy": self.name, "guarantee": self.guarantee,
                    "ids": [], "fingerprint_before": None,
                    "fingerprint_after": fitted.fingerprint(),
                    "samples_retrained": len(dataset),
                    "sample_passes": self._fit_passes(fitted),
                    "submodels_retrained": [], "seconds": time.perf_counter() - started,
                    "purged": purged,
                    "details": {**fitted.fit_details(),
                                "dataset_hmac": manifest.get("dataset", {}).get("hmac", ""),
                                "n_samples": len(dataset),
                                "ids_digest": training_ids_digest(store, dataset.ids)},
                }, live=live, expected=expected)
                self._install(store, dataset, fitted, {}, positions, subject_hashes)
                self._issue_receipt(entry)
        except BaseException:
            if getattr(self, "store_", None) is not store:
                store.close()
            raise
        return self

    def _fit_passes(self, fitted: FittedModel) -> int:
        return int(fitted.sample_passes)

    def _check_dataset(self, dataset: IndexedDataset) -> None:
        """Strategy-specific checks of the training data; override to refuse."""

    def _install(self, store: Store, data: IndexedDataset, fitted: FittedModel,
                 forgotten: dict[int, int], positions: np.ndarray,
                 subject_hashes: np.ndarray | None = None) -> None:
        old = getattr(self, "store_", None)
        if old is not None and old is not store:
            old.close()
        self.store_ = store
        self.data_ = data
        # each row's position in the data ``fit`` saw: the stored buckets keep row order by it
        self._data_positions = positions
        # each row's keyed subject hash (uint8 (n, 32)), or None: data without subjects
        self._subject_hashes = subject_hashes
        self.fitted_ = fitted
        self._forgotten = forgotten
        #: the committed head this handle's state is (a request reloads if the store moved on)
        self._head: Head = store.loaded_head

    def _prepare_store(self, store: Store, dataset: IndexedDataset) -> None:
        """Write the manifest, or check the existing one (see :func:`prepare_manifest`)."""
        prepare_manifest(store, self.name, type(self).__name__, self.recorded_params(),
                         dataset, FORMAT_VERSION)

    @staticmethod
    def _write_data(store: Store, data: IndexedDataset, positions: np.ndarray,
                    subject_hashes: np.ndarray | None = None,
                    previous_ids: np.ndarray | None = None) -> list[str]:
        """Write the retained training data in buckets; return their blob names.

        Only buckets whose ids changed are written (see :mod:`expunge.strategies._stored_data`);
        names derive from the keyed dataset fingerprint (in the manifest) and the ids. With
        ``previous_ids`` (a request: the committed data's ids) a bucket that lost rows is
        rewritten in place where the store can.
        """
        return write_training_data(store, data, positions, UnlearningStrategy._data_key(store),
                                   subject_hashes, previous_ids)

    @staticmethod
    def _data_key(store: Store) -> str:
        """What the training-data blob names derive from: the keyed dataset fingerprint."""
        return str((store.read_manifest() or {}).get("dataset", {}).get("hmac", ""))

    # ------------------------------------------------------------ concurrency
    def _lock_notice(self) -> Callable[[str], None]:
        """How a request waiting for another process's lock says so."""
        def notice(message: str) -> None:
            _LOG.info("%s", message)
            if self.show_progress:
                print(f"expunge: {message}", file=sys.stderr, flush=True)
        return notice

    @contextlib.contextmanager
    def locked(self, *, timeout: float | None = None) -> Iterator[UnlearningStrategy]:
        """Hold the store's write lock across several calls, e.g. a service that processes
        requests one at a time: ``with strategy.locked(timeout=10): strategy.forget(...)``.

        The handle is brought up to the committed state on entry. Other processes' requests
        wait (or time out) until the block ends; this handle's own calls re-enter the lock.

        Raises:
            StoreLockedError: another process held the lock for more than ``timeout`` s.
        """
        self._require_fitted("locked")
        with self.store_.writing(timeout=timeout, on_wait=self._lock_notice(),
                                 operation="locked"):
            self.reload()
            yield self

    def reload(self) -> bool:
        """Reload the committed state if another process changed the store since this
        handle read it; return whether it did. Requests and :meth:`verify` call it first.

        Cost: nothing when the store did not change; else a reopen (reading the data).
        """
        self._require_fitted("reload")
        store = self.store_
        with store.snapshot():
            if store.committed_head() == self._head:
                return False
            state = store.read_state()
            if state is None:
                raise StoreIntegrityError(
                    f"The store {store.location!r} lost its committed state: the database was "
                    "emptied outside expunge."
                )
            self._load_committed(store, state)
        return True

    def _load_committed(self, store: Store, state: dict[str, Any]) -> None:
        """Install the committed ``state`` (read inside ``store.snapshot()``)."""
        data, positions, subject_hashes = read_stored_data(store, state["data"])
        fitted = self._restore(state["model"], store)
        self._install(store, data, fitted, store.ledger.forgotten(), positions, subject_hashes)

    # ---------------------------------------------------------------- forget
    def _check_request(self, request: np.ndarray) -> None:
        """Refuse ids already forgotten or not in the retained data (current state)."""
        already = [int(i) for i in request.tolist() if int(i) in self._forgotten]
        if already:
            by = sorted({self._forgotten[i] for i in already})
            raise AlreadyForgottenError(
                f"Ids {already[:10]} were already forgotten by request(s) "
                f"{', '.join(f'#{s}' for s in by)}. Each id is forgotten once so the ledger has "
                "one entry per deletion; drop them from this request."
            )
        present = self.data_.contains(request)
        if not present.all():
            missing = request[~present][:10].tolist()
            raise UnknownSampleError(
                f"Cannot forget ids {missing}: not in the training set "
                f"({len(self.data_)} retained samples, ids {self.data_._id_range()})."
            )

    def _check_retained(self, retained: IndexedDataset) -> None:
        """Refuse a request that would leave no data, or data of one class, which ``fit``
        refuses (nothing is written); a strategy may refuse more in ``_forget``."""
        check_retained(retained, len(self.data_))

    def validate_request(self, ids: Iterable[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """The ids ``forget(ids)`` would accept on this handle's state, sorted; raises what
        ``forget`` raises (and changes nothing). Checks requests before batching them."""
        self._require_fitted("validate_request")
        request = parse_request(ids)
        self._check_request(request)
        return request

    def forget(
        self, ids: Iterable[int] | np.ndarray | torch.Tensor, *, tag: str | None = None,
        timeout: float | None = None,
    ) -> ForgetReport:
        """Remove the influence of the samples ``ids`` and record the request.

        Runs under the store's write lock; if another process committed since this handle
        read the store, the handle reloads first and the ids are checked against that state.

        Args:
            ids: sample ids (integers) to forget, each in the retained training data.
            tag: optional free text stored with the ledger entry (a ticket number, say).
            timeout: seconds to wait for another process's request on the same store
                (``None``: wait, saying so after half a second).

        Returns:
            A :class:`ForgetReport`. The request is in the ledger, and every store entry
            computed from these ids is deleted, before this returns.

        Raises:
            NotFittedError, InvalidRequestError, UnknownSampleError, AlreadyForgottenError,
            StoreLockedError: and nothing changes.
        """
        self._require_fitted("forget")
        return self._apply_forget(ids, tag=tag, timeout=timeout)

    def forget_subject(self, subject: str | int, *, tag: str | None = None,
                       timeout: float | None = None) -> ForgetReport:
        """Forget every retained sample of one subject (a person), as one request.

        ``subject`` is a key given in ``IndexedDataset(..., subjects=...)``. The store never
        saw it in clear: it is hashed with the store's secret, and the ledger entry and the
        receipt record that hash. The report's ``subject_nonce`` lets the subject check that
        the receipt concerns them (``verify_receipt(..., subject=, subject_nonce=)``).

        Raises:
            UnknownSubjectError: no retained sample has this subject (it never had one, or
                every sample of it was forgotten already; the message says which).
            InvalidRequestError: ``subject`` is not a non-empty string or an int.
        """
        self._require_fitted("forget_subject")
        from expunge.store.receipts import new_nonce, subject_commitment
        from expunge.store.subjects import normalise_subject

        key = normalise_subject(subject)
        subject_hash = self.subject_hash(key)
        nonce = new_nonce()
        # the subject's ids are looked up under the lock, on the state the request builds on
        report = self._apply_forget(lambda: self.subject_ids(subject_hash), tag=tag,
                                    timeout=timeout, details={
            "subject_hashes": [subject_hash],
            "subject_commitments": [subject_commitment(key, nonce)],
        })
        return ForgetReport(**{**report.__dict__, "subject_nonce": nonce})

    def subject_hash(self, subject: str | int) -> str:
        """The keyed hash (hex) this store records for the subject key ``subject``.

        Only whoever holds the store's secret can compute it: that is how an operator checks
        which subject a ledger entry concerns, without the entry revealing it."""
        from expunge.store.subjects import normalise_subject, subject_digest

        self._require_fitted("subject_hash")
        return subject_digest(self.store_, normalise_subject(subject))

    def subject_ids(self, subject_hash: str) -> np.ndarray:
        """The retained ids whose subject hash is ``subject_hash`` (hex), sorted.

        Raises :class:`UnknownSubjectError` when there are none, saying whether an earlier
        request forgot them.
        """
        from expunge.store.subjects import rows_of

        self._require_fitted("subject_ids")
        hashes = self._subject_hashes
        ids = np.sort(self.data_.ids[rows_of(hashes, subject_hash)]) if hashes is not None \
            else np.empty(0, np.int64)
        if ids.size:
            return ids
        earlier = [e.seq for e in self.ledger.entries("forget")
                   if subject_hash in (e.details or {}).get("subject_hashes", [])]
        if earlier:
            raise UnknownSubjectError(
                f"Every sample of this subject was already forgotten, by request(s) "
                f"{', '.join(f'#{s}' for s in earlier)}; nothing is left to forget."
            )
        if hashes is None:
            raise UnknownSubjectError(
                "This store was fitted without subject keys: fit on "
                "IndexedDataset(X, y, ids, subjects=[...]) to forget by subject, or forget ids."
            )
        raise UnknownSubjectError(
            "No retained sample belongs to this subject (keys are compared exactly, after "
            "turning ints into text): check the key, or forget by ids."
        )

    def _apply_forget(self, ids: Iterable[int] | np.ndarray | torch.Tensor
                      | Callable[[], np.ndarray], *, tag: str | None,
                      timeout: float | None = None,
                      details: dict[str, Any] | None = None) -> ForgetReport:
        """``forget`` with extra ledger ``details`` (subject hashes, service request keys).

        ``ids`` may be a function returning them, called under the store's lock after the
        handle has reloaded (a subject's ids are those of the state the request builds on).
        """
        started = time.perf_counter()
        request = None if callable(ids) else parse_request(ids)
        store = self.store_
        self._keyring_for(store).signing_key()  # a bad key fails before anything changes
        with store.writing(timeout=timeout, on_wait=self._lock_notice(), operation="forget"):
            store.finish_rewrites()  # a previous request's, interrupted by a disk error
            self.reload()
            if request is None:  # resolved on the state this request will build on
                request = parse_request(ids())  # type: ignore[operator]
            self._check_request(request)
            old = self.fitted_
            kept = ~np.isin(self.data_.ids, request)  # the rows of D.drop(request), in order
            retained, positions = self.data_.where(kept), self._data_positions[kept]
            self._check_retained(retained)
            progress = Progress(bool(self.show_progress))
            before = old.fingerprint()
            with progress.running():
                fitted, stats = self._forget(old, request, retained, store, progress)
            subject_hashes = None if self._subject_hashes is None else self._subject_hashes[kept]
            data_blobs = self._write_data(store, retained, positions, subject_hashes,
                                          self.data_.ids)
            live = fitted.live_blobs() | set(data_blobs)
            purged = sorted(store.list_blobs() - live)
            recorded = {**stats.details, **(details or {})}
            if self._request_params:
                recorded["request_params"] = {k: _jsonable_param(getattr(self, k))
                                              for k in sorted(self._request_params)}
            if tag is not None:
                recorded["tag"] = str(tag)
            entry = store.commit({"data": data_blobs, "model": fitted.state()}, {
                "kind": "forget", "strategy": self.name, "guarantee": self._guarantee_now(),
                "ids": request.tolist(), "fingerprint_before": before,
                "fingerprint_after": fitted.fingerprint(),
                "samples_retrained": stats.samples_retrained,
                "sample_passes": stats.sample_passes,
                "submodels_retrained": list(stats.submodels_retrained),
                "seconds": time.perf_counter() - started, "purged": purged, "details": recorded,
            }, live=live, expected=self._head)
            # the request has happened: swap the live model, then delete what it no longer needs
            forgotten = dict(self._forgotten)
            forgotten.update({int(i): entry.seq for i in request.tolist()})
            self._install(store, retained, fitted, forgotten, positions, subject_hashes)
            store.collect_garbage(live)
            receipt = self._issue_receipt(entry)
        seconds = time.perf_counter() - started
        report = ForgetReport.from_entry(entry)
        return ForgetReport(**{**report.__dict__, "seconds": seconds, "receipt": receipt})

    def _guarantee_now(self) -> str:
        """The guarantee recorded in the ledger (a subclass may weaken it by setting)."""
        return self.guarantee

    # --------------------------------------------------------------- predict
    def predict_proba(self, X: Any) -> torch.Tensor:
        """Class probabilities for inputs ``X`` (tensor, array or IndexedDataset)."""
        self._require_fitted("predict_proba")
        return self.fitted_.predict_proba(_as_inputs(X, self.input_transform))

    def predict(self, X: Any) -> torch.Tensor:
        """Predicted class per input (ties go to the lowest class)."""
        return self.predict_proba(X).argmax(dim=1)

    def score(self, X: Any, y: Any = None) -> float:
        """Accuracy on an IndexedDataset, or on inputs ``X`` with labels ``y``."""
        if isinstance(X, IndexedDataset):
            X, y = X.X, X.y
        if y is None:
            raise InvalidParameterError("score needs labels: pass an IndexedDataset or (X, y).")
        labels = torch.as_tensor(np.asarray(y)).reshape(-1)
        predictions = self.predict(X)
        if labels.numel() == 0:
            return float("nan")
        return float((predictions == labels).double().mean())

    def export(self, path: str | Path | None = None) -> torch.nn.Module:
        """The fitted model as one plain ``torch.nn.Module`` for serving.

        Its ``forward(x)`` returns exactly :meth:`predict_proba` of ``x`` (a float tensor of
        the training inputs' shape); ensembles (SISA) export one module aggregating their
        members. With ``path``, also write it to that folder: ``weights.safetensors`` and
        ``recipe.json`` (read back with :func:`expunge.export.load_exported`; no pickle).
        See :mod:`expunge.export`.

        Raises:
            UnsupportedModelError: the strategy has no single-module form (ARCANE, PUMA).
        """
        from expunge.export import save_exported

        self._require_fitted("export")
        module = self._export_module()
        if path is not None:
            save_exported(module, path, self._export_recipe())
        return module

    def _export_module(self) -> ExportedClassifier:
        """The single-module form of the fitted model (a strategy that has one overrides)."""
        from expunge.export import unsupported

        raise unsupported(type(self).__name__)

    def _export_recipe(self) -> dict[str, Any]:
        """What :func:`expunge.export.load_exported` needs to rebuild the members."""
        return {}

    def fingerprint(self) -> str:
        """SHA-256 (hex) of every learned tensor, in a fixed order."""
        self._require_fitted("fingerprint")
        return self.fitted_.fingerprint()

    def verify(self) -> int:
        """Check that the store is what its ledger says; return the number of entries.

        On one consistent snapshot of the committed state (a concurrent request neither
        shows half-way nor deletes files under it), after reloading it if another process
        committed since this handle read it: the manifest's digest; the ledger chain from the
        store's genesis, starting with its ``fit``; the head anchored in the state; the last
        entry's state digest; every live file re-hashed against its committed digest; the
        live model against the last entry's fingerprint; and the retained training data
        against the fit's ids minus the forgotten ones. Reads only (after finishing the
        in-place rewrite of a request a disk error interrupted); names the first failure.

        Cost: one keyed SHA-256 pass over the store's live files plus a fingerprint of the
        model: 0.6 s for a SISA store of full MNIST (184 MB), 0.45 s of it hashing
        (benchmarks/measure_integrity.py, on a shared 2-core machine).

        Raises:
            LedgerIntegrityError: the ledger does not verify (StoreIntegrityError, a
                subclass: a file or the state does not match).
        """
        self._require_fitted("verify")
        store = self.store_
        if store.pending_rewrite_sources():  # this handle's last request met a disk error
            with store.writing(operation="verify"):
                store.finish_rewrites()
        with store.snapshot():
            self.reload()
            count = verify_store(store)
            entries = self.ledger.entries()
            if entries[-1].fingerprint_after != self.fingerprint():
                raise LedgerIntegrityError(
                    "The live model's fingerprint is not the one the ledger's last entry "
                    "recorded: the model changed outside expunge, or entries were removed."
                )
            fit = entries[0]
            check_training_ids(store, self.data_.ids, self._forgotten,
                               n_samples=int(fit.details.get("n_samples", -1)),
                               digest=str(fit.details.get("ids_digest", "")))
        return count

    # ------------------------------------------------------------ operations
    def _keyring_for(self, store: Store) -> Any:
        from expunge.store.keys import keyring

        ring = keyring(store)
        path = getattr(self, "_signing_key_path", None)
        if path is not None and ring.signing_key_path != path:
            ring.use_signing_key(path)
        return ring

    def set_signing_key(self, path: str | Path) -> None:
        """Sign this handle's receipts with the Ed25519 PEM key at ``path`` (kept outside
        the store by the operator); checked now. Default: ``EXPUNGE_SIGNING_KEY``, else a
        key created in ``STORE/keys/`` (mode 0600)."""
        if self.is_fitted:
            self._keyring_for(self.store_).use_signing_key(path)
        self._signing_key_path = Path(path)

    @property
    def public_key(self) -> bytes:
        """The PEM public key that verifies this store's receipts (give it to auditors)."""
        from expunge.store.keys import public_pem

        self._require_fitted("public_key")
        return public_pem(self._keyring_for(self.store_).signing_key().public_key())

    def _issue_receipt(self, entry: LedgerEntry) -> dict[str, Any]:
        from expunge.store.receipts import ReceiptBook

        return ReceiptBook(self.store_).issue(entry, self._keyring_for(self.store_).signing_key())

    def receipt(self, seq: int) -> dict[str, Any]:
        """The signed receipt of ledger entry ``seq`` (issued again if it was never stored)."""
        from expunge.store.receipts import ReceiptBook

        self._require_fitted("receipt")
        if not 1 <= int(seq) <= len(self.ledger):
            raise InvalidRequestError(
                f"There is no ledger entry #{seq}; this store has entries 1 to {len(self.ledger)}.")
        key = self._keyring_for(self.store_).signing_key()
        return ReceiptBook(self.store_).receipt(int(seq), key)

    def preview(self, ids: Iterable[int] | np.ndarray | torch.Tensor | None = None, *,
                subject: str | int | None = None) -> Any:
        """What ``forget(ids)`` (or ``forget_subject(subject)``) would do, without doing it.

        Returns a :class:`~expunge.operations.preview.ForgetPreview`: sub-models and blocks
        retrained, ``sample_passes`` (for exact strategies exactly what the request will
        report), seconds estimated from this store's own timing history, and the store
        entries that would be purged. Nothing is trained, written or recorded. Invalid
        requests raise what ``forget`` would raise.
        """
        from expunge.strategies.preview import preview_forget

        self._require_fitted("preview")
        if (ids is None) == (subject is None):
            raise InvalidRequestError("Give exactly one of ids or subject to preview.")
        self.reload()  # the state the request would build on
        if subject is not None:
            ids = self.subject_ids(self.subject_hash(subject))
        assert ids is not None
        return preview_forget(self, self.validate_request(ids))

    def audit(self, submodels: str | int | Iterable[int] = "all", *,
              seed: int | None = None) -> Any:
        """Replay audit: re-derive sub-models from scratch and compare every checkpoint.

        Trains the chosen sub-models again from their initialisation on the retained data
        with the recorded parameters, and compares every checkpoint on each chain (model,
        optimizer state, extras, ids trained on) bit for bit with the store's. Exact
        strategies only: for approximate ones the report says no replay guarantee exists.

        Args:
            submodels: ``"all"``, a number ``k`` of sub-models drawn at random (a cheap
                probabilistic audit: an altered sub-model is caught with probability
                ``k / n_submodels``), or explicit sub-model indices.
            seed: seed of the random draw (``None``: fresh OS randomness, recorded in the
                report so the draw can be repeated).

        Returns:
            An :class:`~expunge.operations.audit.AuditReport` (``.passed``, ``.mismatches``,
            ``.seconds``...).

        Cost: the chosen sub-models' full training (``"all"`` costs about one ``fit``).
        """
        from expunge.strategies.audit import audit_strategy

        self._require_fitted("audit")
        return audit_strategy(self, submodels, seed=seed)

    @property
    def store_location(self) -> str:
        self._require_fitted("store_location")
        return self.store_.location

    def close(self) -> None:
        """Close the store's database connection."""
        store = getattr(self, "store_", None)
        if store is not None:
            store.close()

    # ------------------------------------------------------------------ open
    @classmethod
    def _from_store(cls, store: Store, manifest: dict[str, Any], overrides: dict[str, Any],
                    location: str | Path) -> UnlearningStrategy:
        """The strategy committed in ``store`` (``expunge.open``); ``overrides`` may only be
        runtime parameters, or a recorded custom callable passed again."""
        where = str(location)
        params = dict(manifest["params"])
        check_overrides(cls, params, overrides, where)
        for key, value in list(params.items()):
            if isinstance(value, dict) and "callable" in value and key not in overrides:
                raise StoreMismatchError(
                    f"The store {where!r} was fitted with a custom {key} "
                    f"({value['callable']}); pass it again: expunge.open({where!r}, "
                    f"{key}=...)."
                )
            if isinstance(value, list) and key in cls._tuple_params():
                params[key] = tuple(value)
        params.update(overrides)
        params["store"] = location
        known = set(cls._param_names())
        strategy = cls(**{k: v for k, v in params.items() if k in known})
        strategy._validate_params()
        store.try_recover()  # only if no writer is active: never deletes another's files
        with store.snapshot():
            state = store.read_state()
            if state is None:
                raise StoreMismatchError(
                    f"The store {where!r} has no committed fit: the fit was interrupted (fit "
                    "again with the same parameters to resume), or its database was emptied."
                )
            if state.get("manifest") != store.manifest_digest():
                raise StoreIntegrityError(
                    f"{store.describe_file('manifest')} was modified after the store was "
                    "created (its digest does not match the committed one), so its recorded "
                    "parameters cannot be trusted. Restore it, or refit into a new store."
                )
            strategy._load_committed(store, state)
        return strategy

    @classmethod
    def _tuple_params(cls) -> frozenset[str]:
        return frozenset({"model_params"})


# convenient type for factories of strategies
StrategyFactory = Callable[..., UnlearningStrategy]


def params_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)

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
leaves the strategy, the store and the ledger exactly as they were.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from expunge._progress import Progress
from expunge._validation import Constraint, validate_params
from expunge._version import __version__
from expunge.data._dataset import IndexedDataset, as_id_array
from expunge.exceptions import (
    AlreadyForgottenError,
    InvalidParameterError,
    InvalidRequestError,
    LedgerIntegrityError,
    NotFittedError,
    StoreMismatchError,
    UnknownSampleError,
    UnknownSubjectError,
)
from expunge.store import Ledger, LedgerEntry, Store, open_store
from expunge.strategies._stored_data import (
    read_stored_data,
    write_training_data,
)

Guarantee = Literal["exact", "approximate"]
FORMAT_VERSION = 1


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
    """The in-memory, immutable result of fitting: what predicts and what is fingerprinted."""

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

    def fit_details(self) -> dict[str, Any]:
        """Facts about the fit worth keeping in its ledger entry (e.g. precompute seconds)."""
        info = getattr(self, "info", None) or {}

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
def _jsonable_param(value: Any) -> Any:
    """Params as recorded in the manifest; callables by qualified name."""
    if callable(value) and not isinstance(value, type):
        module = getattr(value, "__module__", "?")
        return {"callable": f"{module}:{getattr(value, '__qualname__', repr(value))}"}
    if isinstance(value, tuple):
        return [_jsonable_param(v) for v in value]
    if isinstance(value, list):
        return [_jsonable_param(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable_param(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"array_sha256": hashlib.sha256(value.tobytes()).hexdigest()}
    if isinstance(value, Path):
        return str(value)
    return value


def _as_inputs(X: Any) -> torch.Tensor:
    if isinstance(X, IndexedDataset):
        return X.X
    if isinstance(X, torch.Tensor):
        return X.detach().cpu().to(torch.float32)
    return torch.as_tensor(np.asarray(X), dtype=torch.float32)


#: blobs under this prefix are caches (e.g. the evaluation's retrained reference): reopening
#: keeps them, but every ``forget`` purges them all, since they may carry the forgotten ids
CACHE_PREFIX = "cache/"


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
    #: parameters that do not change what is computed (excluded from the manifest check)
    _runtime_params: ClassVar[frozenset[str]] = frozenset({"store", "show_progress"})

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

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, as given."""
        return {name: getattr(self, name) for name in self._param_names()}

    def _recorded_params(self) -> dict[str, Any]:
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
    def forgotten_ids(self) -> np.ndarray:
        """Every id forgotten so far, sorted."""
        self._require_fitted("forgotten_ids")
        return np.array(sorted(self._forgotten), dtype=np.int64)

    # ------------------------------------------------------------------- fit
    def fit(self, dataset: IndexedDataset) -> UnlearningStrategy:
        """Train on ``dataset`` and record the fit as the ledger's first entry.

        With ``store=PATH`` everything is persisted there. Fitting again into an existing
        store with the same parameters and data resumes (finished checkpoints are reused);
        different parameters or data raise :class:`StoreMismatchError`.

        Returns:
            ``self``.
        """
        self._validate_params()
        if not isinstance(dataset, IndexedDataset):
            raise InvalidParameterError(
                f"fit expects an IndexedDataset; got {type(dataset).__name__}. "
                "Wrap arrays with expunge.data.IndexedDataset(X, y)."
            )
        if len(dataset) == 0:
            raise InvalidParameterError("fit needs at least one sample; the dataset is empty.")
        self._check_dataset(dataset)
        store = open_store(self.store, create=True)
        try:
            self._prepare_store(store, dataset)
            started = time.perf_counter()
            progress = Progress(bool(self.show_progress))
            positions = np.arange(len(dataset), dtype=np.int64)
            ring = self._keyring_for(store)
            ring.signing_key()  # a bad key fails now, before anything is trained
            subject_hashes = None
            if dataset.subjects is not None:
                from expunge.operations.subjects import hash_subjects

                subject_hashes = hash_subjects(dataset.subjects, ring)
            data_blobs = self._write_data(store, dataset, positions, subject_hashes)
            with progress.running():
                fitted = self._fit(dataset, store, progress)
            state = {"data": data_blobs, "model": fitted.state()}
            live = fitted.live_blobs() | set(data_blobs)
            purged = store.collect_garbage(live)
            entry = store.commit(state, {
                "kind": "fit", "strategy": self.name, "guarantee": self.guarantee,
                "ids": [], "fingerprint_before": None,
                "fingerprint_after": fitted.fingerprint(),
                "samples_retrained": len(dataset), "sample_passes": self._fit_passes(fitted),
                "submodels_retrained": [], "seconds": time.perf_counter() - started,
                "purged": purged,
                "details": {**fitted.fit_details(),
                            "dataset_fingerprint": (store.read_manifest() or {})
                            .get("dataset", {}).get("fingerprint", ""),
                            "n_samples": len(dataset)},
            })
        except BaseException:
            store.close()
            raise
        self._install(store, dataset, fitted, {}, positions, subject_hashes)
        self._issue_receipt(entry)
        return self

    def _fit_passes(self, fitted: FittedModel) -> int:
        return int(getattr(fitted, "sample_passes", 0))

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

    def _manifest(self, dataset: IndexedDataset) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "strategy": self.name,
            "params": self._recorded_params(),
            "dataset": {
                "fingerprint": dataset.fingerprint(), "n_samples": len(dataset),
                "n_classes": dataset.n_classes, "input_shape": list(dataset.input_shape),
            },
            "expunge_version": __version__,
            "torch_version": torch.__version__,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _prepare_store(self, store: Store, dataset: IndexedDataset) -> None:
        manifest = self._manifest(dataset)
        existing = store.read_manifest()
        if existing is None:
            store.write_manifest(manifest)
            return
        where = store.location
        if existing.get("strategy") != self.name:
            raise StoreMismatchError(
                f"The store {where!r} holds a {existing.get('strategy')!r} model, not "
                f"{self.name!r}. Use a new store, or reopen it with expunge.open({where!r})."
            )
        for key, value in manifest["params"].items():
            if existing["params"].get(key) != value:
                raise StoreMismatchError(
                    f"The store {where!r} was created with {key}={existing['params'].get(key)!r}, "
                    f"but this {type(self).__name__} has {key}={value!r}. Use a new store, or "
                    f"reopen it with expunge.open({where!r})."
                )
        if existing["dataset"]["fingerprint"] != manifest["dataset"]["fingerprint"]:
            raise StoreMismatchError(
                f"The store {where!r} was fitted on other data (fingerprint "
                f"{existing['dataset']['fingerprint'][:12]}, now "
                f"{manifest['dataset']['fingerprint'][:12]}). Use a new store."
            )
        if store.ledger.entries("forget"):
            raise StoreMismatchError(
                f"The store {where!r} has already forgotten samples; fitting again would bring "
                f"them back. Reopen it with expunge.open({where!r}) to keep forgetting."
            )

    @staticmethod
    def _write_data(store: Store, data: IndexedDataset, positions: np.ndarray,
                    subject_hashes: np.ndarray | None = None) -> list[str]:
        """Write the retained training data in buckets; return their blob names.

        Only buckets whose ids changed are written (see :mod:`expunge.strategies._stored_data`);
        names derive from the original dataset's fingerprint (in the manifest) and the ids.
        """
        manifest = store.read_manifest() or {}
        original = manifest.get("dataset", {}).get("fingerprint", "")
        return write_training_data(store, data, positions, original, subject_hashes)

    # ---------------------------------------------------------------- forget
    def _check_request(self, ids: Iterable[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        request = as_id_array(ids)
        if request.size == 0:
            raise InvalidRequestError("The request is empty: pass at least one sample id.")
        values, counts = np.unique(request, return_counts=True)
        if (counts > 1).any():
            raise InvalidRequestError(
                f"Ids {values[counts > 1][:10].tolist()} appear more than once in the request; "
                "pass each id once."
            )
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
        return np.sort(request)

    def validate_request(self, ids: Iterable[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """The ids ``forget(ids)`` would accept now, sorted; raises what ``forget`` raises
        (and changes nothing). Used to check requests before queueing or batching them."""
        self._require_fitted("validate_request")
        return self._check_request(ids)

    def forget(
        self, ids: Iterable[int] | np.ndarray | torch.Tensor, *, tag: str | None = None
    ) -> ForgetReport:
        """Remove the influence of the samples ``ids`` and record the request.

        Args:
            ids: sample ids (integers) to forget, each in the retained training data.
            tag: optional free text stored with the ledger entry (a ticket number, say).

        Returns:
            A :class:`ForgetReport`. The request is in the ledger, and every store entry
            computed from these ids is deleted, before this returns.

        Raises:
            NotFittedError, InvalidRequestError, UnknownSampleError, AlreadyForgottenError:
                and nothing changes.
        """
        self._require_fitted("forget")
        return self._apply_forget(ids, tag=tag)

    def forget_subject(self, subject: str | int, *, tag: str | None = None) -> ForgetReport:
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
        from expunge.operations.receipts import new_nonce, subject_commitment
        from expunge.operations.subjects import normalise_subject

        key = normalise_subject(subject)
        subject_hash = self.subject_hash(key)
        ids = self.subject_ids(subject_hash)
        nonce = new_nonce()
        report = self._apply_forget(ids, tag=tag, details={
            "subject_hashes": [subject_hash],
            "subject_commitments": [subject_commitment(key, nonce)],
        })
        return ForgetReport(**{**report.__dict__, "subject_nonce": nonce})

    def subject_hash(self, subject: str | int) -> str:
        """The keyed hash (hex) this store records for the subject key ``subject``.

        Only whoever holds the store's secret can compute it: that is how an operator checks
        which subject a ledger entry concerns, without the entry revealing it."""
        from expunge.operations.subjects import normalise_subject

        self._require_fitted("subject_hash")
        return str(self._keyring_for(self.store_).subject_hash(normalise_subject(subject)))

    def subject_ids(self, subject_hash: str) -> np.ndarray:
        """The retained ids whose subject hash is ``subject_hash`` (hex), sorted.

        Raises :class:`UnknownSubjectError` when there are none, saying whether an earlier
        request forgot them.
        """
        from expunge.operations.subjects import rows_of

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

    def _apply_forget(self, ids: Iterable[int] | np.ndarray | torch.Tensor, *,
                      tag: str | None, details: dict[str, Any] | None = None) -> ForgetReport:
        """``forget`` with extra ledger ``details`` (subject hashes, service request keys)."""
        started = time.perf_counter()
        request = self._check_request(ids)
        self._keyring_for(self.store_).signing_key()  # a bad key fails before anything changes
        store, old = self.store_, self.fitted_
        kept = ~np.isin(self.data_.ids, request)  # the rows of D.drop(request), in order
        retained, positions = self.data_.where(kept), self._data_positions[kept]
        progress = Progress(bool(self.show_progress))
        before = old.fingerprint()
        with progress.running():
            fitted, stats = self._forget(old, request, retained, store, progress)
        subject_hashes = None if self._subject_hashes is None else self._subject_hashes[kept]
        data_blobs = self._write_data(store, retained, positions, subject_hashes)
        live = fitted.live_blobs() | set(data_blobs)
        purged = sorted(store.list_blobs() - live)
        details = {**stats.details, **(details or {})}
        if tag is not None:
            details["tag"] = str(tag)
        entry = store.commit({"data": data_blobs, "model": fitted.state()}, {
            "kind": "forget", "strategy": self.name, "guarantee": self._guarantee_now(),
            "ids": request.tolist(), "fingerprint_before": before,
            "fingerprint_after": fitted.fingerprint(),
            "samples_retrained": stats.samples_retrained, "sample_passes": stats.sample_passes,
            "submodels_retrained": list(stats.submodels_retrained),
            "seconds": time.perf_counter() - started, "purged": purged, "details": details,
        })
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
        return self.fitted_.predict_proba(_as_inputs(X))

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

    def fingerprint(self) -> str:
        """SHA-256 (hex) of every learned tensor, in a fixed order."""
        self._require_fitted("fingerprint")
        return self.fitted_.fingerprint()

    def verify(self) -> int:
        """Check the ledger chain and that its last entry describes the live model.

        Returns the number of entries; raises :class:`LedgerIntegrityError` otherwise.
        """
        count = self.ledger.verify()
        entries = self.ledger.entries()
        if entries and entries[-1].fingerprint_after != self.fingerprint():
            raise LedgerIntegrityError(
                "The live model's fingerprint is not the one the ledger's last entry recorded: "
                "the model changed outside expunge, or entries were removed."
            )
        return count

    # ------------------------------------------------------------ operations
    def _keyring_for(self, store: Store) -> Any:
        from expunge.operations._keys import keyring

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
        from expunge.operations._keys import public_pem

        self._require_fitted("public_key")
        return public_pem(self._keyring_for(self.store_).signing_key().public_key())

    def _issue_receipt(self, entry: LedgerEntry) -> dict[str, Any]:
        import sqlite3
        import warnings

        from expunge.operations._keys import key_id
        from expunge.operations.receipts import ReceiptBook, receipt_fields, sign

        key = self._keyring_for(self.store_).signing_key()
        book = ReceiptBook(self.store_)
        receipt = sign(receipt_fields(entry, book.store_id(), key_id(key.public_key())), key)
        try:
            book.put(receipt)
        except sqlite3.Error as err:  # the request happened; the receipt is issued again later
            warnings.warn(f"The receipt of request #{entry.seq} could not be stored ({err}); "
                          f"m.receipt({entry.seq}) issues it again.", stacklevel=3)
        return receipt

    def receipt(self, seq: int) -> dict[str, Any]:
        """The signed receipt of ledger entry ``seq`` (issued again if it was never stored)."""
        from expunge.operations.receipts import ReceiptBook

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
        from expunge.operations.preview import preview_forget

        self._require_fitted("preview")
        if (ids is None) == (subject is None):
            raise InvalidRequestError("Give exactly one of ids or subject to preview.")
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
        from expunge.operations.audit import audit_strategy

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
        params = dict(manifest["params"])
        for key, value in list(params.items()):
            if isinstance(value, dict) and "callable" in value and key not in overrides:
                raise StoreMismatchError(
                    f"The store {str(location)!r} was fitted with a custom {key} "
                    f"({value['callable']}); pass it again: expunge.open({str(location)!r}, "
                    f"{key}=...)."
                )
            if isinstance(value, list) and key in cls._tuple_params():
                params[key] = tuple(value)
        params.update(overrides)
        params["store"] = location
        known = set(cls._param_names())
        strategy = cls(**{k: v for k, v in params.items() if k in known})
        state = store.read_state()
        if state is None:
            raise StoreMismatchError(
                f"The store {str(location)!r} has no committed fit (the fit was interrupted). "
                "Fit again with the same parameters to resume."
            )
        data, positions, subject_hashes = read_stored_data(store, state["data"])
        fitted = strategy._restore(state["model"], store)
        data_blobs = [state["data"]] if isinstance(state["data"], str) else state["data"]
        live = fitted.live_blobs() | set(data_blobs)
        store.collect_garbage(live | {b for b in store.list_blobs() if b.startswith(CACHE_PREFIX)})
        strategy._install(store, data, fitted, store.ledger.forgotten(), positions,
                          subject_hashes)
        return strategy

    @classmethod
    def _tuple_params(cls) -> frozenset[str]:
        return frozenset({"model_params"})


# convenient type for factories of strategies
StrategyFactory = Callable[..., UnlearningStrategy]


def params_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)

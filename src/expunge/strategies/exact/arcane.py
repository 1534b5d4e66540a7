"""ARCANE: exact unlearning with one one-class sub-model per class (Yan et al., IJCAI 2022).

The paper's full text was not available; this is the reconstruction specified in
ALGORITHMS.md sections 0.1 and 2, with its open questions resolved as documented below and
in ``docs/arcane.md``. Everything that decides what a sub-model trains on is a function of
that class's retained ids and of data-independent features, so the generic block machinery
of :mod:`~expunge.strategies.exact.sharded` gives exactness and reuse for free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from expunge._hashing import derive_key, keyed_hash
from expunge._progress import Progress
from expunge._validation import Check, Interval, Options
from expunge.data import IndexedDataset
from expunge.exceptions import InvalidParameterError
from expunge.models import ModelSpec, build_model, seeded_init
from expunge.store import Store
from expunge.strategies.base import FittedModel, ForgetStats
from expunge.strategies.exact._one_class import (
    EMPTY_SCORE,
    GaussianDensity,
    SVDDHead,
    aggregate,
    calibrate,
    calibration_stats,
    svdd_loss,
)
from expunge.strategies.exact._selection import FeatureMap, Selection, greedy_logdet, unit_rows
from expunge.strategies.exact.sharded import BlockPlan, ShardedModel, ShardedStrategy, Submodel
from expunge.strategies.registry import register_strategy
from expunge.training import epoch_schedule, pinned_threads

#: each class's last selection is committed under this prefix, so a reopened store (every
#: CLI request) reuses it instead of selecting all classes again (~2 s per MNIST class)
SELECTION_BLOB_PREFIX = "arcane/selection-"

#: what ``deletion_prior`` may be (see :class:`ARCANE`)
DeletionPrior = Callable[[np.ndarray], Any] | Mapping[int, float] | np.ndarray | Sequence[float]


def _is_prior(value: Any) -> bool:
    # torch tensors are refused: the manifest records arrays by digest, tensors it cannot
    return callable(value) or isinstance(value, (Mapping, np.ndarray, list, tuple))


@dataclass
class _ClassSelection:
    """The last selection of one class, kept in memory to skip provably unchanged work."""

    key: str
    candidates: np.ndarray  # sorted ids the selection was computed from
    features: np.ndarray | None  # their row-wise features (bitwise independent of the other
    # rows); None when loaded from the store: recomputed only if a reselection needs them
    selection: Selection

    def digest(self, k: int) -> str:
        """Names the committed blob; also checks it on load (a changed blob is not reused)."""
        h = hashlib.sha256(f"{self.key}|class {k}|".encode())
        for array in (self.candidates, self.selection.ids, self.selection.gains):
            h.update(np.ascontiguousarray(array).tobytes())
            h.update(b"|")
        return h.hexdigest()[:24]


@register_strategy
class ARCANE(ShardedStrategy):
    """ARCANE: one one-class sub-model per class, trained on selected data in checkpointed blocks.

    Four components, each of which can be switched off or tuned (ALGORITHMS.md section 2):

    1. **Partition by class.** Sub-model ``k`` is a one-class model trained on class-``k``
       samples only, so a deletion touches the sub-model of its class and no other.
       Learners: ``"gaussian"`` (default; a Gaussian density with shrunk covariance on a
       fixed random projection of the inputs, no SGD) and ``"svdd"`` (a bias-free Deep SVDD
       network built from ``model`` and trained with the shared SGD loop). Predictions are
       the argmax over classes of calibrated scores; ``predict_proba`` is their softmax at
       ``temperature``.
    2. **Representative selection by joint entropy** (a reconstruction): greedy
       log-determinant selection on unit-normalised, data-independent features, size set by
       an absolute count ``n_selected`` and/or a marginal-gain ``selection_threshold``
       (nats). Neither rule depends on the class size, so deleting a sample that was never
       selected leaves the selection bitwise unchanged and **retrains nothing**; deleting a
       selected one re-runs the selection and retrains from the first block whose content
       changed. (A count proportional to the class size would re-select on every deletion.)
    3. **Training-state saving.** Each class's selected samples are split into ``n_blocks``
       blocks of ``ceil(|S_k| / n_blocks)`` samples (the last may be shorter), trained on
       cumulatively (SISA's slicing and epoch schedule; ``blocks="incremental"`` trains block
       ``b`` on its own samples, starting from block ``b-1``'s state). A content-addressed
       checkpoint follows every block; checkpoints that saw a forgotten id are purged.
    4. **Sorting.** With ``deletion_prior`` (metadata, never the model) samples are ordered
       by prior, likely-deleted last, so their deletions only retrain late blocks; ties, and
       everything when there is no prior, are ordered by a keyed hash of ``(seed, id)``
       (``order="hash"``) or by greedy selection rank (``order="greedy"``). A selected
       deletion re-selects, and the replacements are placed by their own prior, so sorting
       saves most where nothing is re-selected (``selection=False``, small classes).

    Defaults (Gaussian learner, 2,000 selected per class, shrinkage 0.05) were chosen on MNIST;
    ``docs/arcane.md`` has the numbers and the parts of the design that are reconstructions.

    **Guarantee:** exact and history independent in every setting:
    ``ARCANE(**p).fit(D).forget(F)`` equals ``ARCANE(**p).fit(D.drop(F))`` bit for bit on CPU
    (same thread count), after any sequence of requests. The block plan is a pure function
    of each class's retained ids, their data-independent features and the parameters, and
    the generic machinery retrains every block whose content changed.

    **Cost per request:** classes without a forgotten id are untouched. For a class with
    forgotten ids: if none was selected, nothing is recomputed (cost ~0); otherwise the class
    is re-selected (``O(n_k·m·p)``, 2-5 s for a 6,000-image MNIST class with m = 2000)
    and retrained from its first changed block: with cumulative blocks
    ``Σ_{b≥b*} |S^{1:b}|·e_b`` sample-passes. Storage: ``K·n_blocks`` checkpoints.

    Args:
        model: the SVDD network ``ψ`` (a registered name or a callable, as for
            :class:`Retrain`) with ``rep_dim`` outputs; unused by ``learner="gaussian"``.
        learner: ``"gaussian"`` or ``"svdd"``.
        selection: ``True`` for greedy log-det selection, ``False`` to train each class on
            all of its samples.
        n_selected: at most this many samples per class (``None``: no count limit).
        selection_threshold: stop selecting once the best marginal gain is below this many
            nats (``None``: no threshold). At least one size rule is needed with selection.
        selection_noise: the noise variance ``σ²`` of the log-det objective.
        features: the data-independent feature map shared by the selection and the
            Gaussian learner: ``"projection"`` (fixed Gaussian random projection keyed by
            ``seed``) or ``"pixels"`` (the flattened input).
        feature_dim: dimension of ``"projection"``.
        n_blocks: checkpointed blocks per class.
        blocks: ``"cumulative"`` (default) or ``"incremental"``.
        sorting: order blocks by ``deletion_prior`` (``False`` ignores the prior, for
            ablations).
        deletion_prior: ``None``; a callable ``f(ids) -> values`` (one float per id, the value
            of an id must not depend on the other ids passed); a mapping ``{id: value}``
            (missing ids get 0); or a 1-D array indexed **by id** (``prior[id]``). Larger
            values mean "more likely to be deleted". It must come from metadata (consent
            status, account age), never from the model, or the guarantee is void.
        order: tie-break order inside a prior level: ``"hash"`` (keyed hash of
            ``(seed, id)``) or ``"greedy"`` (greedy rank: deleting the sample picked r-th
            keeps the first r picks, hence every block before its block; needs selection).
        shrinkage: the Gaussian learner's covariance shrinkage towards a scaled identity.
        rep_dim: output dimension of the SVDD network.
        calibration: ``"auto"`` (``"raw"`` log-density for the Gaussian learner, ``"zscore"``
            for SVDD), ``"zscore"`` (standardise each class's score by the mean and standard
            deviation of its own training scores) or ``"raw"``.
        temperature: softmax temperature of ``predict_proba`` over calibrated scores.
        model_params, epochs, batch_size, lr, optimizer, momentum, weight_decay, seed, store,
            show_progress, executor, n_jobs, ray_address, threads_per_job: as for
            :class:`Retrain`;
            ``epochs`` is the SGD budget of one unsliced class (SVDD only).

    References:
        Yan, Li, Guo, Li, Li, Lin, "ARCANE: An Efficient Architecture for Exact Machine
        Unlearning", IJCAI 2022 (the full text was not available: the components follow
        its abstract and the reviews collected in ALGORITHMS.md sections 0.1 and 2; the
        selection rule and its exactness argument are reconstructions, section 2(b), 2(f)3);
        Ruff et al., "Deep One-Class Classification", ICML 2018 (SVDD).
    """

    name = "arcane"
    summary = "exact: one one-class sub-model per class on selected data, in checkpointed blocks"
    _parameter_constraints = {
        **ShardedStrategy._parameter_constraints,
        "learner": [Options(("gaussian", "svdd"))],
        "selection": [bool],
        "n_selected": [None, Interval(int, 1, None)],
        "selection_threshold": [None, Interval(float, 0, None, closed="neither")],
        "selection_noise": [Interval(float, 0, None, closed="neither")],
        "features": [Options(("projection", "pixels"))],
        "feature_dim": [Interval(int, 1, None)],
        "n_blocks": [Interval(int, 1, None)],
        "blocks": [Options(("cumulative", "incremental"))],
        "sorting": [bool],
        "deletion_prior": [None, Check(_is_prior, "a callable, a mapping {id: value} or a "
                                                  "numpy array indexed by id")],
        "order": [Options(("hash", "greedy"))],
        "shrinkage": [Interval(float, 0, 1, closed="both")],
        "rep_dim": [Interval(int, 1, None)],
        "calibration": [Options(("auto", "zscore", "raw"))],
        "temperature": [Interval(float, 0, None, closed="neither")],
    }

    def __init__(
        self,
        model: ModelSpec = "mlp",
        *,
        learner: str = "gaussian",
        selection: bool = True,
        n_selected: int | None = 2000,
        selection_threshold: float | None = None,
        selection_noise: float = 0.1,
        features: str = "projection",
        feature_dim: int = 128,
        n_blocks: int = 5,
        blocks: str = "cumulative",
        sorting: bool = True,
        deletion_prior: DeletionPrior | None = None,
        order: str = "hash",
        shrinkage: float = 0.05,
        rep_dim: int = 32,
        calibration: str = "auto",
        temperature: float = 1.0,
        model_params: dict[str, Any] | None = None,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 0.05,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        seed: int = 0,
        store: str | Path | None = None,
        show_progress: bool = False,
        executor: str = "serial",
        n_jobs: int | None = None,
        ray_address: str | None = None,
        threads_per_job: int = 1,
    ) -> None:
        self.model = model
        self.learner = learner
        self.selection = selection
        self.n_selected = n_selected
        self.selection_threshold = selection_threshold
        self.selection_noise = selection_noise
        self.features = features
        self.feature_dim = feature_dim
        self.n_blocks = n_blocks
        self.blocks = blocks
        self.sorting = sorting
        self.deletion_prior = deletion_prior
        self.order = order
        self.shrinkage = shrinkage
        self.rep_dim = rep_dim
        self.calibration = calibration
        self.temperature = temperature
        self.model_params = model_params
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.seed = seed
        self.store = store
        self.show_progress = show_progress
        self.executor = executor
        self.n_jobs = n_jobs
        self.ray_address = ray_address
        self.threads_per_job = threads_per_job

    def __getstate__(self) -> dict[str, Any]:
        # the selection cache holds features of every sample (tens of MB on MNIST): it is
        # an optimisation of this process only, never sent to executor workers or pickled
        state = dict(self.__dict__)
        state.pop("_selection_cache", None)
        state.pop("_selection_log", None)
        state.pop("_stored_selections", None)
        return state

    # ------------------------------------------------------------ parameters
    def _check_params(self) -> None:
        if self.selection and self.n_selected is None and self.selection_threshold is None:
            raise InvalidParameterError(
                "selection=True needs a size rule: set n_selected (a count per class) and/or "
                "selection_threshold (nats), or pass selection=False to use every sample."
            )
        if self.order == "greedy" and not self.selection:
            raise InvalidParameterError(
                "order='greedy' orders blocks by greedy selection rank, which needs "
                "selection=True; use order='hash' with selection=False."
            )
        if self.learner == "svdd" and self.blocks == "cumulative":
            schedule = epoch_schedule(self.epochs, self.n_blocks)
            if 0 in schedule:
                raise InvalidParameterError(
                    f"n_blocks={self.n_blocks} with epochs={self.epochs} leaves some blocks with "
                    f"0 epochs (schedule {schedule}); use n_blocks <= {2 * self.epochs}."
                )

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"n_selected": 40, "n_blocks": 3, "feature_dim": 32}

    def _check_dataset(self, dataset: IndexedDataset) -> None:
        # evaluate the prior now so that a bad one fails before anything is written
        self._prior_values(dataset.ids)

    @property
    def calibration_method(self) -> str:
        """The calibration in use (``"auto"`` resolved for the learner)."""
        if self.calibration != "auto":
            return str(self.calibration)
        return "raw" if self.learner == "gaussian" else "zscore"

    def feature_map(self) -> FeatureMap:
        """The data-independent feature map (selection and the Gaussian learner)."""
        return FeatureMap(str(self.features), int(self.feature_dim), int(self.seed))

    # ---------------------------------------------------------------- prior
    def _prior_values(self, ids: np.ndarray) -> np.ndarray | None:
        """The deletion prior of each id (float64), or ``None`` without sorting by prior."""
        prior = self.deletion_prior
        if prior is None or not self.sorting:
            return None
        ids = np.asarray(ids, dtype=np.int64)
        if isinstance(prior, Mapping):
            if "array_sha256" in prior or "callable" in prior:
                raise InvalidParameterError(
                    "deletion_prior was recorded in the store as a digest, not its values; pass "
                    "it again when reopening: expunge.open(path, deletion_prior=...)."
                )
            try:
                table = {int(k): float(v) for k, v in prior.items()}
            except (TypeError, ValueError) as err:
                raise InvalidParameterError(
                    f"deletion_prior as a mapping must map integer ids to numbers: {err}."
                ) from None
            values = np.array([table.get(int(i), 0.0) for i in ids.tolist()], dtype=np.float64)
        elif callable(prior):
            values = np.asarray(prior(ids.copy()), dtype=np.float64).reshape(-1)
            if values.shape[0] != ids.shape[0]:
                raise InvalidParameterError(
                    f"deletion_prior(ids) must return one value per id; got {values.shape[0]} "
                    f"values for {ids.shape[0]} ids."
                )
        else:
            table_array = np.asarray(prior, dtype=np.float64).reshape(-1)
            if ids.size and (ids.min() < 0 or ids.max() >= table_array.shape[0]):
                raise InvalidParameterError(
                    f"deletion_prior as an array is indexed by id, but it has "
                    f"{table_array.shape[0]} entries and the data has ids up to {int(ids.max())}"
                    f" (min {int(ids.min())}). Pass an array of length > max id, or a mapping "
                    "{id: value}."
                )
            values = table_array[ids]
        if not np.isfinite(values).all():
            bad = ids[~np.isfinite(values)][:5].tolist()
            raise InvalidParameterError(
                f"deletion_prior must be finite; ids {bad} have non-finite values."
            )
        return values

    # ------------------------------------------------------------- selection
    def _selection_key(self) -> str:
        return json.dumps([self.selection, self.n_selected, self.selection_threshold,
                           self.selection_noise, self.features, self.feature_dim, self.seed])

    def _select(
        self, k: int, ids: np.ndarray, data: IndexedDataset
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Selected ids of class ``k`` (greedy order) and their greedy ranks (``None`` if off).

        ``ids`` are the class's retained ids (sorted). Reuses the previous selection of this
        class when only unselected ids left it: the greedy steps are then bitwise the same
        (see ``_selection``), so recomputing would return the same ids.
        """
        if not self.selection:
            return ids, None
        cache: dict[int, _ClassSelection] = self.__dict__.setdefault("_selection_cache", {})
        log: dict[int, str] = self.__dict__.setdefault("_selection_log", {})
        key = self._selection_key()
        previous = cache.get(k) or self._stored_selection(k, key)
        features: np.ndarray | None = None
        if previous is not None and previous.key == key and \
                np.isin(ids, previous.candidates, assume_unique=True).all():
            kept_rows = np.searchsorted(previous.candidates, ids)
            removed = np.setdiff1d(previous.candidates, ids, assume_unique=True)
            kept_features = None if previous.features is None else previous.features[kept_rows]
            if not np.isin(removed, previous.selection.ids, assume_unique=True).any():
                cache[k] = _ClassSelection(key, ids, kept_features, previous.selection)
                log[k] = "reused"
                return previous.selection.ids, np.arange(len(previous.selection))
            features = kept_features  # row-wise features: still exact
        if features is None:
            # pinned like training: the thread count is part of what a kernel computes
            with pinned_threads(int(self.threads_per_job)):
                features = unit_rows(self.feature_map().rowwise(data.select(ids).X))
        result = greedy_logdet(
            features, ids, n_select=self.n_selected, threshold=self.selection_threshold,
            noise=float(self.selection_noise),
        )
        cache[k] = _ClassSelection(key, ids, features, result)
        log[k] = "selected"
        return result.ids, np.arange(len(result))

    def _stored_selection(self, k: int, key: str) -> _ClassSelection | None:
        """Class ``k``'s selection as committed with the current data, if it checks out.

        Loaded by ``_restore``; its candidates are the class's ids in the committed data
        (``self.data_``: the selection and the data are committed in one state). A blob
        whose content does not match its name is ignored, and the class is selected again.
        """
        stored = self.__dict__.get("_stored_selections", {}).pop(k, None)
        data = getattr(self, "data_", None)
        if stored is None or data is None:
            return None
        name, selection = stored
        candidates = np.sort(data.ids[data.y.numpy() == k])
        entry = _ClassSelection(key, candidates, None, selection)
        return entry if name.endswith(entry.digest(k)) else None

    def _commit_selections(self, model: ShardedModel, store: Store) -> None:
        """Write each class's current selection (ids and gains: a few KB) into the store."""
        names: dict[str, str] = {}
        for k, entry in sorted(self.__dict__.get("_selection_cache", {}).items()):
            if len(entry.selection) == 0:
                continue
            names[str(k)] = f"{SELECTION_BLOB_PREFIX}{k:03d}-{entry.digest(k)}"
            store.write_blob(names[str(k)], {
                "ids": torch.from_numpy(np.ascontiguousarray(entry.selection.ids)),
                "gains": torch.from_numpy(np.ascontiguousarray(entry.selection.gains)),
            }, {"class": str(k)})
        model.extra_state = {"selections": names}
        model.extra_blobs = frozenset(names.values())

    # ----------------------------------------------------------------- plans
    def _plans(self, data: IndexedDataset) -> list[BlockPlan]:
        n_blocks = int(self.n_blocks)
        if self.learner == "gaussian":
            epochs = (1,) * n_blocks  # one pass of statistics per block; no SGD
        elif self.blocks == "cumulative":
            epochs = tuple(epoch_schedule(int(self.epochs), n_blocks))
        else:
            epochs = (int(self.epochs),) * n_blocks
        labels = data.y.numpy()
        order_key = derive_key(int(self.seed), "arcane-order")
        plans = []
        for k in range(data.n_classes):
            selected, ranks = self._select(k, np.sort(data.ids[labels == k]), data)
            prior = self._prior_values(selected)
            secondary = ranks if (self.order == "greedy" and ranks is not None) \
                else keyed_hash(order_key, selected)
            # lexsort: last key is primary -> (prior, hash or greedy rank, id)
            keys: list[np.ndarray] = [selected, secondary]
            if prior is not None:
                keys.append(prior)
            ordered = selected[np.lexsort(tuple(keys))]
            size = max(1, math.ceil(len(ordered) / n_blocks))
            blocks = tuple(np.sort(ordered[b * size:(b + 1) * size]) for b in range(n_blocks))
            plans.append(BlockPlan(blocks=blocks, epochs=epochs,
                                   cumulative=self.blocks == "cumulative"))
        return plans

    # ----------------------------------------------------------------- hooks
    def _new_module(self, submodel: int, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        if self.learner == "gaussian":
            return GaussianDensity(self.feature_map(), int(math.prod(input_shape)))
        seed = derive_key(self.seed, "init", submodel) >> 1
        net = seeded_init(seed, lambda: build_model(self.model, input_shape, int(self.rep_dim),
                                                    self.model_params))
        return SVDDHead(net, int(self.rep_dim))

    def _make_optimizer(self, module: nn.Module) -> torch.optim.Optimizer | None:
        if isinstance(module, GaussianDensity):
            return None
        return super()._make_optimizer(module)

    def _loss(
        self, submodel: int, module: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return svdd_loss(module, x, y)

    def _train_block(
        self, submodel: int, block: int, module: nn.Module,
        optimizer: torch.optim.Optimizer | None, data: IndexedDataset, epochs: int,
        progress: Progress, task: int | None,
    ) -> None:
        if isinstance(module, GaussianDensity):
            # cumulative: statistics of the whole cumulative set, so the final state is a
            # function of S_k alone; incremental: merge this block into the running state
            if self.blocks == "cumulative":
                module.fit(data.X)
            else:
                module.merge(data.X)
            progress.advance(task, epochs)
            return
        assert isinstance(module, SVDDHead)
        module.init_center(data.X)  # fixed once, from the first block with data
        super()._train_block(submodel, block, module, optimizer, data, epochs, progress, task)

    def _finalize(
        self, submodel: int, module: nn.Module, data: IndexedDataset
    ) -> dict[str, torch.Tensor]:
        if len(data) == 0:
            return {}
        extras: dict[str, torch.Tensor] = {}
        if isinstance(module, GaussianDensity):
            extras.update(module.density(float(self.shrinkage)))
        raw = module.score(data.X, extras)  # type: ignore[operator]
        extras.update(calibration_stats(raw))
        return extras

    def _class_scores(self, submodels: Sequence[Submodel], X: torch.Tensor) -> torch.Tensor:
        """Calibrated score of every input under every class, ``(n, K)`` float64."""
        columns = []
        for s in submodels:
            if s.n_trained == 0 or not s.extras:
                columns.append(torch.full((X.shape[0],), EMPTY_SCORE, dtype=torch.float64))
                continue
            raw = s.module.score(X, s.extras)  # type: ignore[operator]
            columns.append(calibrate(raw, s.extras, self.calibration_method))
        return torch.stack(columns, dim=1)

    def _aggregate(self, submodels: Sequence[Submodel], X: torch.Tensor) -> torch.Tensor:
        return aggregate(self._class_scores(submodels, X), float(self.temperature))

    # ----------------------------------------------------------- fit/forget
    def _fit(self, data: IndexedDataset, store: Store, progress: Progress) -> ShardedModel:
        self.__dict__["_selection_cache"] = {}  # new data: nothing cached applies
        self.__dict__["_stored_selections"] = {}
        self.__dict__["_selection_log"] = {}
        return super()._fit(data, store, progress)

    def _build(
        self, data: IndexedDataset, store: Store, progress: Progress,
        previous: ShardedModel | None,
    ) -> tuple[ShardedModel, ForgetStats]:
        model, stats = super()._build(data, store, progress, previous)
        if self.selection:
            self._commit_selections(model, store)
        return model, stats

    def _restore(self, state: dict[str, Any], store: Store) -> ShardedModel:
        model = super()._restore(state, store)
        stored: dict[int, tuple[str, Selection]] = {}
        for k, name in (state.get("selections") or {}).items():
            tensors, _ = store.read_blob(name)
            stored[int(k)] = (name, Selection(tensors["ids"].numpy(), tensors["gains"].numpy()))
        self.__dict__["_selection_cache"] = {}
        self.__dict__["_stored_selections"] = stored
        model.extra_state = {"selections": dict(state.get("selections") or {})}
        model.extra_blobs = frozenset(model.extra_state["selections"].values())
        return model

    def _forget(
        self, fitted: FittedModel, ids: np.ndarray, retained: IndexedDataset,
        store: Store, progress: Progress,
    ) -> tuple[ShardedModel, ForgetStats]:
        self.__dict__["_selection_log"] = {}
        model, stats = super()._forget(fitted, ids, retained, store, progress)
        labels = self.data_.y.numpy()[self.data_.positions(ids)]
        touched = sorted({int(c) for c in labels.tolist()})
        log = self.__dict__.get("_selection_log", {})
        details = dict(stats.details)
        details["classes_touched"] = touched
        details["classes_reselected"] = [k for k in touched if log.get(k) == "selected"]
        return model, dataclasses.replace(stats, details=details)

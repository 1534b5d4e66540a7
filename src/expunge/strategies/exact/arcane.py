"""ARCANE: exact unlearning with one one-class sub-model per class (Yan et al., IJCAI 2022).

The paper's full text was not available; this is the reconstruction specified in
ALGORITHMS.md sections 0.1 and 2, with its open questions resolved as documented below and
in ``docs/arcane.md``. Everything that decides what a sub-model trains on is a function of
that class's retained ids and of data-independent features, so the generic block machinery
of :mod:`~expunge.strategies.exact.sharded` gives exactness and reuse for free.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from expunge._hashing import derive_key, keyed_hash
from expunge._progress import Progress
from expunge._validation import Check, Interval, Options
from expunge.data import IndexedDataset
from expunge.exceptions import InvalidParameterError
from expunge.models import ModelSpec
from expunge.store import Store
from expunge.strategies.base import FittedModel, ForgetStats
from expunge.strategies.exact._arcane_model import ARCANEModel
from expunge.strategies.exact._class_state import (
    ClassState,
    blob_names,
    ids_digest,
    read_selection,
    read_state,
    selection_features,
    write_state,
)
from expunge.strategies.exact._features import KINDS, FeatureMap, resolve_kind
from expunge.strategies.exact._one_class import (
    EMPTY_SCORE,
    GaussianDensity,
    SVDDHead,
    aggregate,
    calibrate,
    calibration_stats,
    svdd_loss,
)
from expunge.strategies.exact._prior import DeletionPrior, is_prior, prior_values
from expunge.strategies.exact._selection import greedy_logdet
from expunge.strategies.exact.sharded import BlockPlan, ShardedModel, ShardedStrategy, Submodel
from expunge.strategies.registry import register_strategy
from expunge.training import epoch_schedule

#: ``shrinkage="auto"``: chosen per feature map on MNIST and UCI Adult (docs/arcane.md)
AUTO_SHRINKAGE = {"conv": 0.005, "relu": 0.05, "projection": 0.05, "pixels": 0.05}


@register_strategy
class ARCANE(ShardedStrategy):
    """ARCANE: one one-class sub-model per class, trained on selected data in checkpointed blocks.

    Four components, each of which can be switched off or tuned (ALGORITHMS.md section 2):

    1. **Partition by class.** Sub-model ``k`` is a one-class model trained on class-``k``
       samples only, so a deletion touches the sub-model of its class and no other.
       Learners: ``"gaussian"`` (default; a Gaussian density with shrunk covariance on a
       fixed, data-independent feature map, no SGD) and ``"svdd"`` (a bias-free Deep SVDD
       network built from ``model`` and trained with the shared SGD loop). Predictions are
       the argmax over classes of calibrated scores; ``predict_proba`` is their softmax at
       ``temperature``. The default map for images is random convolution features (32
       keyed 5×5 filters, ReLU, average pooling onto a 4×4 grid: 512 features), for other
       inputs random ReLU features (1,024); both are keyed by ``seed``.
    2. **Representative selection by joint entropy** (a reconstruction): greedy
       log-determinant selection on unit-normalised, data-independent features (a keyed
       128-d projection of the model's features), size set by an absolute count
       ``n_selected`` and/or a marginal-gain ``selection_threshold`` (nats). Neither rule
       depends on the class size, so deleting a sample that was never selected leaves the
       selection bitwise unchanged and **retrains nothing**; deleting a selected one
       resumes the greedy from the unchanged prefix and retrains from the first block whose
       content changed. The greedy is compiled (numba; a bit-identical numpy fallback).
    3. **Training-state saving.** Each class's selected samples are split into ``n_blocks``
       blocks of ``ceil(|S_k| / n_blocks)`` samples (the last may be shorter). With
       ``blocks="incremental"`` block ``b`` trains on its own samples starting from block
       ``b-1``'s state; with ``"cumulative"`` on blocks ``0..b`` (SISA's slicing and epoch
       schedule). ``"auto"``: incremental for the Gaussian (its statistics merge exactly),
       cumulative for SVDD (SGD forgets). A content-addressed checkpoint follows every
       block; checkpoints that saw a forgotten id are purged.
    4. **Sorting.** With ``deletion_prior`` (metadata, never the model) samples are ordered
       by prior, likely-deleted last, so their deletions only retrain late blocks; ties, and
       everything when there is no prior, are ordered by greedy selection rank
       (``order="greedy"``, the default with selection: deleting the r-th pick keeps every
       block before its block) or by a keyed hash of ``(seed, id)`` (``order="hash"``, the
       default without selection).

    Features are computed once per sample (row-independent kernels: the same bits alone or
    in a batch) and committed with the model with each class's selection trace, so a
    reopened store forgets as cheaply as the process that fitted it. The resolved
    ``"auto"`` values are recorded in the store's manifest (``resolved``).

    **Guarantee:** exact and history independent in every setting:
    ``ARCANE(**p).fit(D).forget(F)`` equals ``ARCANE(**p).fit(D.drop(F))`` bit for bit on CPU
    (same thread count), after any sequence of requests. The block plan is a pure function
    of each class's retained ids, their data-independent features and the parameters, and
    the generic machinery retrains every block whose content changed.

    **Cost per request:** classes without a forgotten id are untouched. For a class with
    forgotten ids: if none was selected, nothing is retrained (the class's stored
    features and trace lose the forgotten rows); otherwise the greedy resumes at the first
    forgotten pick ``r`` (``O(n_k·(m-r)·p)``: ~0.1-0.3 s for a 6,000-image MNIST class) and
    the class retrains from its first changed block. Storage: ``K·n_blocks`` checkpoints,
    2.5 KB of features per sample, a few MB of selection trace per class.

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
        features: the data-independent feature map of the Gaussian learner (the selection
            uses a 128-d projection of it): ``"auto"`` (``"conv"`` for ``(C, H, W)`` images
            of at least 8×8, ``"relu"`` otherwise), ``"conv"``, ``"relu"``,
            ``"projection"`` (a keyed Gaussian random projection) or ``"pixels"``.
        feature_dim: output dimension of the map (``None``: 512 for conv, 1,024 for relu,
            128 for projection; conv needs a multiple of 16).
        n_blocks: checkpointed blocks per class.
        blocks: ``"auto"``, ``"incremental"`` or ``"cumulative"`` (see 3.).
        sorting: order blocks by ``deletion_prior`` (``False`` ignores the prior, for
            ablations).
        deletion_prior: ``None``; a callable ``f(ids) -> values`` (one float per id, the value
            of an id must not depend on the other ids passed); a mapping ``{id: value}``
            (missing ids get 0); or a 1-D array indexed **by id** (``prior[id]``). Larger
            values mean "more likely to be deleted". It must come from metadata (consent
            status, account age), never from the model, or the guarantee is void.
        order: tie-break order inside a prior level: ``"auto"`` (greedy with selection,
            hash without), ``"greedy"`` (greedy rank; needs selection) or ``"hash"``.
        shrinkage: the Gaussian learner's covariance shrinkage towards a scaled identity
            (``"auto"``: 0.005 for conv features, 0.05 otherwise).
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
        Ruff et al., "Deep One-Class Classification", ICML 2018 (SVDD); Minoux, "Accelerated
        greedy algorithms for maximizing submodular set functions", 1978 (lazy greedy);
        Rahimi & Recht, "Random features for large-scale kernel machines", NIPS 2007.
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
        "features": [Options(("auto", *KINDS))],
        "feature_dim": [None, Interval(int, 1, None)],
        "n_blocks": [Interval(int, 1, None)],
        "blocks": [Options(("auto", "cumulative", "incremental"))],
        "sorting": [bool],
        "deletion_prior": [None, Check(is_prior, "a callable, a mapping {id: value} or a "
                                                  "numpy array indexed by id")],
        "order": [Options(("auto", "hash", "greedy"))],
        "shrinkage": [Options(("auto",)), Interval(float, 0, 1, closed="both")],
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
        n_selected: int | None = 1000,
        selection_threshold: float | None = None,
        selection_noise: float = 0.1,
        features: str = "auto",
        feature_dim: int | None = None,
        n_blocks: int = 5,
        blocks: str = "auto",
        sorting: bool = True,
        deletion_prior: DeletionPrior | None = None,
        order: str = "auto",
        shrinkage: float | str = "auto",
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

    #: the class states (features, selections) of the request being built, on that build's
    #: own copy of the strategy (see :meth:`_build`), never on the live one: the block hooks
    #: trained in this process read features from them instead of computing them again
    _states: Mapping[int, ClassState] = MappingProxyType({})

    def __getstate__(self) -> dict[str, Any]:
        # a build's states hold every sample's features: never pickled (executor workers
        # compute the features of their rows, the same bits)
        state = dict(self.__dict__)
        state.pop("_states", None)
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
                "selection=True; use order='hash' (or 'auto') with selection=False."
            )
        if self.features == "conv" and self.feature_dim is not None and self.feature_dim % 16:
            raise InvalidParameterError(
                f"feature_dim={self.feature_dim} with features='conv' must be a multiple of 16 "
                "(filters x a 4x4 pooling grid), e.g. 512."
            )
        if self.learner == "svdd" and self.blocks_mode == "cumulative":
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
        # fail before anything is written: a map that cannot embed these inputs, a bad prior
        self.feature_map(dataset.input_shape).check_input(dataset.input_shape)
        self._prior_values(dataset.ids)

    @property
    def calibration_method(self) -> str:
        """The calibration in use (``"auto"`` resolved for the learner)."""
        if self.calibration != "auto":
            return str(self.calibration)
        return "raw" if self.learner == "gaussian" else "zscore"

    @property
    def blocks_mode(self) -> str:
        """``blocks`` resolved: incremental for the Gaussian, cumulative for SVDD."""
        if self.blocks != "auto":
            return str(self.blocks)
        return "incremental" if self.learner == "gaussian" else "cumulative"

    @property
    def order_mode(self) -> str:
        """``order`` resolved: greedy rank with selection, keyed hash without."""
        if self.order != "auto":
            return str(self.order)
        return "greedy" if self.selection else "hash"

    def feature_map(self, input_shape: tuple[int, ...]) -> FeatureMap:
        """The data-independent feature map for inputs of ``input_shape``."""
        kind = resolve_kind(str(self.features), tuple(input_shape))
        return FeatureMap(kind, None if self.feature_dim is None else int(self.feature_dim),
                          int(self.seed))

    def shrinkage_value(self, input_shape: tuple[int, ...]) -> float:
        """``shrinkage`` resolved for the feature map of ``input_shape``."""
        if self.shrinkage != "auto":
            return float(self.shrinkage)
        return AUTO_SHRINKAGE[self.feature_map(input_shape).kind]

    def resolved_params(self, input_shape: tuple[int, ...]) -> dict[str, Any]:
        """Every ``"auto"``/``None`` default as used for inputs of ``input_shape``."""
        fmap = self.feature_map(input_shape)
        return {"features": fmap.kind, "feature_dim": fmap.out_dim(tuple(input_shape)),
                "blocks": self.blocks_mode, "order": self.order_mode,
                "shrinkage": self.shrinkage_value(input_shape),
                "calibration": self.calibration_method}

    def _prepare_store(self, store: Store, dataset: IndexedDataset) -> None:
        super()._prepare_store(store, dataset)
        # record what every "auto" resolved to, while the manifest is still provisional
        # (its digest is committed with the fit, and it is immutable after)
        manifest = store.read_manifest() or {}
        resolved = self.resolved_params(dataset.input_shape)
        if store.read_state() is None and manifest.get("resolved") != resolved:
            store.write_manifest({**manifest, "resolved": resolved})

    def _context(self, data: IndexedDataset) -> str:
        # the state format is part of what a checkpoint was computed with: checkpoints of
        # an older ARCANE (other features, other selection) are never reused
        from expunge.strategies.exact._class_state import FORMAT

        return hashlib.sha256(f"{super()._context(data)}|{FORMAT}".encode()).hexdigest()

    # ---------------------------------------------------------------- prior
    def _prior_values(self, ids: np.ndarray) -> np.ndarray | None:
        """The deletion prior of each id (float64), or ``None`` without sorting by prior."""
        return prior_values(self.deletion_prior, bool(self.sorting), ids)

    # -------------------------------------------------- features and selection
    def _state_key(self, input_shape: tuple[int, ...]) -> str:
        """Everything a class state (features, selection) is a function of, besides its ids."""
        fmap = self.feature_map(input_shape)
        return json.dumps([fmap.kind, fmap.out_dim(tuple(input_shape)), fmap.seed, self.learner,
                           self.selection, self.n_selected, self.selection_threshold,
                           self.selection_noise])

    def _features_of(self, data: IndexedDataset) -> tuple[np.ndarray | None, np.ndarray | None]:
        """:meth:`_compute_features` of ``data``'s model inputs, a chunk of rows at a time
        (the kernels are row-independent: the same bits as all rows at once, without a
        float32 copy of the class in memory)."""
        if len(data) == 0:
            return self._compute_features(data.inputs())
        parts = [self._compute_features(x) for x in data.iter_inputs()]
        density, select = ([p[c] for p in parts] for c in (0, 1))
        return (None if density[0] is None else np.concatenate(density),  # type: ignore[arg-type]
                None if select[0] is None else np.concatenate(select))  # type: ignore[arg-type]

    def _compute_features(self, X: torch.Tensor) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(model features, selection features) of the rows ``X``, float32; ``None`` if unused."""
        if self.learner != "gaussian" and not self.selection:
            return None, None
        density = self.feature_map(tuple(X.shape[1:])).rowwise(X)
        select = selection_features(density, int(self.seed)) if self.selection else None
        return (density if self.learner == "gaussian" else None), select

    def _class_states(
        self, data: IndexedDataset, store: Store | None, previous: FittedModel | None,
    ) -> tuple[dict[int, ClassState], dict[int, str], dict[str, int]]:
        """Each class's state for ``data``, derived from ``previous``'s where it applies.

        Returns the states, what happened per class (``"unchanged"``, ``"kept"``: rows
        dropped but no selected id left, ``"resumed"`` or ``"selected"``) and, for resumed
        classes, the rank the greedy resumed at.
        """
        key = self._state_key(data.input_shape)
        labels = data.y.numpy()
        old = previous.classes if isinstance(previous, ARCANEModel) else {}
        states: dict[int, ClassState] = {}
        log: dict[int, str] = {}
        resumed_at: dict[str, int] = {}
        for k in range(data.n_classes):
            ids = np.sort(data.ids[labels == k])
            prev = old.get(k)
            if prev is not None and (np.array_equal(prev.ids, ids) if prev.ids is not None
                                     else prev.blobs.get("ids") == ids_digest(key, k, ids)):
                if self.selection and prev.selection is None and store is not None:
                    # after a reopen: the plan needs the picks (a few KB), nothing more
                    picks = read_selection(store, key, k, prev.blobs)
                    prev = None if picks is None else dataclasses.replace(prev, selection=picks)
                if prev is not None:
                    states[k], log[k] = prev, "unchanged"
                    continue
                prev = old[k]  # the picks did not check out: select the class again

            def compute(rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
                return self._features_of(data.select(rows))

            unloaded = prev is not None and (prev.ids is None or (
                prev.density is None and prev.select is None and "features" in prev.blobs))
            if prev is not None and unloaded and store is not None:  # after a reopen
                kept = self._kept_unloaded(store, key, k, prev, ids)
                if kept is not None:  # no pick left: drop rows, read nothing else
                    states[k], log[k] = kept, "kept"
                    continue
                base = read_state(store, key, k, prev.blobs, ids, compute)
                before = getattr(self, "data_", None)
                if before is not None:  # rewrite only the feature buckets that lost rows
                    old_ids = np.sort(before.ids[before.y.numpy() == k])
                    base = dataclasses.replace(base, removed=np.setdiff1d(old_ids, ids))
            elif prev is not None and prev.ids is not None and \
                    np.isin(ids, prev.ids, assume_unique=True).all():
                base = prev.keep(ids)
            else:
                base = ClassState(ids, *compute(ids))
            result = None
            log[k] = "kept"
            if self.selection:
                assert base.select is not None
                result = greedy_logdet(
                    base.select, ids, n_select=self.n_selected,
                    threshold=self.selection_threshold, noise=float(self.selection_noise),
                    resume=base.selection,
                )
                if base.selection is None:
                    log[k] = "selected"
                elif result.ids is not base.selection.ids:
                    log[k] = "resumed"
                    alive = np.isin(base.selection.ids, ids, assume_unique=True)
                    resumed_at[str(k)] = int(np.argmin(alive))
            states[k] = dataclasses.replace(base, selection=result)
        return states, log, resumed_at

    def _kept_unloaded(self, store: Store, key: str, k: int, prev: ClassState,
                       ids: np.ndarray) -> ClassState | None:
        """Class ``k`` after a reopen, when only unselected ids left it: its picks and
        trace (without the forgotten entries), its feature blobs marked for the forgotten
        rows to be dropped; the features themselves are not read. ``None`` otherwise."""
        before = getattr(self, "data_", None)  # the committed data ``prev`` belongs to
        if not self.selection or before is None or "features" not in prev.blobs:
            return None
        picks = read_selection(store, key, k, prev.blobs, with_trace=True)
        if picks is None or not np.isin(picks.ids, ids, assume_unique=True).all():
            return None
        old_ids = np.sort(before.ids[before.y.numpy() == k])
        if not np.isin(ids, old_ids, assume_unique=True).all():
            return None
        trace = picks.trace
        if trace is not None:
            at = np.searchsorted(trace.candidates, ids)
            ok = at.size == 0 or (at.max() < len(trace.candidates) and
                                  np.array_equal(trace.candidates[at], ids))
            trace = trace.without(at) if ok else None
        selection = dataclasses.replace(picks, trace=trace)
        removed = np.setdiff1d(old_ids, ids, assume_unique=True)
        return ClassState(ids, selection=selection, blobs=dict(prev.blobs), removed=removed)

    def _density_of(self, k: int, data: IndexedDataset) -> torch.Tensor:
        """The model features of ``data``'s rows (class ``k``), from the build's states when
        they hold them, else computed (executor workers): the same bits either way."""
        state = self._states.get(k)
        if state is not None and state.density is not None and state.ids is not None:
            rows = state.rows(data.ids)
            if rows.size == 0 or (rows.max() < len(state.ids) and
                                  np.array_equal(state.ids[rows], data.ids)):
                return torch.from_numpy(state.density[rows].astype(np.float64))
        fmap = self.feature_map(data.input_shape)
        chunks = [fmap.rowwise(x) for x in data.iter_inputs()]
        phi = np.concatenate(chunks) if chunks else fmap.rowwise(data.inputs())
        return torch.from_numpy(phi.astype(np.float64))

    # ----------------------------------------------------------------- plans
    def _plans(self, data: IndexedDataset) -> list[BlockPlan]:
        return self._plans_for(data, self._class_states(data, None, None)[0])

    def _plans_for(self, data: IndexedDataset, states: Mapping[int, ClassState]
                   ) -> list[BlockPlan]:
        """The block plans of ``data`` given its class states (selections)."""
        n_blocks = int(self.n_blocks)
        cumulative = self.blocks_mode == "cumulative"
        if self.learner == "gaussian":
            epochs = (1,) * n_blocks  # one pass of statistics per block; no SGD
        elif cumulative:
            epochs = tuple(epoch_schedule(int(self.epochs), n_blocks))
        else:
            epochs = (int(self.epochs),) * n_blocks
        order_key = derive_key(int(self.seed), "arcane-order")
        labels = data.y.numpy()
        plans = []
        for k in range(data.n_classes):
            state = states[k]
            if state.selection is not None:
                selected = state.selection.ids
            else:  # every retained sample of the class (the state may not be loaded)
                selected = state.ids if state.ids is not None else np.sort(data.ids[labels == k])
            prior = self._prior_values(selected)
            secondary = np.arange(len(selected)) if self.order_mode == "greedy" \
                else keyed_hash(order_key, selected)
            # lexsort: last key is primary -> (prior, greedy rank or hash, id)
            keys: list[np.ndarray] = [selected, secondary]
            if prior is not None:
                keys.append(prior)
            ordered = selected[np.lexsort(tuple(keys))]
            size = max(1, math.ceil(len(ordered) / n_blocks))
            blocks = tuple(np.sort(ordered[b * size:(b + 1) * size]) for b in range(n_blocks))
            plans.append(BlockPlan(blocks=blocks, epochs=epochs, cumulative=cumulative))
        return plans

    # ----------------------------------------------------------------- hooks
    def _new_module(self, submodel: int, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        if self.learner == "gaussian":
            return GaussianDensity(self.feature_map(input_shape), tuple(input_shape))
        # the recipe's seeded network with rep_dim outputs: (seed, class) decide its init
        return SVDDHead(self.initial_network(input_shape, int(self.rep_dim), submodel),
                        int(self.rep_dim))

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
            phi = self._density_of(submodel, data)
            if self.blocks_mode == "cumulative":
                module.fit_features(phi)
            else:
                module.merge_features(phi)
            progress.advance(task, epochs)
            return
        assert isinstance(module, SVDDHead)
        module.init_center(data.inputs())  # fixed once, from the first block with data
        super()._train_block(submodel, block, module, optimizer, data, epochs, progress, task)

    def _finalize(
        self, submodel: int, module: nn.Module, data: IndexedDataset
    ) -> dict[str, torch.Tensor]:
        if len(data) == 0:
            return {}
        extras: dict[str, torch.Tensor] = {}
        if isinstance(module, GaussianDensity):
            extras.update(module.density(self.shrinkage_value(data.input_shape)))
            raw = module.score_features(self._density_of(submodel, data), extras)
        else:
            raw = module.score(data.inputs(), extras)  # type: ignore[operator]
        extras.update(calibration_stats(raw))
        return extras

    def _class_scores(self, submodels: Sequence[Submodel], X: torch.Tensor) -> torch.Tensor:
        """Calibrated score of every input under every class, ``(n, K)`` float64."""
        phi = None
        if any(isinstance(s.module, GaussianDensity) for s in submodels):
            # the features once for all classes (not once per class)
            phi = torch.from_numpy(self.feature_map(tuple(X.shape[1:])).rowwise(X)
                                   .astype(np.float64))
        columns = []
        for s in submodels:
            if s.n_trained == 0 or not s.extras:
                columns.append(torch.full((X.shape[0],), EMPTY_SCORE, dtype=torch.float64))
                continue
            if isinstance(s.module, GaussianDensity):
                assert phi is not None
                raw = s.module.score_features(phi, s.extras)
            else:
                raw = s.module.score(X, s.extras)  # type: ignore[operator]
            columns.append(calibrate(raw, s.extras, self.calibration_method))
        return torch.stack(columns, dim=1)

    def _aggregate(self, submodels: Sequence[Submodel], X: torch.Tensor) -> torch.Tensor:
        return aggregate(self._class_scores(submodels, X), float(self.temperature))

    # ----------------------------------------------------------- fit/forget
    def _build(
        self, data: IndexedDataset, store: Store, progress: Progress,
        previous: ShardedModel | None,
    ) -> tuple[ShardedModel, ForgetStats]:
        started = time.perf_counter()
        states, log, resumed_at = self._class_states(data, store, previous)
        prepared = time.perf_counter() - started
        hooks = copy.copy(self)  # this build's copy: the live strategy is never changed
        hooks._states = states
        model, stats = self._train_build(data, store, progress, previous,
                                         self._plans_for(data, states), hooks)
        key = self._state_key(data.input_shape)
        committed = {k: state if log[k] == "unchanged" else write_state(store, key, k, state)
                     for k, state in states.items()}
        fitted = ARCANEModel(model, committed, previous)
        fitted.extra_state = {"classes": {str(k): s.blobs for k, s in committed.items()}}
        fitted.extra_blobs = frozenset().union(*(blob_names(s.blobs) for s in committed.values()))
        fitted.info = {"features_and_selection_seconds": prepared}
        details = dict(stats.details)
        details["classes_reselected"] = sorted(k for k, v in log.items()
                                               if v in ("selected", "resumed"))
        details["reselected_from_rank"] = resumed_at
        return fitted, dataclasses.replace(stats, details=details)

    def _restore(self, state: dict[str, Any], store: Store) -> ShardedModel:
        model = super()._restore(state, store)
        committed = {int(k): ClassState(None, blobs=dict(blobs))
                     for k, blobs in (state.get("classes") or {}).items()}
        fitted = ARCANEModel(model, committed)
        fitted.extra_state = {"classes": {str(k): s.blobs for k, s in committed.items()}}
        fitted.extra_blobs = frozenset().union(*(blob_names(s.blobs) for s in committed.values()))
        return fitted

    def _forget(
        self, fitted: FittedModel, ids: np.ndarray, retained: IndexedDataset,
        store: Store, progress: Progress,
    ) -> tuple[ShardedModel, ForgetStats]:
        model, stats = super()._forget(fitted, ids, retained, store, progress)
        labels = self.data_.y.numpy()[np.isin(self.data_.ids, ids)]
        details = dict(stats.details)
        details["classes_touched"] = sorted({int(c) for c in labels.tolist()})
        return model, dataclasses.replace(stats, details=details)

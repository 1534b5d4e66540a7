"""PUMA: Performance Unchanged Model Augmentation (Wu, Hashemi & Srinivasa, AAAI 2022).

The strategy class: parameters, ``fit`` (train, then build the per-bucket cache and choose
the damping), ``forget`` (one request, :mod:`._request`), ``refresh`` and ``from_model``.
The mathematics lives beside it: the patch (:mod:`._patch`), the re-weighting
(:mod:`.reweighting`), the cache and its disk rule (:mod:`._cache`), the curvature
(:mod:`expunge.strategies.approximate.curvature`). ``docs/puma.md`` explains the design.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from expunge._progress import Progress
from expunge._validation import Check, Constraint, Interval, Options
from expunge.data import IndexedDataset
from expunge.exceptions import InvalidParameterError, InvalidRequestError
from expunge.models import ModelSpec, module_fingerprint
from expunge.store import Store
from expunge.strategies._params import COMMON_CONSTRAINTS
from expunge.strategies._recipe import RECIPE_CONSTRAINTS, TrainingRecipe
from expunge.strategies.approximate._finite import require_finite
from expunge.strategies.approximate.puma import _request
from expunge.strategies.approximate.puma._cache import VALIDATION_KEY, keyed_subset
from expunge.strategies.approximate.puma._model import PumaModel
from expunge.strategies.approximate.puma._precompute import Linearisation, build_cache
from expunge.strategies.base import FittedModel, ForgetStats, UnlearningStrategy
from expunge.strategies.registry import register_strategy
from expunge.training import EpochKey, make_optimizer, pinned_threads, train_epochs

#: torch intra-op threads for training (the exact strategies' default ``threads_per_job``)
TRAIN_THREADS = 1
#: ``newton_steps="auto"``: a request forgetting at least this fraction of the training
#: split gets a corrective second step. The first step is first order; a single sample's
#: is accurate through the network (its predicted leave-one-out logits match the patched
#: network's), but a batch's step is large enough for the network's curvature to bend it:
#: on E3's memorising MLP (250 of 4,900 forgotten) one step left a forget-set error of
#: 9.6 % against retraining's 5.6 %, and one corrective step 5.6 % (docs/puma.md)
CORRECTION_FRACTION = 1e-3


def _is_number_text(value: Any) -> bool:
    """A damping given as text by the CLI (``--damping 1e-4``)."""
    if not isinstance(value, str):
        return False
    try:
        return float(value) >= 0
    except ValueError:
        return False


def _is_count_text(value: Any) -> bool:
    """A step count given as text by the CLI (``--newton-steps 2``)."""
    return isinstance(value, str) and value.isdigit() and int(value) >= 1


def _is_dataset_record(value: Any) -> bool:
    """``validation`` as recorded in a store's manifest (reopened strategies)."""
    return isinstance(value, dict) and set(value) == {"dataset_fingerprint"}


_TRAINING = {**RECIPE_CONSTRAINTS, **COMMON_CONSTRAINTS}

CURVATURE_CONSTRAINTS: dict[str, list[Constraint]] = {
    **_TRAINING,
    "model": [str, Check(callable, "a registered name, a callable or an nn.Module")],
    "validation": [None, Check(lambda v: isinstance(v, IndexedDataset) or _is_dataset_record(v),
                               "an IndexedDataset of held-out samples")],
    "val_fraction": [Interval(float, 0, 1, closed="left")],
    "solver": [Options(("kfac", "cholesky", "cg", "lissa"))],
    "damping": [Options(("auto",)), Interval(float, 0, None),
                Check(_is_number_text, "a number >= 0 given as text")],
    "scope": [Options(("all", "last_layer"))],
    "hessian": [Options(("ggn", "exact"))],
    "cache_samples": [None, Interval(int, 1, None)],
    "preconditioner": [Options(("kfac", "none"))],
    "tol": [Interval(float, 0, 1, closed="neither")],
    "max_iter": [Interval(int, 1, None)],
    "lissa_depth": [Interval(int, 1, None)],
    "lissa_batch": [Interval(int, 1, None)],
    "patch_hessian": [Options(("reweighted", "original"))],
    "newton_steps": [Options(("auto",)), Interval(int, 1, None),
                     Check(_is_count_text, "a count >= 1 given as text")],
    "class_newton_steps": [Interval(int, 1, None)],
    "retained_guard": [None, Interval(float, 0, None)],
    "refresh_after": [None, Interval(float, 0, None)],
    "dtype": [Options(("auto", "float64", "float32"))],
}


#: the most parameters solver="cholesky" factorises densely (8192^2 float64 = 512 MiB)
DENSE_LIMIT = 8192


@register_strategy
class PUMA(TrainingRecipe, UnlearningStrategy):
    """PUMA: remove samples with an influence patch of the whole network, re-weighting a few
    retained samples so that a performance criterion stays unchanged (Wu, Hashemi &
    Srinivasa, AAAI 2022; ALGORITHMS.md section 1, a reconstruction: the paper's full text
    was not available).

    **fit** holds out a small criterion set (``val_fraction`` of the ids by a keyed hash, or
    the samples of ``validation``; never trained on), trains the model on the rest with the
    library's deterministic loop (bit for bit the model :class:`~expunge.Retrain` trains on
    the same samples), then caches, per id-bucket, the K-FAC factor sums of the whole
    network and the gradient sums over a keyed curvature sample of ``cache_samples``
    training rows, and the criterion's gradient sums; and chooses the damping by the
    leave-one-out rule (``damping="auto"``).

    **forget(ids)**, in work bounded by the request, not by the training set:

    1. recompute, on their retained rows, the id-buckets that hold a forgotten sample of the
       curvature sample or the criterion set (the disk rule);
    2. score a keyed candidate set of ``candidates`` retained samples, ``s_j = grad C^T
       H^-1 grad l_j``, and re-weight a few of them (extra weight ``e_j`` in ``[-1, eta]``,
       L1-sparse, in closed form) so that the linearised criterion is unchanged;
    3. patch with the gradient difference of the request and renormalised weights:
       ``theta <- theta - H^-1 u``, ``u = (1/Z) [sum_j e_j (g_j - g_bar) - sum_M (g_i -
       g_bar)]`` (:mod:`._patch`), ``H`` the retained K-FAC curvature plus weight decay
       plus the damping;
    4. after ``refresh_after`` of the training split has been forgotten since the last
       refresh, rebuild the whole cache at the new parameters (reported in ``details``).

    Whole-class removal is detected (a request that leaves a class with no training
    sample); the class leaves the criterion, and ``class_newton_steps`` damped Newton steps
    follow the first. :meth:`forget_class` builds such a request.

    **Guarantee: approximate.** Nothing is certified: the patch is a first-order estimate
    of retraining; the re-weighting deliberately moves away from it to keep the criterion.
    Guaranteed: after a request no stored number was computed from a forgotten sample's row
    (touched buckets are recomputed on retained rows and the old blobs purged), requests
    are all-or-nothing, and the same inputs give the same bits on the same machine.

    **Cost.** Fit: training plus the precompute (K-FAC over the curvature sample: one
    forward and ``K`` backward passes over ``cache_samples`` rows; the eigendecompositions;
    the damping rule). Per request: gradients of the forgotten samples, the touched
    buckets' rows (about ``cache_samples / 16`` per touched bucket), the candidates' scores,
    two K-FAC solves; no pass over the training set. The exact solvers (``"cholesky"``,
    ``"cg"``, ``"lissa"``) pass over every training row per request: for small models and
    tests. ``docs/puma.md`` has measured numbers.

    Args:
        model, model_params, epochs, batch_size, lr, optimizer, momentum, seed: as for
            :class:`~expunge.Retrain`; ``model`` may also be an ``nn.Module`` instance (fit
            trains a copy; :meth:`from_model` wraps one without training).
        weight_decay: L2 weight of the training objective (part of what the patch
            differentiates; also the base damping of the curvature). Default 5e-4.
        validation: held-out samples for the criterion (their ids must not be training
            ids); they join the strategy's data as criterion samples, are never trained on,
            and can be forgotten. Default ``None``: hold out ``val_fraction``.
        val_fraction: fraction of the ids held out as the criterion set when no
            ``validation`` is given. Default 0.02: small, so that the base model is close to
            one trained on everything.
        eta: box radius of the re-weighting (a candidate's weight grows at most ``1 +
            eta`` times; the paper's "Resistance" knob).
        sparsity: the L1 weight as a fraction of the smallest weight giving no
            re-weighting (1 = naive removal, 0 = compensate as far as the box allows).
        criterion: ``"loss"`` (mean validation CE) or ``"per_class_loss"`` (one per class).
        candidates: size of the keyed candidate set the re-weighting chooses from.
        solver: ``"kfac"`` (default: cached K-FAC of the whole network), or the exact
            ``"cholesky"`` (dense), ``"cg"``, ``"lissa"``.
        damping: ``"auto"`` (K-FAC: the leave-one-out rule; exact solvers: none beyond the
            weight decay) or a number added to the curvature's eigenvalues.
        scope: ``"all"`` parameters, or ``"last_layer"`` (features frozen).
        hessian: ``"ggn"`` or ``"exact"`` (exact solvers only).
        cache_samples: rows of the curvature sample (``None``: every training row).
        preconditioner: ``"kfac"`` or ``"none"``, for ``solver="cg"``.
        tol, max_iter, lissa_depth, lissa_batch: the exact solvers' controls.
        pgd_steps: step cap of the re-weighting solver with several criteria.
        patch_hessian: ``"reweighted"`` (the retained curvature) or ``"original"``.
        newton_steps: patch steps for point removal: ``"auto"`` takes one corrective step
            after the first when the request forgets at least 0.1 % of the training split
            (:data:`CORRECTION_FRACTION`), else none; or a count.
        class_newton_steps: patch steps for whole-class removal.
        retained_guard: a batch's first step (at least 0.1 % of the training split) is
            halved until it raises the retained objective (mean loss plus L2 over the
            retained rows of the curvature sample) by at most this fraction; ``None``
            takes the whole step. Default 1.0 (at most doubled): a step that overshoots
            multiplies it (40 % of MNIST removed: 8.4x, the model collapses), while the
            right patch for the 5 % most memorised samples raises it 1.38x and a tighter
            guard (0.1) there leaves a quarter of them recognised (:func:`._patch.refine`,
            docs/puma.md).
        refresh_after: fraction of the training split forgotten since the last full
            refresh after which a request ends with one (``None``: only :meth:`refresh`).
        dtype: ``"auto"`` (float32 for K-FAC, float64 for the exact solvers), or explicit.
        store, show_progress: as for every strategy.

    References:
        Wu, Hashemi & Srinivasa, "PUMA: Performance Unchanged Model Augmentation for
        Training Data Removal", AAAI 2022; Koh & Liang, ICML 2017 (influence functions);
        Guo et al., ICML 2020 (Newton removal); Martens & Grosse, ICML 2015 (K-FAC);
        Grosse & Martens, ICML 2016 (K-FAC for convolutions).
    """

    name = "puma"
    guarantee = "approximate"
    #: act only when a request is computed (the fit and its cache do not depend on them):
    #: expunge.open may change them; each forget records the values it used
    _request_params = frozenset({"eta", "sparsity", "pgd_steps", "candidates", "newton_steps",
                                 "class_newton_steps", "retained_guard", "refresh_after",
                                 "patch_hessian", "tol", "max_iter", "lissa_depth",
                                 "lissa_batch"})
    summary = ("approximate: whole-network influence patch with re-weighting that keeps a "
               "validation criterion unchanged (PUMA)")
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **CURVATURE_CONSTRAINTS,
        "eta": [Interval(float, 0, None)],
        "sparsity": [Interval(float, 0, 1)],
        "criterion": [Options(("loss", "per_class_loss"))],
        "candidates": [Interval(int, 0, None)],
        "pgd_steps": [Interval(int, 1, None)],
    }
    #: whether forget re-weights retained samples (False: naive influence removal)
    reweights: ClassVar[bool] = True
    #: set by from_model for the duration of its fit: wrap, do not train
    _pretrained: bool = False

    def __init__(
        self,
        model: ModelSpec | nn.Module = "mlp",
        *,
        model_params: dict[str, Any] | None = None,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 0.05,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 5e-4,
        seed: int = 0,
        validation: IndexedDataset | None = None,
        val_fraction: float = 0.02,
        eta: float = 1.0,
        sparsity: float = 0.05,
        criterion: str = "loss",
        candidates: int = 256,
        solver: str = "kfac",
        damping: float | str = "auto",
        scope: str = "all",
        hessian: str = "ggn",
        cache_samples: int | None = 1024,
        preconditioner: str = "kfac",
        tol: float = 1e-5,
        max_iter: int = 200,
        lissa_depth: int = 1000,
        lissa_batch: int = 256,
        pgd_steps: int = 1000,
        patch_hessian: str = "reweighted",
        newton_steps: int | str = "auto",
        class_newton_steps: int = 5,
        retained_guard: float | None = 1.0,
        refresh_after: float | None = 0.1,
        dtype: str = "auto",
        store: str | Path | None = None,
        show_progress: bool = False,
    ) -> None:
        self.model = model
        self.model_params = model_params
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.seed = seed
        self.validation = validation
        self.val_fraction = val_fraction
        self.eta = eta
        self.sparsity = sparsity
        self.criterion = criterion
        self.candidates = candidates
        self.solver = solver
        self.damping = damping
        self.scope = scope
        self.hessian = hessian
        self.cache_samples = cache_samples
        self.preconditioner = preconditioner
        self.tol = tol
        self.max_iter = max_iter
        self.lissa_depth = lissa_depth
        self.lissa_batch = lissa_batch
        self.pgd_steps = pgd_steps
        self.patch_hessian = patch_hessian
        self.newton_steps = newton_steps
        self.class_newton_steps = class_newton_steps
        self.retained_guard = retained_guard
        self.refresh_after = refresh_after
        self.dtype = dtype
        self.store = store
        self.show_progress = show_progress

    # ------------------------------------------------------------ parameters
    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"model": "logreg", "epochs": 3, "batch_size": 32, "lr": 0.1, "momentum": 0.9,
                "val_fraction": 0.1, "solver": "cholesky"}

    def _check_params(self) -> None:
        explicit = self._explicit_validation() is not None
        if self.reweights and self.val_fraction <= 0 and not explicit:
            raise InvalidParameterError(
                f"{type(self).__name__} needs validation samples for its criterion; got "
                f"val_fraction={self.val_fraction!r}. Use a value in (0, 1), e.g. 0.02, or "
                "pass validation=<an IndexedDataset of held-out samples>."
            )
        if self.solver == "kfac" and self.hessian != "ggn":
            raise InvalidParameterError(
                f"solver='kfac' approximates the Gauss-Newton matrix; hessian={self.hessian!r} "
                "needs an exact solver: solver='cholesky', 'cg' or 'lissa'."
            )

    def recorded_params(self) -> dict[str, Any]:
        params = super().recorded_params()
        if isinstance(self.validation, IndexedDataset):
            params["validation"] = {"dataset_fingerprint": self.validation.fingerprint()}
        return params

    def _explicit_validation(self) -> IndexedDataset | None:
        return self.validation if isinstance(self.validation, IndexedDataset) else None

    @property
    def uses_kfac_solver(self) -> bool:
        """Whether the patch solves with the cached K-FAC inverse (the fast path)."""
        return self.solver == "kfac"

    @property
    def needs_kfac(self) -> bool:
        """Whether the cache keeps K-FAC factor sums (K-FAC solver or CG preconditioner)."""
        return self.solver == "kfac" or (self.solver == "cg" and self.preconditioner == "kfac")

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float32 if self.uses_kfac_solver else torch.float64
        return torch.float64 if self.dtype == "float64" else torch.float32

    def damping_value(self, default: float) -> float:
        """The fixed damping, or ``default`` for ``damping="auto"``."""
        return default if self.damping == "auto" else float(self.damping)

    @staticmethod
    def corrects(m: int, n_train: int) -> bool:
        """Whether forgetting ``m`` of ``n_train`` is a batch large enough for the network's
        curvature to bend the first-order step (:data:`CORRECTION_FRACTION`): its first
        step is guarded (``retained_guard``), and ``newton_steps="auto"`` adds a
        corrective step."""
        return m > 1 and m >= CORRECTION_FRACTION * n_train

    def point_steps(self, m: int, n_train: int) -> int:
        """Patch steps for a point removal of ``m`` of ``n_train`` training samples."""
        if self.newton_steps == "auto":
            return 2 if self.corrects(m, n_train) else 1
        return int(self.newton_steps)

    def sample_fraction(self, n_train: int) -> float:
        """The keyed threshold of the curvature sample for a training split of ``n_train``
        (every row for the exact solvers, whose curvature covers every row anyway)."""
        if not self.uses_kfac_solver or self.cache_samples is None:
            return 1.0
        return min(1.0, int(self.cache_samples) / max(n_train, 1))

    # ------------------------------------------------------------ data
    def validation_ids(self, data: IndexedDataset) -> np.ndarray:
        """The ids ``fit(data)`` holds out for the criterion (sorted), known before fitting.

        A keyed hash of ``(seed, id)`` below ``val_fraction`` (the same ids whatever else is
        in ``data``), or the ids of ``validation``. Cost: one hash per id.
        """
        if not isinstance(data, IndexedDataset):
            raise InvalidParameterError(
                f"validation_ids expects an IndexedDataset; got {type(data).__name__}."
            )
        self._validate_params()
        return self._val_ids_for(data)

    def _val_ids_for(self, data: IndexedDataset) -> np.ndarray:
        explicit = self._explicit_validation()
        if explicit is not None:
            return np.sort(np.asarray(explicit.ids, dtype=np.int64))
        if self.val_fraction <= 0:
            return np.empty(0, dtype=np.int64)
        return np.sort(data.ids[keyed_subset(int(self.seed), VALIDATION_KEY, data.ids,
                                             float(self.val_fraction))])

    def fit(self, dataset: IndexedDataset, *, timeout: float | None = None) -> PUMA:
        """Train on ``dataset`` (with ``validation``'s samples as the criterion set, if
        given) and build the cache; see the class docstring. ``timeout``: as for every
        strategy (waiting for the store's write lock). Returns ``self``."""
        self._validate_params()
        if _is_dataset_record(self.validation):
            raise InvalidParameterError(
                "This strategy was reopened from a store; fit needs the validation samples "
                "themselves: pass validation=<the IndexedDataset> again."
            )
        explicit = self._explicit_validation()
        if explicit is not None and isinstance(dataset, IndexedDataset):
            overlap = np.intersect1d(dataset.ids, explicit.ids)
            if overlap.size:
                raise InvalidParameterError(
                    f"The training data and validation share ids {overlap[:10].tolist()}; the "
                    "criterion must be held out. Give validation other ids "
                    "(IndexedDataset(X, y, ids=...))."
                )
            if len(explicit) == 0:
                raise InvalidParameterError("validation is empty; pass held-out samples.")
            n_classes = max(dataset.n_classes, explicit.n_classes)
            dataset = IndexedDataset.concat([
                dataset.with_n_classes(n_classes), explicit.with_n_classes(n_classes),
            ])
        super().fit(dataset, timeout=timeout)
        return self

    def _check_dataset(self, dataset: IndexedDataset) -> None:
        val_ids = self._val_ids_for(dataset)
        n_train = len(dataset) - int(np.isin(dataset.ids, val_ids).sum())
        if n_train == 0:
            raise InvalidParameterError(
                f"val_fraction={self.val_fraction} left no training samples out of "
                f"{len(dataset)}; use a smaller val_fraction."
            )
        if (self.reweights or (self.damping == "auto" and self.uses_kfac_solver)) \
                and len(val_ids) == 0:
            raise InvalidParameterError(
                f"val_fraction={self.val_fraction} selected no validation sample out of "
                f"{len(dataset)}, and {type(self).__name__} needs some (for the criterion, "
                "or for damping='auto'). Use a larger val_fraction, pass validation=..., or "
                "set damping=<a number>."
            )
        if dataset.n_classes < 2:
            raise InvalidParameterError(
                f"{type(self).__name__} needs at least 2 classes; got {dataset.n_classes}."
            )
        if self.solver == "cholesky":  # refuse before training, not after an hour
            n_params = self._params_in_scope(dataset)
            if n_params > DENSE_LIMIT:
                raise InvalidParameterError(
                    f"solver='cholesky' needs a dense {n_params} x {n_params} matrix "
                    f"({n_params} parameters in scope; the limit is {DENSE_LIMIT}). Use "
                    "solver='kfac' (the default) or 'cg', or scope='last_layer'."
                )

    def _params_in_scope(self, dataset: IndexedDataset) -> int:
        """Trainable parameters the curvature covers (``scope``), counted on a fresh build."""
        module = self._architecture(dataset.input_shape, dataset.n_classes)
        if self.scope == "last_layer":
            layers = [m for m in module.modules() if isinstance(m, nn.Linear)]
            if layers:
                return sum(p.numel() for p in layers[-1].parameters() if p.requires_grad)
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    def _architecture(self, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        if isinstance(self.model, nn.Module):
            return copy.deepcopy(self.model)
        # the recipe's seeded network: the same bits as Retrain's (sub-model 0)
        return self.initial_network(input_shape, n_classes)

    # ------------------------------------------------------------ from_model
    @classmethod
    def from_model(cls, module: nn.Module, train: IndexedDataset,
                   val: IndexedDataset | None = None, **params: Any) -> PUMA:
        """Wrap a classifier the user trained on ``train``: nothing is trained.

        The module's weights are the starting point (the patch does not assume they are an
        optimum, see :mod:`._patch`, but they should minimise roughly the mean training CE
        plus ``weight_decay/2 ||theta||^2``). ``val`` (or ``validation=`` in ``params``)
        is the held-out criterion set; without one, ``val_fraction`` of ``train`` is used as
        the criterion set although the model was trained on it. The fit is recorded in
        the ledger with the precompute. Reopen a store with ``expunge.open(path,
        model=module)``.

        Args:
            module: a trained ``nn.Module`` returning logits (copied, not modified).
            train: the data it was trained on.
            val: held-out data for the criterion and the damping rule.
            **params: any constructor parameter but ``model``.
        """
        if not isinstance(module, nn.Module):
            raise InvalidParameterError(
                f"from_model expects a trained torch.nn.Module; got {type(module).__name__}."
            )
        for name, ds in (("train", train), ("val", val)):
            if ds is not None and not isinstance(ds, IndexedDataset):
                raise InvalidParameterError(
                    f"from_model expects '{name}' as an IndexedDataset; got "
                    f"{type(ds).__name__}. Wrap arrays with expunge.data.IndexedDataset(X, y)."
                )
        if "model" in params:
            raise InvalidParameterError("from_model takes the module itself; do not pass model=.")
        if val is not None:
            params["validation"] = val
        strategy = cls(model=copy.deepcopy(module).eval(), **params)
        strategy._pretrained = True
        try:
            strategy.fit(train)
        finally:
            strategy._pretrained = False
        return strategy

    # -------------------------------------------------------------- fit
    def _fit(self, data: IndexedDataset, store: Store, progress: Progress) -> PumaModel:
        val_ids = self._val_ids_for(data)
        train = data.where(~np.isin(data.ids, val_ids))
        module = self._architecture(data.input_shape, data.n_classes)
        started = time.perf_counter()
        passes = 0
        if not self._pretrained:
            config = self.train_config()
            optimizer = make_optimizer(module, config)
            keys = [EpochKey(int(self.seed), 0, 0, e) for e in range(self.epochs)]
            task = progress.task(f"{type(self).__name__}: training", self.epochs)
            # one intra-op thread, as the exact strategies train (the thread count can
            # change the bits of CPU kernels): fit then equals Retrain on the training split
            with pinned_threads(TRAIN_THREADS):
                train_epochs(module, optimizer, train.batches(), train.y, train.ids, config=config,
                             keys=keys, on_epoch=lambda: progress.advance(task))
            passes = len(train) * self.epochs
        module.eval()
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        lin = Linearisation(self, module, data, val_ids, ())
        cache, parts = build_cache(lin, module_fingerprint(module), generation=0,
                                   progress=progress)
        precompute = time.perf_counter() - started
        info = cache.damping_info
        fitted = PumaModel(module, val_ids, cache=cache, sample_passes=passes, info={
            "train_seconds": train_seconds, "precompute_seconds": precompute,
            **{f"precompute_{k}_seconds": v for k, v in parts.items()},
            "solver": self.solver, "n_params_in_scope": lin.curv.size,
            "n_train": lin.n_train, "n_criterion": len(lin.criterion_rows),
            "n_curvature_sample": len(lin.sample_rows),
            "kfac_layers": len(lin.layers or []),
            "params_outside_kfac": int(lin.uncovered.sum()) if lin.layers is not None else 0,
            "damping": cache.damping, "damping_rule": str(info.get("rule")),
            "damping_relative": float(info.get("relative", float("nan"))),
            "damping_status": str(info.get("status", "")),
        })
        fitted.write(store)
        return fitted

    # ------------------------------------------------------------- forget
    def forget_class(self, label: int, *, tag: str | None = None) -> Any:
        """Forget every retained sample labelled ``label`` (training and criterion samples):
        ``forget`` with the class's ids, detected as a whole-class removal."""
        self._require_fitted("forget_class")
        ids = self.data_.ids_of_class(int(label))
        if ids.size == 0:
            raise InvalidRequestError(
                f"No retained sample has label {label!r}; classes with samples: "
                f"{[c for c, k in enumerate(self.data_.class_counts()) if k]}."
            )
        return self.forget(ids, tag=tag)

    def _forget(self, fitted: FittedModel, ids: np.ndarray, retained: IndexedDataset,
                store: Store, progress: Progress) -> tuple[PumaModel, ForgetStats]:
        assert isinstance(fitted, PumaModel)
        new_model, details = _request.forget(self, fitted, ids, retained, progress)
        # before anything is written
        require_finite(new_model.module, self.name, len(ids), self.data_.select(ids).inputs())
        started = time.perf_counter()
        new_model.write(store)  # the model and the recomputed buckets (new blob names)
        seconds = details["seconds"]
        seconds["store_write"] = time.perf_counter() - started
        seconds["strategy_total"] += seconds["store_write"]
        return new_model, ForgetStats(details=details)

    def refresh(self) -> dict[str, Any]:
        """Rebuild the whole cache now, at the current parameters on the retained data.

        What a request does when ``refresh_after`` is reached, on demand (say, off-peak):
        every bucket's sums are recomputed (no drift left), the curvature sample is
        re-drawn for the current training split, and the damping is re-chosen. The new
        cache is written to the store with the next request's commit (a store reopened
        before then uses the previous cache, which is complete and carries no forgotten
        sample either). The model does not change.

        Returns:
            The seconds of each part and the damping chosen.
        """
        self._require_fitted("refresh")
        fitted = self.fitted_
        assert isinstance(fitted, PumaModel) and fitted.cache is not None
        progress = Progress(bool(self.show_progress))
        started = time.perf_counter()
        with progress.running():
            cache, parts = _request.refresh_cache(self, fitted.module, self.data_,
                                                  fitted.val_ids, fitted.removed_classes,
                                                  fitted.cache.generation, progress)
        self.fitted_ = PumaModel(fitted.module, fitted.val_ids,
                                 removed_classes=fitted.removed_classes, cache=cache,
                                 sample_passes=fitted.sample_passes, info=fitted.info)
        return {"seconds": time.perf_counter() - started, "parts": parts,
                "damping": cache.damping}

    # ------------------------------------------------------------ restore
    def _restore(self, state: dict[str, Any], store: Store) -> PumaModel:
        manifest = store.read_manifest() or {}
        dataset = manifest.get("dataset", {})
        module = self._architecture(tuple(dataset.get("input_shape", ())),
                                    int(dataset.get("n_classes", 0)))
        return PumaModel.read(state, store, module)

"""PUMA: Performance Unchanged Model Augmentation (Wu, Hashemi & Srinivasa, AAAI 2022).

Approximate unlearning for a model that is already trained: estimate every training
sample's influence on a performance criterion ``C`` (validation loss), remove the marked
samples' influence with one Newton-type patch, and re-weight a few remaining samples so
that ``C`` stays (to first order) unchanged. No public implementation of the paper exists;
this is the reconstruction of ALGORITHMS.md section 1, with every choice the paper leaves
open exposed as a parameter and explained in ``docs/puma.md``.

Also here: :class:`NaiveInfluence` (registered ``"influence"``), the same patch without
re-weighting (Koh & Liang 2017 influence removal; a Newton removal step), and
:func:`harmfulness_scores` / :func:`rank_mislabelled` for data debugging.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from expunge._hashing import derive_key, keyed_order, keyed_uniform, sha256_ids
from expunge._progress import Progress
from expunge._validation import Check, Constraint, Interval, Options
from expunge.data import IndexedDataset
from expunge.exceptions import (
    InvalidParameterError,
    InvalidRequestError,
    NotFittedError,
    UnsupportedModelError,
)
from expunge.models import ModelSpec
from expunge.store import Store
from expunge.strategies._params import COMMON_CONSTRAINTS
from expunge.strategies._recipe import RECIPE_CONSTRAINTS, TrainingRecipe
from expunge.strategies.approximate._hessian import (
    KFAC,
    CholeskySolver,
    LossCurvature,
    SolveResult,
    conjugate_gradient,
    lissa,
    power_iteration,
    warn_approximation,
)
from expunge.strategies.base import (
    CACHE_PREFIX,
    FittedModel,
    ForgetStats,
    UnlearningStrategy,
)
from expunge.strategies.registry import register_strategy
from expunge.training import (
    EpochKey,
    batched_forward,
    make_optimizer,
    pinned_threads,
    train_epochs,
)

#: ``solver="auto"`` factors the curvature densely up to this many parameters in scope
AUTO_DENSE_LIMIT = 2048
#: ``solver="cholesky"`` refuses more parameters than this (the matrix alone is 512 MiB)
DENSE_LIMIT = 8192
#: rows per batch in every data pass
CHUNK_SIZE = 4096
#: torch intra-op threads for training (the exact strategies' default ``threads_per_job``)
TRAIN_THREADS = 1
#: LiSSA is stochastic: only a relative residual above this warns
LISSA_TOL = 0.05


# =========================================================================== re-weighting
@dataclass(frozen=True)
class Reweighting:
    """The solution of PUMA's re-weighting problem (ALGORITHMS.md section 1(b) step 4).

    Attributes:
        e: extra weight of each retained sample in units of ``1/n``: sample ``j``'s weight
            becomes ``(1 + e_j) / n`` with ``e_j`` in ``[-1, eta]``.
        residual_before / residual_after: ``||Delta C||`` predicted by the linearisation
            for naive removal and after re-weighting, in loss units.
        sparsity_weight: the L1 weight used (``sparsity * lambda_max``, normalised units).
        steps: proximal-gradient steps taken.
    """

    e: torch.Tensor
    residual_before: float
    residual_after: float
    sparsity_weight: float
    steps: int

    @property
    def n_nonzero(self) -> int:
        return int((self.e != 0).sum())


def solve_reweighting(
    removed: torch.Tensor,
    retained: torch.Tensor,
    n: int,
    *,
    eta: float,
    sparsity: float,
    max_steps: int = 1000,
    tol: float = 1e-9,
) -> Reweighting:
    """PUMA's sparse, box-constrained re-weighting of the retained samples.

    With influence scores ``I`` (rows: samples, columns: criteria), marked samples get
    extra weight ``-1/n`` and retained sample ``j`` gets ``e_j / n``. The linearised change
    of criterion ``k`` is ``Delta C_k = (1/n) (-sum_M I_ik + sum_R e_j I_jk)``. This solves

        min_e  || b + I_R^T e ||^2 / s^2 + lam ||e||_1,   e_j in [-1, eta],
        b = -sum_M I_i,

    (the squared, "unchanged" form of ALGORITHMS.md section 1(f)1), after scaling the
    scores by ``s = max |I|`` so that the step size and ``lam`` are scale-free. ``lam =
    sparsity * lam_max`` where ``lam_max = ||2 I_R b||_inf / s^2`` is the smallest weight
    whose solution is ``e = 0``: ``sparsity=1`` is naive removal, ``sparsity=0`` compensates
    as much as the box allows with no sparsity pressure. At the optimum every untouched
    sample ``j`` satisfies ``|2 r . I_j| <= lam`` (in normalised units): the remaining
    change ``r`` is at most ``sparsity * ||b|| * max|I| / |I_j|`` for every untouched
    ``j``, i.e. about ``sparsity`` times the naive change when a top-scoring sample is
    still untouched, more once the box forces the solution down the ranking.

    Solved by accelerated proximal gradient (FISTA with adaptive restart, Beck & Teboulle
    2009; O'Donoghue & Candes 2015) with step ``1/L``, ``L = 2 sigma_max(I_R / s)^2``; the
    proximal map of ``lam |e| + box`` is soft-thresholding then clipping. Deterministic
    and full-batch: the scores are ``n`` scalars, so a step costs ``O(n K)``, far below one
    model pass (the paper's stochastic projected SGD solves the same problem).

    Args:
        removed: scores of the marked samples, shape ``(m, K)``.
        retained: scores of the retained samples, shape ``(r, K)``.
        n: the training-set size before removal (the 1/n of the weights).
        eta: the box radius: no retained sample's weight may exceed ``(1 + eta) / n``.
        sparsity: in ``[0, 1]``, the L1 weight as a fraction of ``lam_max``.
        max_steps, tol: stop after ``max_steps`` or when no weight moves more than ``tol``.
    """
    removed = removed.to(torch.float64)
    retained = retained.to(torch.float64)
    scale = float(max(removed.abs().max() if removed.numel() else 0.0,
                      retained.abs().max() if retained.numel() else 0.0))
    zeros = torch.zeros(retained.shape[0], dtype=torch.float64)
    if scale == 0.0 or retained.shape[0] == 0:
        return Reweighting(zeros, 0.0, 0.0, 0.0, 0)
    A = retained / scale  # (r, K)
    b = -removed.sum(dim=0) / scale  # (K,)
    before = float(torch.linalg.vector_norm(b)) * scale / n
    grad0 = 2 * (A @ b)
    lam = float(sparsity) * float(grad0.abs().max())
    lipschitz = 2 * float(torch.linalg.eigvalsh(A.T @ A)[-1])
    if lipschitz <= 0.0 or sparsity >= 1.0:
        return Reweighting(zeros, before, before, lam, 0)
    step = 1.0 / lipschitz
    e = zeros.clone()
    y = zeros.clone()
    t = 1.0
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 - the count is reported
        g = 2 * (A @ (b + A.T @ y))
        z = y - step * g
        e_new = (z.abs() - step * lam).clamp_min(0.0) * z.sign()
        e_new = e_new.clamp(-1.0, float(eta))
        moved = float((e_new - e).abs().max())
        if float((y - e_new) @ (e_new - e)) > 0:  # momentum points uphill: restart
            t_new, y = 1.0, e_new.clone()
        else:
            t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
            y = e_new + ((t - 1) / t_new) * (e_new - e)
        e, t = e_new, t_new
        if moved <= tol:
            break
    after = float(torch.linalg.vector_norm(b + A.T @ e)) * scale / n
    return Reweighting(e, before, after, lam, steps)


# ============================================================================ the cache
@dataclass
class CurvatureCache:
    """What PUMA keeps between requests, computed at the current parameters on the current
    training split (and, for ``v``/``scores``, the current criterion set).

    * ``factor``: the Cholesky factor of the damped curvature (``solver="cholesky"``),
      ``p^2`` floats; ``kfac``: Kronecker factors (``solver="kfac"``, or ``"cg"`` with the
      K-FAC preconditioner), ``O(sum d^2)`` floats; ``lissa_scale``: LiSSA's step scale.
    * ``v``: ``H^{-1} grad C_k`` per criterion, ``(K, p)``: the "pre-cached HVP term".
    * ``scores``: ``I_{k,i} = -grad C_k^T H^{-1} grad CE_i`` for every training-split
      sample, ``(n, K)``, and ``i_omega``: the regulariser's share ``-grad C_k^T H^{-1}
      weight_decay theta`` that every sample's objective term also carries.
    """

    solver: str
    solver_key: str
    criterion_key: str | None
    factor: torch.Tensor | None
    kfac: KFAC | None
    lissa_scale: float | None
    v: torch.Tensor | None
    scores: torch.Tensor | None
    score_ids: np.ndarray | None
    i_omega: torch.Tensor | None
    residual: float | None
    iterations: int
    converged: bool
    seconds: float

    def blob_name(self) -> str:
        text = f"{self.solver_key}|{self.criterion_key}"
        return f"{CACHE_PREFIX}puma-{hashlib.sha256(text.encode()).hexdigest()[:32]}"

    def to_blob(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors: dict[str, torch.Tensor] = {}
        if self.factor is not None:
            tensors["factor"] = self.factor
        if self.kfac is not None:
            tensors.update(self.kfac.to_tensors("kfac."))
        if self.v is not None:
            assert self.scores is not None and self.score_ids is not None
            assert self.i_omega is not None
            tensors["v"] = self.v
            tensors["scores"] = self.scores
            tensors["score_ids"] = torch.from_numpy(np.asarray(self.score_ids, dtype=np.int64))
            tensors["i_omega"] = self.i_omega
        meta = {
            "solver": self.solver, "solver_key": self.solver_key,
            "criterion_key": self.criterion_key, "lissa_scale": self.lissa_scale,
            "residual": self.residual, "iterations": self.iterations,
            "converged": self.converged, "seconds": self.seconds,
            "kfac": None if self.kfac is None else self.kfac.to_meta(),
        }
        return tensors, {"puma_cache": json.dumps(meta, sort_keys=True)}

    @classmethod
    def from_blob(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
                  ) -> CurvatureCache:
        meta = json.loads(metadata["puma_cache"])
        kfac = None if meta["kfac"] is None else KFAC.from_saved(tensors, meta["kfac"], "kfac.")
        return cls(
            solver=meta["solver"], solver_key=meta["solver_key"],
            criterion_key=meta["criterion_key"], factor=tensors.get("factor"), kfac=kfac,
            lissa_scale=meta["lissa_scale"], v=tensors.get("v"), scores=tensors.get("scores"),
            score_ids=tensors["score_ids"].numpy() if "score_ids" in tensors else None,
            i_omega=tensors.get("i_omega"), residual=meta["residual"],
            iterations=int(meta["iterations"]), converged=bool(meta["converged"]),
            seconds=float(meta["seconds"]),
        )


# ====================================================================== fitted model
def _module_fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class PumaModel(FittedModel):
    """One patched module, the criterion (validation) ids and the curvature cache."""

    def __init__(self, module: nn.Module, val_ids: np.ndarray, *,
                 removed_classes: tuple[int, ...] = (), cache: CurvatureCache | None = None,
                 sample_passes: int = 0, info: dict[str, Any] | None = None) -> None:
        self.module = module.eval()
        self.val_ids = np.sort(np.asarray(val_ids, dtype=np.int64))
        self.removed_classes = tuple(sorted(int(c) for c in removed_classes))
        self.cache = cache
        self.sample_passes = sample_passes
        self.info = dict(info or {})
        self._fingerprint = _module_fingerprint(self.module)

    def single_module(self) -> nn.Module:
        return self.module

    @property
    def model_blob(self) -> str:
        return f"puma/model-{self._fingerprint[:32]}"

    @property
    def val_blob(self) -> str:
        return f"puma/val-{sha256_ids(self.val_ids)[:32]}"

    def write(self, store: Store) -> None:
        store.write_blob(self.model_blob, dict(self.module.state_dict()), {"kind": "puma-model"})
        store.write_blob(self.val_blob, {"ids": torch.from_numpy(self.val_ids.copy())},
                         {"kind": "puma-criterion-ids"})
        if self.cache is not None:
            store.write_blob(self.cache.blob_name(), *self.cache.to_blob())

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model_blob, "val": self.val_blob,
            "cache": None if self.cache is None else self.cache.blob_name(),
            "removed_classes": list(self.removed_classes), "info": self.info,
        }

    def live_blobs(self) -> set[str]:
        live = {self.model_blob, self.val_blob}
        if self.cache is not None:
            live.add(self.cache.blob_name())
        return live

    def learned_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in sorted(self.module.state_dict().items()):
            yield f"model/{name}", tensor

    def predict_proba(self, X: torch.Tensor) -> torch.Tensor:
        # a user's module (from_model) may hold float64 weights; inputs arrive as float32
        dtype = next(self.module.parameters()).dtype
        return torch.softmax(batched_forward(self.module, X.to(dtype)), dim=1).float()

    def fingerprint(self) -> str:
        return self._fingerprint


# ============================================================================ strategy
_PUMA_TRAINING = {**RECIPE_CONSTRAINTS, **COMMON_CONSTRAINTS}

_CURVATURE_CONSTRAINTS: dict[str, list[Constraint]] = {
    "val_fraction": [Interval(float, 0, 1, closed="left")],
    "damping": [Interval(float, 0, None)],
    "hessian": [Options(("ggn", "exact"))],
    "scope": [Options(("all", "last_layer"))],
    "solver": [Options(("auto", "cholesky", "cg", "lissa", "kfac"))],
    "preconditioner": [Options(("kfac", "none"))],
    "tol": [Interval(float, 0, 1, closed="neither")],
    "max_iter": [Interval(int, 1, None)],
    "lissa_depth": [Interval(int, 1, None)],
    "lissa_batch": [Interval(int, 1, None)],
    "patch_hessian": [Options(("reweighted", "original"))],
    "newton_steps": [Interval(int, 1, None)],
    "class_newton_steps": [Interval(int, 1, None)],
    "refresh": [Options(("eager", "lazy"))],
    "dtype": [Options(("float64", "float32"))],
}


@dataclass
class _Context:
    """One linearisation: the data (training split + criterion set) at one parameter value."""

    data: IndexedDataset
    curvature: LossCurvature
    train_rows: np.ndarray
    criterion_rows: np.ndarray

    @property
    def n(self) -> int:
        return len(self.train_rows)

    @property
    def train_ids(self) -> np.ndarray:
        return self.data.ids[self.train_rows]


@register_strategy
class PUMA(TrainingRecipe, UnlearningStrategy):
    """PUMA: remove samples by an influence patch, re-weighting the rest so that a
    performance criterion stays unchanged (Wu, Hashemi & Srinivasa, AAAI 2022).

    **What it computes** (ALGORITHMS.md section 1(b); a reconstruction: the paper's full
    text was not available). ``fit`` holds out a validation split (``val_fraction`` of the
    ids, chosen by a keyed hash of ``(seed, id)``; never trained on) that defines the
    criterion ``C`` = mean cross-entropy on it, trains the model on the rest with the
    library's deterministic loop, and caches ``v = H^{-1} grad C`` and every training
    sample's score ``I_i = -grad C^T H^{-1} grad l_i``. ``forget(ids)`` then

    1. gives the marked samples weight 0 (extra weight ``-1/n``), whose predicted effect
       on ``C`` is ``Delta C = -(1/n) sum_M I_i``;
    2. re-weights retained samples (extra weight ``e_j / n``, ``e_j`` in ``[-1, eta]``,
       L1-sparse) so that the predicted ``Delta C`` is about 0 (:func:`solve_reweighting`);
    3. patches the model with ``newton_steps`` Newton step(s) on the re-weighted objective
       ``sum_i w_i (l_i + Omega)``: ``theta <- theta - H_w^{-1} grad J_w(theta)``;
    4. refreshes the cache at the patched parameters on the retained data.

    Whole-class removal is detected: when a request leaves a class with no training
    sample, that class is dropped from the criterion (ALGORITHMS.md section 1(f)5) now and
    in every later request (``details["mode"] == "class"``; :meth:`forget_class` builds
    such a request). Forgetting a validation sample removes it from the criterion.

    **Guarantee: approximate.** Nothing is certified. The patch is a first-order
    (influence-function) estimate of retraining without the samples: close to it for
    convex models and small removals (for L2-regularised logistic regression one sample's
    removal lands within ``O(1/n^2)`` of leave-one-out retraining when ``sparsity=1``),
    progressively worse for large removals and non-convex networks. Re-weighting trades
    fidelity to retraining for unchanged performance: the result is *not* the model
    retraining would give. The model still depends on the forgotten samples through the
    training trajectory; membership attacks may still detect them. Guaranteed: no store
    entry computed from a forgotten sample survives a request (the model blob and every
    cached quantity are rebuilt on the retained data and the old ones purged).

    **Cost.** Fit: training plus the precompute (cache) below. Per request: a gradient
    pass over the marked and re-weighted samples only, the patch solve, ``O(n)`` for the
    re-weighting, and (``refresh="eager"``) rebuilding the cache. Precompute = building the
    solver (``"cholesky"``: the dense curvature, ``O(n K p^2)``, then ``p^3/3``;
    ``"kfac"``: ``K`` backward passes; ``"cg"``: K-FAC if preconditioned) + one solve per
    criterion + one JVP pass over the training split for the scores. Training uses one
    intra-op thread, like the exact strategies, so ``fit`` trains bit for bit the model
    :class:`~expunge.Retrain` trains on the training split. See ``docs/puma.md`` for
    measured numbers.

    Args:
        model, model_params, epochs, batch_size, lr, optimizer, momentum, seed: as for
            :class:`~expunge.Retrain`. ``model`` may also be an ``nn.Module`` instance: fit
            then trains a copy of it from its current weights (:meth:`from_model` wraps one
            without training).
        weight_decay: L2 weight ``lambda`` of the training objective (PyTorch's coupled
            weight decay); part of the objective the patch differentiates. Default 5e-4.
        val_fraction: fraction of the ids held out for the criterion (keyed by seed).
        eta: the box radius of the re-weighting: retained weights stay in
            ``[0, (1 + eta)/n]`` (the paper's "Resistance" knob).
        sparsity: the L1 weight as a fraction of the smallest weight that gives no
            re-weighting at all (1 = naive removal; 0 = no sparsity pressure).
        criterion: ``"loss"`` (K=1, mean validation CE) or ``"per_class_loss"`` (K = one
            mean CE per class in the criterion set: keeps every class's loss unchanged).
        damping: added to the curvature's diagonal (on top of ``weight_decay``); required
            for non-convex models with ``hessian="exact"``.
        hessian: ``"ggn"`` (Gauss-Newton, PSD; equal to the Hessian for logistic
            regression) or ``"exact"``.
        scope: ``"all"`` parameters, or ``"last_layer"`` (the last module with parameters;
            the features below stay as trained).
        solver: ``"cholesky"`` (dense, exact), ``"cg"`` (conjugate gradient on exact
            products), ``"lissa"`` (stochastic), ``"kfac"`` (Kronecker-factored inverse, no
            iterations, approximate) or ``"auto"``: cholesky up to 2048 parameters in scope,
            else cg.
        preconditioner: ``"kfac"`` or ``"none"``: the preconditioner of ``solver="cg"``.
        tol, max_iter: CG's relative-residual target and iteration cap.
        lissa_depth, lissa_batch: LiSSA's steps and minibatch size.
        pgd_steps: the re-weighting solver's step cap.
        patch_hessian: ``"reweighted"``: the patch solves with the Hessian of the
            re-weighted retained objective (Guo et al.'s Newton removal; more accurate for
            large removals); ``"original"``: with the cached full-data Hessian.
        newton_steps: patch steps for point removal. Steps after the first are damped
            Newton steps on the re-weighted objective: the full gradient and the curvature
            at the current iterate (the cached solver preconditions the solve), with an
            Armijo backtracking line search; each costs a gradient pass, a solve and one
            forward pass per line-search trial.
        class_newton_steps: patch steps when a request removes a whole class: that is far
            outside the first-order regime and one step overshoots (digits, logistic
            regression trained 3 epochs: after one step the class is gone but the other
            classes fall from 96 % to 81 % accuracy; after five, 0 % and 96 %, as after
            retraining).
        refresh: ``"eager"`` rebuilds the cache inside each request, so the next request
            is fast; ``"lazy"`` drops it and the next request rebuilds it first.
        dtype: ``"float64"`` (default; for convex models) or ``"float32"``.
        store, show_progress: as for every strategy.

    References:
        Wu, Hashemi & Srinivasa, "PUMA: Performance Unchanged Model Augmentation for
        Training Data Removal", AAAI 2022 (arXiv 2203.00846); Koh & Liang, "Understanding
        Black-box Predictions via Influence Functions", ICML 2017; Guo et al., "Certified
        Data Removal from Machine Learning Models", ICML 2020 (Newton removal step).
    """

    name = "puma"
    guarantee = "approximate"
    #: act only when a request is computed (the fit and its cache do not depend on them):
    #: expunge.open may change them; each forget records the values it used
    _request_params = frozenset({"eta", "sparsity", "pgd_steps", "refresh"})
    summary = ("approximate: influence patch with re-weighting that keeps a validation "
               "criterion unchanged (PUMA)")
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **_PUMA_TRAINING,
        "model": [str, Check(callable, "a registered name, a callable or an nn.Module")],
        **_CURVATURE_CONSTRAINTS,
        "eta": [Interval(float, 0, None)],
        "sparsity": [Interval(float, 0, 1)],
        "criterion": [Options(("loss", "per_class_loss"))],
        "pgd_steps": [Interval(int, 1, None)],
    }
    #: whether forget re-weights retained samples (False: naive influence removal)
    _reweight: ClassVar[bool] = True
    #: set by from_model for the duration of its fit: explicit criterion ids, no training
    _pending_val_ids: np.ndarray | None = None
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
        val_fraction: float = 0.1,
        eta: float = 1.0,
        sparsity: float = 0.05,
        criterion: str = "loss",
        damping: float = 1e-4,
        hessian: str = "ggn",
        scope: str = "all",
        solver: str = "auto",
        preconditioner: str = "kfac",
        tol: float = 1e-5,
        max_iter: int = 200,
        lissa_depth: int = 1000,
        lissa_batch: int = 256,
        pgd_steps: int = 1000,
        patch_hessian: str = "reweighted",
        newton_steps: int = 1,
        class_newton_steps: int = 5,
        refresh: str = "eager",
        dtype: str = "float64",
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
        self.val_fraction = val_fraction
        self.eta = eta
        self.sparsity = sparsity
        self.criterion = criterion
        self.damping = damping
        self.hessian = hessian
        self.scope = scope
        self.solver = solver
        self.preconditioner = preconditioner
        self.tol = tol
        self.max_iter = max_iter
        self.lissa_depth = lissa_depth
        self.lissa_batch = lissa_batch
        self.pgd_steps = pgd_steps
        self.patch_hessian = patch_hessian
        self.newton_steps = newton_steps
        self.class_newton_steps = class_newton_steps
        self.refresh = refresh
        self.dtype = dtype
        self.store = store
        self.show_progress = show_progress

    # ------------------------------------------------------------ parameters
    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"model": "logreg", "epochs": 3, "batch_size": 32, "lr": 0.1, "momentum": 0.9,
                "solver": "cholesky"}

    def _check_params(self) -> None:
        if self._reweight and self.val_fraction <= 0 and not self._explicit_val():
            raise InvalidParameterError(
                f"{type(self).__name__} needs a validation split for its criterion; got "
                f"val_fraction={self.val_fraction!r}. Use a value in (0, 1), e.g. 0.1, or "
                f"{type(self).__name__}.from_model(module, train, val)."
            )

    def _explicit_val(self) -> np.ndarray | None:
        return self._pending_val_ids

    @property
    def _torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32

    # ------------------------------------------------------------ from_model
    @classmethod
    def from_model(cls, module: nn.Module, train: IndexedDataset, val: IndexedDataset,
                   **params: Any) -> PUMA:
        """Wrap a classifier the user trained on ``train``; ``val`` defines the criterion.

        Nothing is trained: the module's weights are taken as ``theta_hat`` (they should be
        close to a minimiser of the mean training CE plus ``weight_decay/2 ||theta||^2``,
        since the influence patch assumes it). The strategy's data is ``train`` followed by
        ``val`` (ids must be disjoint); ``val`` is never treated as training data but its
        ids can be forgotten (they leave the criterion). The fit is recorded in the ledger
        as usual, with the precompute. Reopen a store with
        ``expunge.open(path, model=module)``.

        Args:
            module: a trained ``nn.Module`` returning logits (it is copied, not modified).
            train: the data it was trained on.
            val: held-out data for the performance criterion.
            **params: any constructor parameter (``eta``, ``solver``, ``store``...);
                training parameters other than ``weight_decay`` are recorded but unused.
        """
        if not isinstance(module, nn.Module):
            raise InvalidParameterError(
                f"from_model expects a trained torch.nn.Module; got {type(module).__name__}."
            )
        for name, ds in (("train", train), ("val", val)):
            if not isinstance(ds, IndexedDataset):
                raise InvalidParameterError(
                    f"from_model expects '{name}' as an IndexedDataset; got "
                    f"{type(ds).__name__}. Wrap arrays with expunge.data.IndexedDataset(X, y)."
                )
        overlap = np.intersect1d(train.ids, val.ids)
        if overlap.size:
            raise InvalidParameterError(
                f"train and val share ids {overlap[:10].tolist()}; the criterion must be "
                "held out. Give val other ids (e.g. IndexedDataset(X, y, ids=...))."
            )
        if len(val) == 0:
            raise InvalidParameterError("from_model needs a non-empty val set for the criterion.")
        if "model" in params:
            raise InvalidParameterError("from_model takes the module itself; do not pass model=.")
        strategy = cls(model=copy.deepcopy(module).eval(), **params)
        n_classes = max(train.n_classes, val.n_classes)
        data = IndexedDataset.concat([
            IndexedDataset(train.X, train.y, train.ids, n_classes=n_classes),
            IndexedDataset(val.X, val.y, val.ids, n_classes=n_classes),
        ])
        strategy._pending_val_ids = np.sort(np.asarray(val.ids, dtype=np.int64))
        strategy._pretrained = True
        try:
            strategy.fit(data)
        finally:
            strategy._pending_val_ids = None
            strategy._pretrained = False
        return strategy

    # ------------------------------------------------------------ helpers
    def validation_ids(self, data: IndexedDataset) -> np.ndarray:
        """The ids ``fit(data)`` would hold out as the validation split (sorted).

        A keyed hash of ``(seed, id)`` below ``val_fraction``: the same ids whatever else
        is in ``data``, known before fitting. Use it to keep the criterion's data clean
        (e.g. audit only their labels) or to know which samples will have no
        harmfulness score. Cost: one hash per id; nothing is trained.
        """
        if not isinstance(data, IndexedDataset):
            raise InvalidParameterError(
                f"validation_ids expects an IndexedDataset; got {type(data).__name__}."
            )
        self._validate_params()
        return self._val_ids_for(data)

    def _val_ids_for(self, data: IndexedDataset) -> np.ndarray:
        explicit = self._explicit_val()
        if explicit is not None:
            return explicit
        if self.val_fraction <= 0:
            return np.empty(0, dtype=np.int64)
        u = keyed_uniform(derive_key(int(self.seed), "puma-validation"), data.ids)
        return np.sort(data.ids[u < float(self.val_fraction)])

    def _check_dataset(self, dataset: IndexedDataset) -> None:
        val_ids = self._val_ids_for(dataset)
        n_train = len(dataset) - np.isin(dataset.ids, val_ids).sum()
        if n_train == 0:
            raise InvalidParameterError(
                f"val_fraction={self.val_fraction} left no training samples out of "
                f"{len(dataset)}; use a smaller val_fraction."
            )
        if self._reweight and len(val_ids) == 0:
            raise InvalidParameterError(
                f"val_fraction={self.val_fraction} selected no validation sample out of "
                f"{len(dataset)}; use a larger val_fraction or more data."
            )
        if dataset.n_classes < 2:
            raise InvalidParameterError(
                f"{type(self).__name__} needs at least 2 classes; got {dataset.n_classes}."
            )

    def _architecture(self, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        if isinstance(self.model, nn.Module):
            return copy.deepcopy(self.model)
        # the recipe's seeded network: the same bits as Retrain's (sub-model 0)
        return self.initial_network(input_shape, n_classes)

    def _context(self, module: nn.Module, data: IndexedDataset, val_ids: np.ndarray,
                 removed_classes: tuple[int, ...],
                 criterion_ids: np.ndarray | None = None) -> _Context:
        """Training split = ids not in ``val_ids``; criterion set = ``criterion_ids``
        (default ``val_ids``) without the removed classes."""
        is_val = np.isin(data.ids, val_ids)
        in_criterion = is_val if criterion_ids is None else np.isin(data.ids, criterion_ids)
        labels = data.y.numpy()
        curvature = LossCurvature(
            module, data.X, data.y, scope=self.scope,  # type: ignore[arg-type]
            kind=self.hessian,  # type: ignore[arg-type]
            weight_decay=float(self.weight_decay), damping=float(self.damping),
            dtype=self._torch_dtype, chunk_size=CHUNK_SIZE,
        )
        criterion_rows = np.flatnonzero(in_criterion & ~np.isin(labels, list(removed_classes)))
        return _Context(data, curvature, np.flatnonzero(~is_val), criterion_rows)

    def _resolve_solver(self, n_params: int) -> str:
        if self.solver == "auto":
            return "cholesky" if n_params <= AUTO_DENSE_LIMIT else "cg"
        if self.solver == "cholesky" and n_params > DENSE_LIMIT:
            raise InvalidParameterError(
                f"solver='cholesky' needs a dense {n_params} x {n_params} matrix "
                f"({n_params} parameters in scope; the limit is {DENSE_LIMIT}). Use "
                "solver='cg' or 'kfac', or scope='last_layer'."
            )
        return str(self.solver)

    def _solver_key(self, module_fp: str, ctx: _Context) -> str:
        recorded = json.dumps({k: v for k, v in self.recorded_params().items()
                               if k not in ("eta", "sparsity", "pgd_steps", "refresh")},
                              sort_keys=True, default=str)
        text = f"{module_fp}|{sha256_ids(np.sort(ctx.train_ids))}|{recorded}"
        return hashlib.sha256(text.encode()).hexdigest()

    @staticmethod
    def _criterion_key(ctx: _Context) -> str:
        return sha256_ids(np.sort(ctx.data.ids[ctx.criterion_rows]), prefix="criterion")

    # --------------------------------------------------------- solves
    def _lissa_batches(self, ctx: _Context, weights: torch.Tensor, purpose: str
                       ) -> Callable[[int], tuple[np.ndarray, torch.Tensor]]:
        order = keyed_order(derive_key(int(self.seed), "puma-lissa", purpose), ctx.train_ids)
        rows_in_order = ctx.train_rows[order]
        w_in_order = weights[torch.from_numpy(order)]
        n = len(rows_in_order)
        batch = min(int(self.lissa_batch), n)

        def at(t: int) -> tuple[np.ndarray, torch.Tensor]:
            start = (t * batch) % n
            idx = (np.arange(start, start + batch) % n)
            # scaled so that the minibatch product is an unbiased estimate of the full one
            return rows_in_order[idx], w_in_order[torch.from_numpy(idx)] * (n / batch)

        return at

    def _solve(self, ctx: _Context, cache: CurvatureCache, b: torch.Tensor,
               weights: torch.Tensor | None = None, purpose: str = "criterion",
               theta: torch.Tensor | None = None) -> SolveResult:
        """Solve ``H x = b`` with the cached solver.

        ``weights`` (over the training rows): use ``H_w`` instead of the uniform-weight
        ``H`` (``None``: uniform ``1/n``). ``theta``: the curvature at these parameters
        instead of the cached linearisation point (later Newton steps); the cached
        factorisation then serves as the CG preconditioner.
        """
        curv = ctx.curvature
        uniform = torch.full((ctx.n,), 1.0 / ctx.n, dtype=curv.dtype)
        w = uniform if weights is None else weights

        def full(v: torch.Tensor) -> torch.Tensor:
            return curv.matvec(v, ctx.train_rows, w, theta=theta)

        if cache.solver == "cholesky":
            assert cache.factor is not None
            chol = CholeskySolver.from_factor(cache.factor)
            if theta is not None:
                return conjugate_gradient(full, b, x0=chol.solve(b), tol=float(self.tol),
                                          max_iter=int(self.max_iter), preconditioner=chol.solve)
            if weights is None:
                return chol.solve_result(b)
            delta = w - uniform
            changed = np.flatnonzero(delta.numpy() != 0)
            rows, dw = ctx.train_rows[changed], delta[torch.from_numpy(changed)]

            def reweighted(v: torch.Tensor) -> torch.Tensor:
                # H_w v = H v + sum_changed (w_i - 1/n) (d2 CE_i + weight_decay) v: a pass
                # over the changed samples only, the rest comes from the cached factor
                return chol.matvec(v) + curv.matvec(v, rows, dw, damping=False)

            return conjugate_gradient(reweighted, b, x0=chol.solve(b), tol=float(self.tol),
                                      max_iter=int(self.max_iter), preconditioner=chol.solve)
        if cache.solver == "kfac":
            kfac = (cache.kfac if weights is None and theta is None
                    else curv.kfac(ctx.train_rows, w, theta=theta))
            assert kfac is not None
            return kfac.solve_result(b, matvec=full)
        if cache.solver == "cg":
            pre = cache.kfac.solve if cache.kfac is not None else None
            return conjugate_gradient(full, b, tol=float(self.tol), max_iter=int(self.max_iter),
                                      preconditioner=pre)
        # lissa
        assert cache.lissa_scale is not None
        batches = self._lissa_batches(ctx, w, purpose)

        def stochastic(v: torch.Tensor, t: int) -> torch.Tensor:
            rows, wb = batches(t)
            return curv.matvec(v, rows, wb, theta=theta)

        return lissa(stochastic, b, scale=cache.lissa_scale, depth=int(self.lissa_depth),
                     residual_matvec=full, tol=LISSA_TOL)

    def _warn_solve(self, result: SolveResult, what: str) -> None:
        if result.negative_curvature and result.method == "cg":
            warn_approximation(
                f"{type(self).__name__}'s {what} met negative curvature (the {self.hessian} "
                "curvature is not positive definite at these parameters); the result is the "
                f"best iterate, relative residual {result.residual:.2e}. Use hessian='ggn', "
                f"or increase 'damping' (now {self.damping})."
            )
        elif not result.converged:
            target = (f"tol={self.tol}" if result.method == "cg"
                      else f"LiSSA's tolerance {LISSA_TOL}")
            advice = ("Increase 'max_iter' or 'damping'" if result.method == "cg"
                      else "Increase 'lissa_depth' or 'damping', or use solver='cg'")
            warn_approximation(
                f"{type(self).__name__}'s {what} did not converge: relative residual "
                f"{result.residual:.2e} after {result.iterations} products with "
                f"solver={result.method!r} ({target}). {advice}; for small models "
                "solver='cholesky' is exact."
            )

    def _criterion_gradients(self, ctx: _Context) -> torch.Tensor:
        curv = ctx.curvature
        rows = ctx.criterion_rows
        if self.criterion == "per_class_loss":
            labels = ctx.data.y.numpy()[rows]
            return torch.stack([curv.gradient(rows[labels == c], None, regularizer=False)
                                for c in np.unique(labels)])
        return curv.gradient(rows, None, regularizer=False)[None, :]

    def _build_cache(self, ctx: _Context, module_fp: str, *, scores: bool) -> CurvatureCache:
        """Build the solver and (``scores=True``) ``v`` and the scores at ``ctx``."""
        started = time.perf_counter()
        curv = ctx.curvature
        solver = self._resolve_solver(curv.size)
        factor = kfac = None
        lissa_scale = None
        if solver == "cholesky":
            chol = CholeskySolver(curv.dense(ctx.train_rows),
                                  what=f"{self.hessian} curvature of the training objective")
            factor = chol.factor
        elif solver == "kfac" or (solver == "cg" and self.preconditioner == "kfac"):
            kfac = curv.kfac(ctx.train_rows)
        elif solver == "lissa":
            probe = self._lissa_batches(ctx, torch.full((ctx.n,), 1.0 / ctx.n,
                                                        dtype=curv.dtype), "scale")
            rows = np.concatenate([probe(t)[0] for t in range(4)])
            top = power_iteration(lambda v: curv.matvec(v, rows, None), curv.size,
                                  iterations=20, seed=int(self.seed), dtype=curv.dtype)
            # minibatch curvature can exceed the full one: keep a safety margin
            lissa_scale = 2.0 * top + float(self.damping) + 1e-12
        cache = CurvatureCache(
            solver=solver, solver_key=self._solver_key(module_fp, ctx), criterion_key=None,
            factor=factor, kfac=kfac, lissa_scale=lissa_scale, v=None, scores=None,
            score_ids=None, i_omega=None, residual=None, iterations=0, converged=True,
            seconds=0.0,
        )
        if scores:
            self._attach_scores(ctx, cache)
        cache.seconds = time.perf_counter() - started
        return cache

    def _attach_scores(self, ctx: _Context, cache: CurvatureCache) -> None:
        """``v = H^{-1} grad C`` (one solve per criterion) and every training sample's score."""
        if len(ctx.criterion_rows) == 0:
            raise InvalidRequestError(
                "PUMA's criterion set is empty: every validation sample was forgotten or "
                "belongs to a removed class. Use NaiveInfluence, or refit with a larger "
                "val_fraction."
            )
        curv = ctx.curvature
        grads = self._criterion_gradients(ctx)
        results = [self._solve(ctx, cache, g) for g in grads]
        for r in results:
            self._warn_solve(r, "solve for the criterion direction H^-1 grad C")
        v = torch.stack([r.x for r in results])
        cache.v = v
        cache.scores = -curv.directional(v, ctx.train_rows)
        cache.score_ids = ctx.train_ids.copy()
        cache.i_omega = -float(self.weight_decay) * (v @ curv.theta)
        cache.residual = max(r.residual for r in results)
        cache.iterations = sum(r.iterations for r in results)
        cache.converged = all(r.converged for r in results)
        cache.criterion_key = self._criterion_key(ctx)

    # -------------------------------------------------------------- fit
    def _fit(self, data: IndexedDataset, store: Store, progress: Progress) -> PumaModel:
        val_ids = self._val_ids_for(data)
        is_val = np.isin(data.ids, val_ids)
        train = data.where(~is_val)
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
                train_epochs(module, optimizer, train.X, train.y, train.ids, config=config,
                             keys=keys, on_epoch=lambda: progress.advance(task))
            passes = len(train) * self.epochs
        module.eval()
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        ctx = self._context(module, data, val_ids, ())
        cache = self._build_cache(ctx, _module_fingerprint(module), scores=self._reweight)
        precompute = time.perf_counter() - started
        fitted = PumaModel(module, val_ids, cache=cache, sample_passes=passes, info={
            "train_seconds": train_seconds, "precompute_seconds": precompute,
            "solver": cache.solver, "n_params_in_scope": ctx.curvature.size,
            "n_train": ctx.n, "n_criterion": len(ctx.criterion_rows),
        })
        fitted.write(store)
        return fitted

    # ------------------------------------------------------------- forget
    def forget_class(self, label: int, *, tag: str | None = None) -> Any:
        """Forget every retained sample labelled ``label`` (training and validation split).

        A convenience for ``forget(ids of the class)``: the request is then detected as a
        whole-class removal and the class leaves the criterion.
        """
        self._require_fitted("forget_class")
        ids = self.data_.ids_of_class(int(label))
        if ids.size == 0:
            raise InvalidRequestError(
                f"No retained sample has label {label!r}; classes with samples: "
                f"{[c for c, k in enumerate(self.data_.class_counts()) if k]}."
            )
        return self.forget(ids, tag=tag)

    def _forget(
        self, fitted: FittedModel, ids: np.ndarray, retained: IndexedDataset,
        store: Store, progress: Progress,
    ) -> tuple[PumaModel, ForgetStats]:
        assert isinstance(fitted, PumaModel)
        data = self.data_
        started = time.perf_counter()
        forgotten_val = ids[np.isin(ids, fitted.val_ids)]
        forgotten_train = ids[~np.isin(ids, fitted.val_ids)]
        new_val = np.setdiff1d(fitted.val_ids, forgotten_val)
        labels = data.y.numpy()
        train_mask = ~np.isin(data.ids, fitted.val_ids)
        before_classes = set(np.unique(labels[train_mask]).tolist())
        after_mask = train_mask & ~np.isin(data.ids, forgotten_train)
        if not after_mask.any():
            raise InvalidRequestError(
                f"Forgetting these {len(ids)} ids would leave no training sample; PUMA "
                "cannot patch a model without data. Retrain instead."
            )
        after_classes = set(np.unique(labels[after_mask]).tolist())
        newly_removed = tuple(sorted(before_classes - after_classes))
        removed = tuple(sorted(set(fitted.removed_classes) | set(newly_removed)))

        # the linearisation for this request: current parameters, pre-request training
        # split, post-request criterion set (forgotten and removed-class samples left out)
        ctx = self._context(fitted.module, data, fitted.val_ids, removed, criterion_ids=new_val)
        train_pos = {int(i): k for k, i in enumerate(ctx.train_ids.tolist())}
        if self._reweight and len(ctx.criterion_rows) == 0:
            raise InvalidRequestError(
                "After this request PUMA's criterion set would be empty (every validation "
                "sample is forgotten or in a removed class). Use NaiveInfluence for it, or "
                "refit with a larger val_fraction."
            )
        module_fp = fitted.fingerprint()
        cache = fitted.cache
        solver_key = self._solver_key(module_fp, ctx)
        rebuilt = cache is None or cache.solver_key != solver_key
        if rebuilt:  # refresh="lazy" left no cache (or it belongs to other parameters)
            cache = self._build_cache(ctx, module_fp, scores=False)
        assert cache is not None
        details: dict[str, Any] = {
            "mode": "class" if newly_removed else "point",
            "removed_classes": list(newly_removed), "excluded_classes": list(removed),
            "n_forgotten_train": len(forgotten_train), "n_forgotten_val": len(forgotten_val),
            "solver": cache.solver, "cache_rebuilt": bool(rebuilt),
            "n_reweighted": 0, "solver_residual": 0.0, "solver_iterations": 0,
        }
        theta = ctx.curvature.theta
        new_theta = theta
        if len(forgotten_train):
            new_theta = self._patch(ctx, cache, forgotten_train, train_pos, details)
        if new_theta is theta:
            module = fitted.module
        else:
            module = ctx.curvature.module_with(new_theta, fitted.module)
        details["patch_seconds"] = time.perf_counter() - started
        del ctx

        refresh_started = time.perf_counter()
        new_cache = None
        if self.refresh == "eager":
            new_ctx = self._context(module, retained, new_val, removed)
            new_cache = self._build_cache(new_ctx, _module_fingerprint(module),
                                          scores=self._reweight)
            del new_ctx
        details["refresh_seconds"] = time.perf_counter() - refresh_started
        new_model = PumaModel(module, new_val, removed_classes=removed, cache=new_cache,
                              info={**fitted.info, "last_request": {
                                  k: details[k] for k in ("patch_seconds", "refresh_seconds")}})
        new_model.write(store)
        return new_model, ForgetStats(details=details)

    def _patch(self, ctx: _Context, cache: CurvatureCache, forgotten: np.ndarray,
               train_pos: dict[int, int], details: dict[str, Any]) -> torch.Tensor:
        """Steps 2-5 of ALGORITHMS.md section 1(b); returns the patched flat parameters."""
        curv = ctx.curvature
        n = ctx.n
        marked = np.array([train_pos[int(i)] for i in forgotten], dtype=np.int64)
        is_marked = np.zeros(n, dtype=bool)
        is_marked[marked] = True
        extra = torch.zeros(n, dtype=curv.dtype)  # epsilon_i * n
        extra[torch.from_numpy(marked)] = -1.0
        if self._reweight:
            aligned = cache.score_ids is not None and np.array_equal(cache.score_ids,
                                                                     ctx.train_ids)
            if cache.criterion_key != self._criterion_key(ctx) or not aligned:
                # the criterion changed (a removed class, forgotten validation samples) or
                # the cache has no scores yet: one solve per criterion + one JVP pass, on a
                # copy (the live model's cache must not change before the commit)
                cache = dataclasses.replace(cache)
                self._attach_scores(ctx, cache)
            assert cache.scores is not None and cache.i_omega is not None
            scores = (cache.scores + cache.i_omega[None, :]).to(curv.dtype)
            result = solve_reweighting(
                scores[torch.from_numpy(marked)], scores[torch.from_numpy(~is_marked)], n,
                eta=float(self.eta), sparsity=float(self.sparsity),
                max_steps=int(self.pgd_steps),
            )
            extra[torch.from_numpy(~is_marked)] = result.e.to(curv.dtype)
            naive = (-scores[torch.from_numpy(marked)].sum(dim=0) / n)
            predicted = naive + (result.e.to(curv.dtype) @ scores[torch.from_numpy(~is_marked)]) / n
            details.update({
                "n_reweighted": result.n_nonzero, "eta": float(self.eta),
                "sparsity": float(self.sparsity), "reweight_steps": result.steps,
                "reweight_mass": float(result.e.sum()) / n,
                "criterion_change_naive": naive.tolist(),
                "criterion_change_predicted": predicted.tolist(),
                "scores_residual": cache.residual,
            })
        weights = (1.0 + extra) / n  # w_i = 1/n + epsilon_i
        support = np.flatnonzero(extra.numpy() != 0)
        u = curv.gradient(ctx.train_rows[support], extra[torch.from_numpy(support)] / n)
        use_weights = weights if self.patch_hessian == "reweighted" else None
        result_x = self._solve(ctx, cache, u, use_weights, purpose="patch")
        self._warn_solve(result_x, "patch solve H_w delta = u")
        new_theta = curv.theta - result_x.x
        residuals = [result_x.residual]
        iterations = result_x.iterations
        steps = int(self.class_newton_steps if details["mode"] == "class" else self.newton_steps)
        for _ in range(steps - 1):
            g = curv.gradient(ctx.train_rows, weights, theta=new_theta)
            step = self._solve(ctx, cache, g, weights, purpose="patch", theta=new_theta)
            self._warn_solve(step, "Newton step solve")
            new_theta = self._line_search(ctx, weights, new_theta, step.x, g)
            residuals.append(step.residual)
            iterations += step.iterations
        crit = ctx.criterion_rows
        if len(crit):
            details["criterion_before"] = float(curv.losses(crit).mean())
            details["criterion_after"] = float(curv.losses(crit, new_theta).mean())
        details.update({
            "solver_residual": float(max(residuals)), "solver_iterations": int(iterations),
            "solver_converged": bool(result_x.converged), "newton_steps": steps,
            "patch_norm": float(torch.linalg.vector_norm(new_theta - curv.theta)),
        })
        return new_theta

    @staticmethod
    def _line_search(ctx: _Context, weights: torch.Tensor, theta: torch.Tensor,
                     delta: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """``theta - t delta`` for the first ``t`` in 1, 1/2, ... (at most 1/64) with
        Armijo's sufficient decrease of ``J_w``.

        The later Newton steps reuse the curvature of the first linearisation (a chord
        method), which overshoots far from it (whole-class removal); backtracking keeps
        every step a descent step. Each trial costs one forward pass over the training
        split. If no trial decreases ``J_w`` the parameters are left where they are.
        """
        curv = ctx.curvature

        def objective(t: torch.Tensor) -> float:
            losses = curv.losses(ctx.train_rows, t)
            reg = float(weights.sum()) * curv.weight_decay / 2 * float(t @ t)
            return float(weights @ losses) + reg

        current = objective(theta)
        slope = float(gradient @ delta)  # directional derivative along -delta is -slope
        step = 1.0
        while step >= 1 / 64:
            trial = theta - step * delta
            if objective(trial) <= current - 1e-4 * step * slope:
                return trial
            step /= 2
        return theta

    # ------------------------------------------------------------ restore
    def _restore(self, state: dict[str, Any], store: Store) -> PumaModel:
        manifest = store.read_manifest() or {}
        dataset = manifest.get("dataset", {})
        module = self._architecture(tuple(dataset.get("input_shape", ())),
                                    int(dataset.get("n_classes", 0)))
        tensors, _ = store.read_blob(state["model"])
        module.load_state_dict(tensors)
        val_tensors, _ = store.read_blob(state["val"])
        cache = None
        if state.get("cache") and store.has_blob(state["cache"]):
            cache = CurvatureCache.from_blob(*store.read_blob(state["cache"]))
        return PumaModel(module, val_tensors["ids"].numpy(),
                         removed_classes=tuple(state.get("removed_classes", ())), cache=cache,
                         info=state.get("info", {}))


@register_strategy
class NaiveInfluence(PUMA):
    """Naive influence removal: PUMA's patch with no re-weighting (the baseline of E1).

    ``forget(ids)`` gives the marked samples weight 0 and takes one Newton step on the
    retained objective, ``theta <- theta - H_R^{-1} grad J_R(theta)`` with ``H_R`` the
    (damped) curvature of the retained objective (``patch_hessian="reweighted"``; Koh &
    Liang 2017's influence removal with Guo et al. 2020's retained Hessian, without their
    noise). For L2-regularised logistic regression, one sample's removal lands within
    ``O(1/n^2)`` of leave-one-out retraining; nothing is certified.

    **Guarantee:** approximate (as :class:`PUMA`). **Cost:** as PUMA without the scores:
    the cache holds only the solver (no criterion solve, no JVP pass).

    The validation split is kept by default (``val_fraction=0.1``) so that it starts from
    the same model as a PUMA with the same seed; ``val_fraction=0`` trains on everything.
    Parameters are PUMA's without ``eta``, ``sparsity``, ``criterion`` and ``pgd_steps``.
    """

    name = "influence"
    summary = "approximate: naive influence removal (one Newton step, no re-weighting)"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        **_PUMA_TRAINING,
        "model": [str, Check(callable, "a registered name, a callable or an nn.Module")],
        **_CURVATURE_CONSTRAINTS,
    }
    _reweight = False

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
        val_fraction: float = 0.1,
        damping: float = 1e-4,
        hessian: str = "ggn",
        scope: str = "all",
        solver: str = "auto",
        preconditioner: str = "kfac",
        tol: float = 1e-5,
        max_iter: int = 200,
        lissa_depth: int = 1000,
        lissa_batch: int = 256,
        patch_hessian: str = "reweighted",
        newton_steps: int = 1,
        class_newton_steps: int = 5,
        refresh: str = "eager",
        dtype: str = "float64",
        store: str | Path | None = None,
        show_progress: bool = False,
    ) -> None:
        super().__init__(
            model, model_params=model_params, epochs=epochs, batch_size=batch_size, lr=lr,
            optimizer=optimizer, momentum=momentum, weight_decay=weight_decay, seed=seed,
            val_fraction=val_fraction, eta=0.0, sparsity=1.0, criterion="loss",
            damping=damping, hessian=hessian, scope=scope, solver=solver,
            preconditioner=preconditioner, tol=tol, max_iter=max_iter,
            lissa_depth=lissa_depth, lissa_batch=lissa_batch, pgd_steps=1,
            patch_hessian=patch_hessian, newton_steps=newton_steps,
            class_newton_steps=class_newton_steps, refresh=refresh,
            dtype=dtype, store=store, show_progress=show_progress,
        )


# ======================================================================= data debugging
def harmfulness_scores(strategy: PUMA) -> tuple[np.ndarray, np.ndarray]:
    """Harmfulness of every training-split sample of a fitted PUMA (or NaiveInfluence).

    The score of sample ``i`` is ``I_i = -grad C^T H^{-1} grad l_i``: the first-order
    change of the criterion (mean validation cross-entropy; with
    ``criterion="per_class_loss"`` the sum of the per-class losses) per unit of extra
    weight on ``i`` (Koh & Liang 2017's influence on the validation loss).

    **Sign:** ``I_i > 0`` means up-weighting ``i`` *increases* the validation loss, so
    ``i`` is harmful (a likely mislabel); ``I_i < 0`` means it helps. Removing ``i`` alone
    changes the criterion by about ``-I_i / n``.

    Cost: free when the cache holds the scores (PUMA after fit or an eager request);
    otherwise one solve plus one JVP pass, not stored.

    Returns:
        ``(ids, scores)``: the training-split ids (validation samples have no score) and
        their scores, as NumPy arrays in the same order.
    """
    if not isinstance(strategy, PUMA):
        raise InvalidParameterError(
            f"harmfulness_scores needs a fitted PUMA or NaiveInfluence; got "
            f"{type(strategy).__name__}."
        )
    if not strategy.is_fitted:
        raise NotFittedError(
            f"This {type(strategy).__name__} instance is not fitted yet. Call 'fit' (or "
            "PUMA.from_model) before 'harmfulness_scores'."
        )
    fitted = strategy.fitted_
    assert isinstance(fitted, PumaModel)
    if len(fitted.val_ids) == 0:
        raise UnsupportedModelError(
            "harmfulness_scores needs a validation split for the criterion; this model has "
            "none (val_fraction=0). Refit with val_fraction > 0 or use PUMA.from_model."
        )
    ctx = strategy._context(fitted.module, strategy.data_, fitted.val_ids,
                            fitted.removed_classes)
    cache = fitted.cache
    key = strategy._solver_key(fitted.fingerprint(), ctx)
    if (cache is None or cache.scores is None or cache.solver_key != key
            or cache.criterion_key != strategy._criterion_key(ctx)):
        cache = strategy._build_cache(ctx, fitted.fingerprint(), scores=True)
    assert cache.scores is not None and cache.score_ids is not None
    return cache.score_ids.copy(), cache.scores.sum(dim=1).numpy().copy()


def rank_mislabelled(strategy: PUMA, top: int | None = None) -> np.ndarray:
    """Training ids ordered from most to least harmful (see :func:`harmfulness_scores`).

    Inspecting this list from the front finds mislabelled samples: a flipped label makes
    its sample's gradient push against the validation loss, so its score is large and
    positive. Ties are broken by id. ``top`` keeps the first ``top`` ids.
    """
    ids, scores = harmfulness_scores(strategy)
    order = np.lexsort((ids, -scores))
    ranked = ids[order]
    return ranked if top is None else ranked[: int(top)]

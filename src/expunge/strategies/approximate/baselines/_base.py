"""The shared base of the approximate baselines: strategies that *patch* the trained module.

Every baseline here fits the way :class:`~expunge.Retrain` does (same recipe, same keyed
randomness, one intra-op thread), so a baseline's fitted model is bit for bit the model
Retrain trains on the same data; only ``forget`` differs. A request takes the live module,
patches a copy of it with the method's update (fine-tuning steps, gradient ascent,
dampening, noise, a Newton step...) and commits the copy. Nothing retrains from scratch.

**The disk rule** (``docs/baselines.md``). What a baseline keeps on disk is the patched
module and the retained training data, plus, for SSD only, a cache of the training data's
Fisher diagonal computed at fit time. The module before the request (SCRUB's teacher,
the starting point of every patch), the forget set's gradients, the retained data's Fisher
diagonal (Fisher forgetting) and the convex head's Hessian (certified removal) live in
memory for the duration of the request only. Every blob the previous model needed and the
new one does not (the old module, SSD's cache computed on data that included the forgotten
samples) is purged by the request itself, before it returns, and listed in its ledger
entry. The *model* still carries a residual influence of the forgotten samples: that is
what "approximate" means, and what the evaluation harness measures.

**Randomness.** Training uses the recipe's keys; a request's randomness (batch order,
random labels, noise) derives from ``unlearn_seed`` (default: ``seed``), the method and the
sorted request ids: the same request on the same model gives the same bits.
"""

from __future__ import annotations

import copy
import math
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from expunge._hashing import derive_key, keyed_order, sha256_ids
from expunge._progress import Progress
from expunge._validation import Constraint, Interval, Options
from expunge._warnings import warn_from_caller
from expunge.data import IndexedDataset
from expunge.exceptions import CostWarning
from expunge.models import module_fingerprint
from expunge.store import Store
from expunge.strategies._params import COMMON_CONSTRAINTS
from expunge.strategies._recipe import RECIPE_CONSTRAINTS as TRAINING_RECIPE
from expunge.strategies._recipe import TrainingRecipe
from expunge.strategies.approximate._finite import require_finite
from expunge.strategies.base import FittedModel, ForgetStats, UnlearningStrategy
from expunge.training import (
    EpochKey,
    batched_forward,
    cross_entropy_loss,
    make_optimizer,
    pinned_threads,
    train_epochs,
)

#: torch intra-op threads for training and for every request: the exact strategies'
#: ``threads_per_job`` default, so that fit is Retrain's fit bit for bit and a request's
#: seconds compare with a retraining's
THREADS = 1

#: the training recipe shared with Retrain, plus the seed of the requests' randomness
RECIPE_CONSTRAINTS: dict[str, list[Constraint]] = {
    **TRAINING_RECIPE,
    **COMMON_CONSTRAINTS,
    "unlearn_seed": [None, Interval(int, 0, 2**63 - 1)],
}

#: the knobs of every gradient-based baseline
GRADIENT_CONSTRAINTS: dict[str, list[Constraint]] = {
    "unlearn_lr": [Interval(float, 0, None, closed="neither")],
    "unlearn_epochs": [Interval(float, 0, None, closed="neither")],
    "unlearn_momentum": [Interval(float, 0, 1, closed="left")],
    "unlearn_schedule": [Options(("constant", "linear"))],
}



# ============================================================================ the model
class PatchModel(FittedModel):
    """One module (the patched network), JSON state of the method, and optional caches.

    ``caches`` maps blob names to ``(tensors, metadata)`` written with the model and kept
    alive by it (SSD's Fisher diagonal of the training data); a request never carries
    them over unless its method recomputed them on the retained data.
    """

    def __init__(self, module: nn.Module, *, extra: dict[str, Any] | None = None,
                 caches: dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]] | None = None,
                 sample_passes: int = 0, info: Mapping[str, Any] | None = None) -> None:
        self.module = module.eval()
        self.extra = dict(extra or {})
        self.caches = dict(caches or {})
        self.sample_passes = sample_passes
        self.info = dict(info or {})
        self._fingerprint = module_fingerprint(self.module)

    def single_module(self) -> nn.Module:
        return self.module

    @property
    def model_blob(self) -> str:
        return f"patch/model-{self._fingerprint[:32]}"

    def write(self, store: Store) -> None:
        store.write_blob(self.model_blob, dict(self.module.state_dict()), {"kind": "patch-model"})
        for name, (tensors, metadata) in self.caches.items():
            store.write_blob(name, tensors, metadata)

    def state(self) -> dict[str, Any]:
        return {"model": self.model_blob, "extra": self.extra, "caches": sorted(self.caches),
                "info": self.info}

    def live_blobs(self) -> set[str]:
        return {self.model_blob, *self.caches}

    def learned_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in sorted(self.module.state_dict().items()):
            yield f"model/{name}", tensor

    def predict_proba(self, X: torch.Tensor) -> torch.Tensor:
        return torch.softmax(batched_forward(self.module, X), dim=1)

    def fingerprint(self) -> str:
        return self._fingerprint


# ====================================================================== a request
@dataclass
class Request:
    """What a method's update sees.

    Attributes:
        module: a copy of the live module, to patch in place (train mode is the method's
            business; it is put in eval mode afterwards).
        original: the live module before the request (eval mode; SCRUB's teacher). Never
            modify it and never write it to the store.
        forget: the samples to forget (inputs and labels).
        retained: the training data without them.
        before: the training data before the request (``retained`` + ``forget``).
        key: the request's random key (see the module docstring).
        fitted: the live fitted model (its caches and method state).
        progress: for a progress bar over the method's steps.
    """

    module: nn.Module
    original: nn.Module
    forget: IndexedDataset
    retained: IndexedDataset
    before: IndexedDataset
    key: int
    fitted: PatchModel
    progress: Progress


@dataclass
class Outcome:
    """What a method's update did: sample-passes spent, distinct samples trained on, facts."""

    sample_passes: int = 0
    samples_touched: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] | None = None  # the new model's method state (default: unchanged)
    caches: dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]] = field(
        default_factory=dict)


# ====================================================================== batch streams
class BatchStream:
    """Minibatch positions of a dataset in keyed order, epoch after epoch, forever.

    Epoch ``e`` orders the rows by ``keyed_order(derive_key(key, "epoch", e), ids)``: a
    function of the ids only, like the training loop's order.
    """

    def __init__(self, ids: np.ndarray, key: int, batch_size: int) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.key = key
        self.batch_size = max(1, int(batch_size))
        self.epoch = -1
        self._order = np.empty(0, dtype=np.int64)
        self._at = 0

    def __len__(self) -> int:
        return len(self.ids)

    def next(self) -> torch.Tensor:
        if self._at >= len(self._order):
            self.epoch += 1
            self._order = keyed_order(derive_key(self.key, "epoch", self.epoch), self.ids)
            self._at = 0
        batch = self._order[self._at : self._at + self.batch_size]
        self._at += self.batch_size
        return torch.from_numpy(batch)


def steps_for(epochs: float, n: int, batch_size: int) -> int:
    """Gradient steps that make ``epochs`` passes over ``n`` samples (at least one; none
    when there is nothing to iterate)."""
    if n == 0:
        return 0
    return max(1, math.ceil(float(epochs) * n / max(1, batch_size)))


def descend(
    module: nn.Module, optimizer: torch.optim.Optimizer, n_steps: int,
    step_loss: Callable[[int], tuple[torch.Tensor, int]], *, progress: Progress,
    description: str, after_backward: Callable[[], None] | None = None,
    schedule: str = "constant",
) -> int:
    """Run ``n_steps`` optimizer steps on ``step_loss(step) -> (loss, samples used)``.

    ``after_backward`` may edit the gradients before the step (SalUn's mask).
    ``schedule="linear"`` decays every group's learning rate linearly from its initial
    value to 0 over the steps (step ``t`` uses ``lr * (1 - t / n_steps)``). Returns the
    sample-passes spent (forward + backward per sample).
    """
    module.train()
    task = progress.task(description, n_steps)
    passes = 0
    initial = [group["lr"] for group in optimizer.param_groups]
    for step in range(n_steps):
        if schedule == "linear":
            for group, lr in zip(optimizer.param_groups, initial):
                group["lr"] = lr * (1.0 - step / n_steps)
        optimizer.zero_grad(set_to_none=True)
        loss, used = step_loss(step)
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        passes += used
        progress.advance(task)
    module.eval()
    return passes


# ============================================================================ strategy
class PatchStrategy(TrainingRecipe, UnlearningStrategy):
    """Base of the baselines: fit as Retrain does, forget by patching a copy of the module.

    A subclass sets ``name``, ``summary``, ``_parameter_constraints``, its constructor
    (the recipe parameters below plus its own) and implements :meth:`_unlearn`.

    Recipe parameters (as for :class:`~expunge.Retrain`): ``model``, ``model_params``,
    ``epochs``, ``batch_size``, ``lr``, ``optimizer``, ``momentum``, ``weight_decay``,
    ``seed``; ``unlearn_seed`` keys the requests' randomness (``None``: ``seed``).

    Args:
        model, model_params, epochs, batch_size, lr, optimizer, momentum, weight_decay, seed:
            the training recipe, as for :class:`Retrain` (``fit`` trains what Retrain trains).
        unlearn_seed: the seed of the requests' randomness (batch order, noise, random
            labels); ``None`` uses ``seed``. Acts on requests only: may be changed on open.
        store, show_progress: as for :class:`Retrain`.
    """

    guarantee = "approximate"
    #: fit trains exactly what Retrain trains with the shared parameters (the evaluation
    #: harness reuses one set of reference/shadow models for all such strategies)
    fits_like_retrain: ClassVar[bool] = True

    # the recipe's attributes (model ... seed) are declared by TrainingRecipe
    unlearn_seed: int | None
    store: str | Path | None
    show_progress: bool

    #: the parameters that decide what ``fit`` computes (the recipe). Every other
    #: constructor parameter acts on requests only, so ``expunge.open(S, unlearn_lr=...)``
    #: may change it; each request records the values it used in its ledger entry.
    _fit_params: ClassVar[frozenset[str]] = frozenset({
        "model", "model_params", "epochs", "batch_size", "lr", "optimizer", "momentum",
        "weight_decay", "seed"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # a concrete baseline: its own parameters
            cls._request_params = (frozenset(cls._param_names()) - cls._fit_params
                                   - cls._runtime_params)

    def _set_params(self, values: dict[str, Any]) -> None:
        """Store constructor arguments as given (called with ``locals()``)."""
        for name in self._param_names():
            setattr(self, name, values[name])

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"model": "logreg", "epochs": 2, "batch_size": 16, "lr": 0.1, "momentum": 0.9}

    # ------------------------------------------------------------------ fit
    def _new_module(self, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        return self.initial_network(input_shape, n_classes)  # Retrain's sub-model 0

    def _train(self, data: IndexedDataset, progress: Progress) -> nn.Module:
        """The recipe's training run: Retrain's single sub-model, bit for bit."""
        module = self._new_module(data.input_shape, data.n_classes)
        config = self.train_config()
        optimizer = make_optimizer(module, config)
        keys = [EpochKey(int(self.seed), 0, 0, e) for e in range(self.epochs)]
        task = progress.task(f"{type(self).__name__}: training", self.epochs)
        ordered = data.select(np.sort(data.ids))
        with pinned_threads(THREADS):
            train_epochs(module, optimizer, ordered.batches(), ordered.y, ordered.ids,
                         config=config, keys=keys, on_epoch=lambda: progress.advance(task))
        return module.eval()

    def _fit(self, data: IndexedDataset, store: Store, progress: Progress) -> PatchModel:
        started = time.perf_counter()
        module = self._train(data, progress)
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with pinned_threads(THREADS):
            extra, caches = self._after_fit(module, data, progress)
        info: dict[str, Any] = {"train_seconds": train_seconds}
        if caches:
            info["precompute_seconds"] = time.perf_counter() - started
        fitted = PatchModel(module, extra=extra, caches=caches,
                            sample_passes=len(data) * int(self.epochs), info=info)
        fitted.write(store)
        return fitted

    def _after_fit(self, module: nn.Module, data: IndexedDataset, progress: Progress
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Method state and caches computed once after training (default: none)."""
        return {}, {}

    # --------------------------------------------------------------- forget
    def _request_key(self, ids: np.ndarray) -> int:
        seed = int(self.seed if self.unlearn_seed is None else self.unlearn_seed)
        return derive_key(seed, "unlearn", self.name, sha256_ids(np.sort(ids)))

    def _forget(
        self, fitted: FittedModel, ids: np.ndarray, retained: IndexedDataset,
        store: Store, progress: Progress,
    ) -> tuple[PatchModel, ForgetStats]:
        assert isinstance(fitted, PatchModel)
        before = self.data_
        request = Request(
            module=copy.deepcopy(fitted.module), original=fitted.module,
            forget=before.select(ids), retained=retained, before=before,
            key=self._request_key(ids), fitted=fitted, progress=progress,
        )
        started = time.perf_counter()
        key = request.key
        with pinned_threads(THREADS), torch.random.fork_rng(devices=[]):
            # any randomness inside the module (dropout) is keyed by the request too
            torch.manual_seed(derive_key(key, "module-rng") >> 1)
            outcome = self._unlearn(request)
        request.module.eval()
        # before anything is written
        require_finite(request.module, self.name, len(ids), request.forget.inputs())
        details = {"method_seconds": time.perf_counter() - started, **outcome.details,
                   "retrain_fraction": self._retrain_fraction(outcome, len(retained))}
        new = PatchModel(
            request.module, extra=fitted.extra if outcome.extra is None else outcome.extra,
            caches=outcome.caches, info={**fitted.info, "last_request": details},
        )
        new.write(store)
        return new, ForgetStats(samples_retrained=outcome.samples_touched,
                                sample_passes=outcome.sample_passes, details=details)

    def _retrain_fraction(self, outcome: Outcome, n_retained: int) -> float | None:
        """The request's sample-passes over those of retraining the retained data with the
        recipe (``epochs * |D_r|``); warns when it is 1 or more. The defaults were tuned
        on a 60-epoch recipe (docs/baselines.md): with a short recipe, fine-tuning's 7
        epochs cost more than retraining, which is exact."""
        retraining = n_retained * int(self.epochs)
        if retraining <= 0:
            return None
        fraction = outcome.sample_passes / retraining
        if fraction >= 1.0:
            warn_from_caller(CostWarning(
                f"{type(self).__name__}'s request made {outcome.sample_passes} sample-passes, "
                f"{fraction:.2f}x retraining the {n_retained} retained samples for "
                f"epochs={int(self.epochs)} ({retraining}); Retrain would be exact for "
                f"less. Lower unlearn_epochs (its defaults were tuned for a 60-epoch "
                f"recipe; docs/baselines.md) or use Retrain."))
        return fraction

    @abstractmethod
    def _unlearn(self, request: Request) -> Outcome:
        """Patch ``request.module`` in place; say what it cost."""

    # -------------------------------------------------------------- restore
    def _restore(self, state: dict[str, Any], store: Store) -> PatchModel:
        manifest = store.read_manifest() or {}
        dataset = manifest.get("dataset", {})
        module = self._new_module(tuple(dataset.get("input_shape", ())),
                                  int(dataset.get("n_classes", 0)))
        tensors, _ = store.read_blob(state["model"])
        module.load_state_dict(tensors)
        caches = {name: store.read_blob(name) for name in state.get("caches", [])
                  if store.has_blob(name)}
        return PatchModel(module, extra=state.get("extra", {}), caches=caches,
                          info=state.get("info", {}))


class GradientPatch(PatchStrategy):
    """Base of the gradient baselines: SGD with its own learning rate, epochs and momentum.

    ``unlearn_epochs`` counts passes over the data the method iterates (the retained data
    for the retain-side methods, the forget set for gradient ascent) and may be fractional:
    ``0.5`` makes half a pass, in keyed order. The optimizer is plain SGD with
    ``unlearn_momentum`` and the recipe's ``weight_decay``; ``unlearn_schedule="linear"``
    decays its learning rate linearly to 0 over the request (a large rate first, to leave
    the memorised minimum, then a small one, to settle on the retained data).

    Args:
        unlearn_lr: the learning rate of the request's SGD.
        unlearn_epochs: passes over the data the method iterates (may be fractional).
        unlearn_momentum: the momentum of the request's SGD.
        unlearn_schedule: ``"constant"``, or ``"linear"`` (decays to 0 over the request).
    """

    unlearn_lr: float
    unlearn_epochs: float
    unlearn_momentum: float
    unlearn_schedule: str

    def _descend(self, module: nn.Module, n_steps: int,
                 step_loss: Callable[[int], tuple[torch.Tensor, int]], request: Request,
                 description: str, after_backward: Callable[[], None] | None = None) -> int:
        """:func:`descend` with this method's SGD and learning-rate schedule."""
        return descend(module, self._sgd(module), n_steps, step_loss,
                       progress=request.progress, description=description,
                       after_backward=after_backward, schedule=self.unlearn_schedule)

    def _sgd(self, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in module.parameters() if p.requires_grad],
                               lr=float(self.unlearn_lr), momentum=float(self.unlearn_momentum),
                               weight_decay=float(self.weight_decay))

    def _stream(self, data: IndexedDataset, request: Request, purpose: str) -> BatchStream:
        return BatchStream(data.ids, derive_key(request.key, purpose), self.batch_size)

    def _epochs_over(
        self, data: IndexedDataset, request: Request, purpose: str, description: str, *,
        sign: float = 1.0, penalty: Callable[[int, int], torch.Tensor] | None = None,
        after_backward: Callable[[], None] | None = None,
    ) -> Outcome:
        """SGD on ``sign * CE`` over ``data`` (``+ penalty(step, n_steps)``) for
        ``unlearn_epochs`` passes in keyed order: fine-tuning, gradient ascent, l1-sparse
        and random labels differ only in the data, the sign and the penalty."""
        module = request.module
        stream = self._stream(data, request, purpose)
        n_steps = steps_for(self.unlearn_epochs, len(data), self.batch_size)

        def step(index: int) -> tuple[torch.Tensor, int]:
            batch = stream.next()
            loss = sign * cross_entropy_loss(module, data.inputs(batch), data.y[batch])
            if penalty is not None:
                loss = loss + penalty(index, n_steps)
            return loss, len(batch)

        passes = self._descend(module, n_steps, step, request, description,
                               after_backward=after_backward)
        return Outcome(passes, len(data), {"steps": n_steps})

"""The training-recipe options of Retrain and SISA, and how the exact engine applies them.

``RecipeStrategy`` adds to the exact engine (:mod:`expunge.strategies.exact.sharded`) the
parameters ``lr_schedule``, ``warmup``, ``label_smoothing``, ``loss``, ``max_grad_norm``,
``augment``, ``device`` and ``precision`` (and ``optimizer="adamw"``, shared by every
strategy). It overrides only the engine's per-block hooks, so what is trained, checkpointed,
reused and purged is unchanged; each option is a function of the coordinates the block's
checkpoint key already covers (docs/guarantees.md, "Training recipes"):

* the learning rate of a step is ``lr * schedule(progress)``, progress counted in epochs of
  the sub-model's whole budget (:mod:`expunge.recipe._schedules`);
* augmentation draws from one key per (seed, sub-model, block, epoch, sample id);
* the loss is the recipe's (label smoothing or a user callable), clipping acts per step,
  a float16 loss scaler restarts with every block;
* ``device`` and ``precision`` decide the platform, recorded in the manifest; a request on
  another platform warns and records it in the ledger.

Early stopping is not offered: stopping on a validation score is exact only if the
validation data can never be the subject of a request and the stopping rule is evaluated
per block, which the engine's fixed epoch plan (part of every checkpoint key) does not
express; see docs/recipes.md.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from expunge._imports import import_callable, is_import_string
from expunge._progress import Progress
from expunge._validation import Check, Constraint, Interval, Options
from expunge.data import IndexedDataset
from expunge.exceptions import InvalidParameterError, NondeterminismWarning, UnknownModelError
from expunge.export import CHUNK, ExportedClassifier, chunked_softmax
from expunge.recipe import (
    AUGMENTATIONS,
    DEVICES,
    PRECISIONS,
    SCHEDULES,
    RecipeStep,
    autocast_dtype,
    check_augmentation_input,
    deterministic,
    platform,
    resolve_augmentation,
    resolve_device,
    resolve_schedule,
)
from expunge.store import Store
from expunge.strategies._params import jsonable_param
from expunge.strategies.base import FittedModel, ForgetStats
from expunge.strategies.exact.sharded import ShardedModel, ShardedStrategy, Submodel
from expunge.training import EpochKey, train_epochs


def _is_function(value: Any) -> bool:
    return callable(value) and not isinstance(value, type)


_IMPORT = Check(is_import_string, "an import string 'package.module:function'")

#: the recipe options' constraints (added to the training constraints of Retrain and SISA)
RECIPE_OPTION_CONSTRAINTS: dict[str, list[Constraint]] = {
    "lr_schedule": [Options(SCHEDULES), Check(_is_function, "a callable progress -> factor"),
                    _IMPORT],
    "warmup": [Interval(float, 0, 1, closed="left")],
    "label_smoothing": [Interval(float, 0, 1, closed="left")],
    "loss": [None, Check(_is_function, "a callable loss(logits, targets) -> scalar"), _IMPORT],
    "max_grad_norm": [None, Interval(float, 0, None, closed="neither")],
    "augment": [None, Options(AUGMENTATIONS),
                Check(_is_function, "a callable f(x, keys) -> x"), _IMPORT],
    "device": [Options(DEVICES)],
    "precision": [Options(PRECISIONS)],
}


class RecipeStrategy(ShardedStrategy):
    """An exact strategy whose sub-models train with the full recipe (Retrain, SISA).

    Subclasses implement :meth:`_block_epochs`: the epochs of each block of a sub-model, from
    the parameters alone (the schedule's budget must not depend on the data).
    """

    lr_schedule: Any
    warmup: float
    label_smoothing: float
    loss: Any
    max_grad_norm: float | None
    augment: Any
    device: str
    precision: str

    def _block_epochs(self) -> tuple[int, ...]:
        """Epochs of each block of every sub-model (a function of the parameters only)."""
        raise NotImplementedError

    # ------------------------------------------------------------ parameters
    def _check_params(self) -> None:
        super()._check_params()
        if self.loss is not None and self.label_smoothing:
            raise InvalidParameterError(
                f"label_smoothing={self.label_smoothing!r} applies to the built-in "
                f"cross-entropy, but loss={self.loss!r} replaces it. Smooth inside your loss, "
                "or pass label_smoothing=0."
            )

    def _option(self, name: str) -> Any:
        """A parameter, with an import string resolved to its callable."""
        value = getattr(self, name)
        if is_import_string(value):
            return import_callable(value, name,
                                   UnknownModelError if name == "model" else InvalidParameterError)
        return value

    def _torch_device(self) -> torch.device:
        return resolve_device(str(self.device))

    def _platform(self) -> str:
        return platform(self._torch_device(), str(self.precision))

    def fit(self, dataset: IndexedDataset, *, timeout: float | None = None) -> RecipeStrategy:
        """As :meth:`UnlearningStrategy.fit`; first checks what the recipe needs (its import
        strings import, the device exists, a built-in augmentation fits the inputs), so that
        a bad recipe fails before anything is written."""
        self._validate_params()
        for name in ("loss", "augment", "lr_schedule"):  # (the model: in the base class)
            self._option(name)
        self._torch_device()
        if isinstance(dataset, IndexedDataset):
            check_augmentation_input(self.augment, dataset.input_shape)
        super().fit(dataset, timeout=timeout)
        return self

    # --------------------------------------------------------- engine hooks
    def _new_module(self, submodel: int, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        # built (and seeded) on CPU, then moved: the same initial bits on every device
        return super()._new_module(submodel, input_shape, n_classes).to(self._torch_device())

    def _loss(self, submodel: int, module: nn.Module, x: torch.Tensor,
              y: torch.Tensor) -> torch.Tensor:
        loss = self._option("loss")
        if loss is None:
            return F.cross_entropy(module(x), y, label_smoothing=float(self.label_smoothing))
        value = loss(module(x), y)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InvalidParameterError(
                f"loss={self.loss!r} returned {got}; it must return a scalar tensor: "
                "loss(logits, targets) -> mean loss of the batch."
            )
        return value.reshape(())

    def _train_block(
        self, submodel: int, block: int, module: nn.Module,
        optimizer: torch.optim.Optimizer | None, data: IndexedDataset, epochs: int,
        progress: Progress, task: int | None,
    ) -> None:
        assert optimizer is not None
        budget = self._block_epochs()
        if budget[block] != epochs:  # the plan and the schedule's budget must agree
            raise AssertionError(f"block {block} has {epochs} epochs; budget {budget}")
        device = self._torch_device()
        half = autocast_dtype(str(self.precision))
        recipe = RecipeStep(
            base_lr=float(self.lr),
            schedule=resolve_schedule(self._option("lr_schedule"), float(self.warmup)),
            epochs_before=sum(budget[:block]), total_epochs=sum(budget),
            augment=resolve_augmentation(self._option("augment")),
            max_grad_norm=None if self.max_grad_norm is None else float(self.max_grad_norm),
            device=device, autocast=half,
            scaler=torch.amp.GradScaler(device.type) if half is torch.float16 else None,
        )
        keys = [EpochKey(int(self.seed), submodel, block, e) for e in range(epochs)]
        # on CPU each batch's rows are gathered and transformed as they are needed (the
        # stored dtype stays in memory); on an accelerator the model inputs go there once
        X, y = (data.batches(), data.y) if device.type == "cpu" else (
            data.inputs().to(device), data.y.to(device))
        with deterministic(device):
            train_epochs(
                module, optimizer, X, y, data.ids, config=self.train_config(), keys=keys,
                loss_fn=lambda m, x, t: self._loss(submodel, m, x, t),
                on_epoch=lambda: progress.advance(task), recipe=recipe,
            )

    def _submodel_proba(self, submodel: Submodel, X: torch.Tensor) -> torch.Tensor:
        module = submodel.module
        was_training = module.training
        module.eval()
        with torch.no_grad():
            proba = chunked_softmax(module, X.to(self._torch_device()), CHUNK).cpu()
        module.train(was_training)
        return proba

    # -------------------------------------------------------- platform check
    def _prepare_store(self, store: Store, dataset: IndexedDataset) -> None:
        """The manifest, with the platform the fit computes on (``compute``)."""
        super()._prepare_store(store, dataset)
        manifest = store.read_manifest() or {}
        if store.read_state() is None and manifest.get("compute") != self._compute_record():
            store.write_manifest({**manifest, "compute": self._compute_record()})

    def _compute_record(self) -> dict[str, Any]:
        return {"device": self._torch_device().type, "precision": str(self.precision),
                "platform": self._platform()}

    def _forget(
        self, fitted: FittedModel, ids: np.ndarray, retained: IndexedDataset,
        store: Store, progress: Progress,
    ) -> tuple[ShardedModel, ForgetStats]:
        recorded = ((store.read_manifest() or {}).get("compute") or {}).get("platform")
        here = self._platform()
        details: dict[str, Any] = {"platform": here}
        if recorded is not None and recorded != here:
            details["fit_platform"] = recorded
            warnings.warn(
                f"This store was fitted on {recorded!r}; this request computes on {here!r}. "
                "The retrained sub-models never see the forgotten ids, but other kernels give "
                "other bits: the result is not bit-for-bit fit() on the retained data. Process "
                "requests on the fit's platform to keep that (docs/recipes.md).",
                NondeterminismWarning, stacklevel=3)
        model, stats = super()._forget(fitted, ids, retained, store, progress)
        return model, dataclasses.replace(stats, details={**stats.details, **details})

    # ---------------------------------------------------------------- export
    def _export_module(self) -> ExportedClassifier:
        fitted = self.fitted_
        assert isinstance(fitted, ShardedModel)
        submodels = fitted.submodels
        active = [s for s in submodels if s.n_trained > 0] or list(submodels)
        members = [copy.deepcopy(s.module).eval() for s in active]
        module = ExportedClassifier(members, str(getattr(self, "aggregation", "mean")),
                                    self.input_transform.to_dict())
        return module.to(self._torch_device())  # inputs go where the members are

    def _export_recipe(self) -> dict[str, Any]:
        data = self.training_data
        return {"strategy": self.name, "model": jsonable_param(self.model),
                "model_params": jsonable_param(self.model_params),
                "input_shape": list(data.input_shape), "n_classes": int(data.n_classes),
                "transform": data.transform.to_dict(),
                "fingerprint": self.fingerprint()}

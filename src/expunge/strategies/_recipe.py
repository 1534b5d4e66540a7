"""The training recipe shared by every strategy that trains a network with the shared loop.

Retrain, SISA, ARCANE's SVDD learner and PUMA take the same recipe parameters (``model``,
``model_params``, ``epochs``, ``batch_size``, ``lr``, ``optimizer``, ``momentum``,
``weight_decay``, ``seed``) and turn them into a :class:`~expunge.training.TrainConfig` and a
seeded initial network in one place, here: two strategies with the same recipe therefore
start from the same bits and train with the same settings (PUMA's fit is bit for bit
Retrain's on the same training ids; the evaluation's retrained reference is the evaluated
strategy's recipe on the retained data).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from expunge._validation import Check, Constraint, Interval, Options
from expunge.models import ModelSpec, seeded_model
from expunge.training import TrainConfig

#: the recipe's parameters, in the order the strategies' constructors list them
RECIPE_PARAMS = ("model", "model_params", "epochs", "batch_size", "lr", "optimizer",
                 "momentum", "weight_decay", "seed")

RECIPE_CONSTRAINTS: dict[str, list[Constraint]] = {
    # a factory, not a module instance: every sub-model needs its own fresh, seeded init
    "model": [str, Check(lambda v: callable(v) and not isinstance(v, nn.Module),
                         "a callable returning an nn.Module (not a module instance)")],
    "model_params": [None, dict],
    "epochs": [Interval(int, 1, None)],
    "batch_size": [Interval(int, 1, None)],
    "lr": [Interval(float, 0, None, closed="neither")],
    "optimizer": [Options(("sgd", "adam", "adamw"))],
    "momentum": [Interval(float, 0, 1, closed="left")],
    "weight_decay": [Interval(float, 0, None)],
    "seed": [Interval(int, 0, 2**63 - 1)],
}


class TrainingRecipe:
    """Mixin: the recipe's parameters, its :class:`TrainConfig` and its seeded networks.

    A strategy class lists the recipe parameters in its constructor (scikit-learn style)
    and validates them with :data:`RECIPE_CONSTRAINTS`.
    """

    model: ModelSpec
    model_params: dict[str, Any] | None
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    seed: int

    def train_config(self) -> TrainConfig:
        """The recipe as the training loop takes it (validated by the constraints first)."""
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=float(self.lr),
            optimizer=self.optimizer,  # type: ignore[arg-type]  # validated by constraints
            momentum=float(self.momentum), weight_decay=float(self.weight_decay),
        )

    def initial_network(self, input_shape: tuple[int, ...], n_outputs: int,
                        submodel: int = 0) -> nn.Module:
        """Sub-model ``submodel``'s freshly initialised ``model``: a function of
        ``(seed, submodel)`` only (:func:`expunge.models.seeded_model`)."""
        return seeded_model(self.model, input_shape, n_outputs, self.model_params,
                            seed=int(self.seed), submodel=submodel)

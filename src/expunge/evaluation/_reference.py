"""The reference model every metric is judged against: a model that never saw the forget set.

``reference="retrain"`` trains :class:`~expunge.Retrain` with the evaluated strategy's model
and training settings (the parameters the two share: ``model``, ``model_params``, ``epochs``,
``batch_size``, ``lr``, ``optimizer``, ``momentum``, ``weight_decay``, ``seed``) on the
retained data ``D_r``. That is the "gold standard" of the unlearning literature
(ALGORITHMS.md section 0.3, ``theta_r``).

**Caching.** The trained network is saved in the *evaluated strategy's* store as the blob
``cache/reference/<key>``, where ``key = sha256(Retrain's recorded parameters, input shape,
classes, sorted retained ids)``: evaluating again (also after ``expunge.open``) reuses it.
Every blob under ``cache/`` is purged by the next ``forget`` (see
:data:`expunge.strategies.base.CACHE_PREFIX`), so a cached reference never outlives a
deletion, even one that would have left it valid.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from expunge._hashing import sha256_ids
from expunge.data import IndexedDataset
from expunge.exceptions import InvalidParameterError, UnsupportedModelError
from expunge.store import Store
from expunge.strategies.base import CACHE_PREFIX, UnlearningStrategy
from expunge.strategies.exact.retrain import Retrain
from expunge.strategies.exact.sharded import ShardedModel, Submodel

if TYPE_CHECKING:
    from expunge.evaluation._cache import EvaluationCache

REFERENCE_BLOB_PREFIX = CACHE_PREFIX + "reference/"


@dataclass
class ModelView:
    """What the harness needs from a model: probabilities, identity, and its network when
    it is a single one (for the parameter distance)."""

    predict_proba: Callable[[torch.Tensor], torch.Tensor]
    fingerprint: str
    module: nn.Module | None


def single_module(strategy: UnlearningStrategy) -> nn.Module | None:
    """The strategy's network if it is exactly one (Retrain, PUMA), else ``None`` (ensembles)."""
    return strategy.fitted_.single_module() if strategy.is_fitted else None


def model_view(strategy: UnlearningStrategy) -> ModelView:
    return ModelView(strategy.predict_proba, strategy.fingerprint(), single_module(strategy))


def copy_with(strategy: UnlearningStrategy, **changes: Any) -> UnlearningStrategy:
    """A fresh, unfitted, in-memory copy of ``strategy`` with some parameters changed."""
    missing = [k for k in changes if k not in strategy.get_params()]
    if missing:
        raise InvalidParameterError(
            f"{type(strategy).__name__} has no parameter(s) {missing}, which this evaluation "
            "needs to vary (seeds= and shadow models set 'seed'; shadow_epochs sets 'epochs'; "
            "unlearning seeds set 'unlearn_seed')."
        )
    return strategy.clone().set_params(**changes, store=None, show_progress=False)


def shared_training_params(strategy: UnlearningStrategy) -> dict[str, Any]:
    """The evaluated strategy's parameters that :class:`Retrain` also has and that decide
    what is computed (its runtime parameters left out: the reference runs in memory)."""
    names = set(Retrain().get_params()) - Retrain.runtime_param_names()
    return {k: v for k, v in strategy.get_params().items() if k in names}


@dataclass
class Reference:
    """A reference model and how it was obtained.

    Attributes:
        view: its predictions, fingerprint and network.
        kind: ``"retrain"`` (trained or loaded from the cache) or ``"strategy"`` (given).
        seconds: time its training took (the cost of retraining from scratch), even when
            this evaluation loaded it from the cache.
        samples_retrained / sample_passes: what that training cost in samples.
        store_bytes: bytes its own store held after training (``None`` if unknown).
        cached: loaded from the evaluated strategy's store instead of trained now.
        description: JSON-able facts for the report.
    """

    view: ModelView
    kind: str
    seconds: float
    samples_retrained: int
    sample_passes: int
    store_bytes: int | None
    cached: bool
    description: dict[str, Any] = field(default_factory=dict)


def reference_key(params: dict[str, Any], retained: IndexedDataset) -> str:
    """Cache key of a retrained reference: recorded parameters + data shape + retained ids."""
    text = json.dumps(
        {"params": params, "input_shape": list(retained.input_shape),
         "n_classes": retained.n_classes},
        sort_keys=True, default=str,
    )
    return sha256_ids(np.sort(retained.ids), prefix=text + "|")


def _retrain_for(strategy: UnlearningStrategy) -> Retrain:
    try:
        return Retrain(**shared_training_params(strategy), store=None, show_progress=False)
    except TypeError as err:  # pragma: no cover - Retrain's signature is fixed
        raise InvalidParameterError(f"cannot build the Retrain reference: {err}") from err


def retrain_reference(
    strategy: UnlearningStrategy, retained: IndexedDataset, *, cache: bool = True,
    shared: EvaluationCache | None = None,
) -> Reference:
    """Retrain on ``retained`` with ``strategy``'s model and settings, or load it from the cache.

    ``shared`` (an :class:`~expunge.evaluation.EvaluationCache`) is looked up first and
    filled after training, so that evaluations of other strategies with the same recipe,
    seed and retained data reuse the model.

    Raises:
        UnsupportedModelError: the strategy's model cannot be trained as one classifier
            (pass ``reference=`` a strategy of your own instead).
    """
    retrain = _retrain_for(strategy)
    params = retrain.recorded_params()
    key = reference_key(params, retained)
    blob = REFERENCE_BLOB_PREFIX + key[:32]
    store: Store | None = getattr(strategy, "store_", None) if cache else None
    description: dict[str, Any] = {
        "kind": "retrain", "strategy": "retrain", "params": params, "n_train": len(retained),
        "cache_blob": blob if store is not None else None,
    }
    found = shared.get_reference(key) if shared is not None else None
    if found is None and store is not None and store.has_blob(blob):
        found = store.read_blob(blob)
    if found is not None:
        tensors, meta = found
        module = retrain._new_module(0, retained.input_shape, retained.n_classes)
        module.load_state_dict(tensors)
        module.eval()
        fitted = ShardedModel(retrain, [Submodel(0, [], module, {}, n_trained=len(retained))])
        description.update(cached=True, fingerprint=fitted.fingerprint())
        return Reference(
            view=ModelView(fitted.predict_proba, fitted.fingerprint(), module), kind="retrain",
            seconds=float(meta["seconds"]), samples_retrained=int(meta["samples_retrained"]),
            sample_passes=int(meta["sample_passes"]),
            store_bytes=int(meta["store_bytes"]) if meta.get("store_bytes") else None,
            cached=True, description=description,
        )
    started = time.perf_counter()
    try:
        retrain.fit(retained)
    except UnsupportedModelError as err:
        raise UnsupportedModelError(
            f"The Retrain reference cannot use this {type(strategy).__name__}'s model: {err} "
            "Pass reference= a fitted (or unfitted) strategy that trains on the retained data."
        ) from err
    seconds = time.perf_counter() - started
    entry = retrain.ledger.entries("fit")[0]
    trained = single_module(retrain)
    store_bytes = retrain.store_.size_bytes()
    meta = {
        "kind": "retrain-reference", "seconds": repr(seconds),
        "samples_retrained": str(entry.samples_retrained),
        "sample_passes": str(entry.sample_passes), "store_bytes": str(store_bytes),
        "fingerprint": retrain.fingerprint(), "n_train": str(len(retained)),
    }
    if store is not None and trained is not None:
        store.write_blob(blob, dict(trained.state_dict()), meta)
    if shared is not None and trained is not None:
        shared.put_reference(key, dict(trained.state_dict()), meta)
    description.update(cached=False, fingerprint=retrain.fingerprint())
    view = model_view(retrain)
    retrain.close()
    return Reference(
        view=view, kind="retrain", seconds=seconds, samples_retrained=entry.samples_retrained,
        sample_passes=entry.sample_passes, store_bytes=store_bytes, cached=False,
        description=description,
    )


def strategy_reference(
    reference: UnlearningStrategy, retained: IndexedDataset, forget_ids: np.ndarray
) -> Reference:
    """A user-given reference: fitted on ``retained`` now if it is not fitted yet.

    Raises:
        InvalidParameterError: a fitted reference still holds some forget ids.
    """
    if not reference.is_fitted:
        reference.fit(retained)
    else:
        held = reference.training_data.contains(forget_ids)
        if held.any():
            raise InvalidParameterError(
                f"The reference was trained on forget ids {forget_ids[held][:10].tolist()}; a "
                "reference must never have seen the forget set. Fit it on the retained data, "
                "or pass reference='retrain'."
            )
    entry = reference.ledger.entries("fit")[0]
    forgets = reference.ledger.entries("forget")
    return Reference(
        view=model_view(reference), kind="strategy",
        seconds=entry.seconds, samples_retrained=entry.samples_retrained,
        sample_passes=entry.sample_passes,
        store_bytes=store_bytes_excluding_cache(reference.store_), cached=False,
        description={
            "kind": "strategy", "strategy": reference.name,
            "params": reference.recorded_params(), "n_train": len(reference.training_data),
            "fingerprint": reference.fingerprint(), "cached": False,
            "note": "fit cost from its ledger" + (
                f"; it has since served {len(forgets)} forget request(s)" if forgets else ""),
        },
    )


def store_bytes_excluding_cache(store: Store) -> int:
    """Bytes the store uses, not counting ``cache/`` blobs (the evaluation's own additions)."""
    cached = sum(store.blob_size(name) for name in store.list_blobs()
                 if name.startswith(CACHE_PREFIX))
    return max(store.size_bytes() - cached, 0)

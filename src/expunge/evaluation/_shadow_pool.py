"""The harness's shadow pool: N models, each trained on a keyed half of ``D + D_te``.

One pool serves three consumers: LiRA (its in/out Gaussians), RMIA (its reference models)
and the memorisation ranking of forget sets (in-minus-out accuracy, Feldman & Zhang 2020).
Every pool sample is in exactly ``N/2`` shadows (:func:`shadow_membership`), chosen by a
keyed hash of the id, so the halves depend on nothing but the ids, the seed and ``N``.

**Which models.** A shadow is the evaluated strategy's class with a per-shadow seed; for a
strategy that fits exactly as Retrain does (``fits_like_retrain``: Retrain itself and the
approximate baselines) it is Retrain with the shared parameters, which trains the same
bits. Their predictions on the whole pool are what is kept, so an
:class:`~expunge.evaluation.EvaluationCache` can serve them to every later evaluation with
the same recipe, seed and pool (U-LiRA, whose shadows must also *forget*, always trains).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from expunge._hashing import derive_key, keyed_hash, sha256_ids
from expunge._progress import NO_PROGRESS, Progress
from expunge.data import IndexedDataset
from expunge.evaluation._cache import CachedShadow, EvaluationCache
from expunge.evaluation._features import logit_scaled_confidence
from expunge.evaluation._reference import copy_with, shared_training_params
from expunge.evaluation.attacks._lira import shadow_membership
from expunge.exceptions import InvalidParameterError
from expunge.strategies.base import UnlearningStrategy
from expunge.strategies.exact.retrain import Retrain


def pool_of(train: IndexedDataset, test: IndexedDataset) -> tuple[IndexedDataset, np.ndarray]:
    """``train + test`` with test ids moved above every training id if they collide; and
    the ids the test samples have in the pool (in ``test``'s order)."""
    test_ids = test.ids
    if np.isin(test.ids, train.ids).any():
        offset = int(max(train.ids.max(), test.ids.max())) + 1
        test_ids = offset + np.arange(len(test), dtype=np.int64)
    n_classes = max(train.n_classes, test.n_classes)
    pool = IndexedDataset.concat([
        train.with_n_classes(n_classes),
        IndexedDataset(test.X, test.y, test_ids, n_classes=n_classes, transform=test.transform)])
    return pool, np.asarray(test_ids)


def fits_like_retrain(strategy: UnlearningStrategy) -> bool:
    return isinstance(strategy, Retrain) or bool(getattr(type(strategy), "fits_like_retrain",
                                                         False))


def fit_identity(strategy: UnlearningStrategy, changes: dict[str, object],
                 as_retrain: bool = False) -> str:
    """What a shadow's fit depends on besides its seed and data (JSON)."""
    if as_retrain or fits_like_retrain(strategy):
        params = {**shared_training_params(strategy), **changes}
        recorded = Retrain(**{**params, "seed": 0}).recorded_params()
        name = "retrain"
    else:
        recorded = {**strategy.recorded_params(), **changes}
        name = strategy.name
    recorded.pop("seed", None)
    return json.dumps({"strategy": name, "params": recorded}, sort_keys=True, default=str)


@dataclass
class ShadowPool:
    """Per shadow, predictions on the whole pool.

    Attributes:
        ids: the pool's ids (sorted); all arrays are in this order.
        membership: ``(N, n)``: shadow ``k`` trained on sample ``i``.
        p_label: ``(N, n)`` probability of each sample's label under each shadow.
        phi: ``(N, n)`` LiRA's logit-scaled confidence.
        fit_seconds: training time of the shadows (what they cost when first trained,
            also when this evaluation took them from the cache); ``cached``: how many did.
        shadow_size: mean training-set size.
    """

    ids: np.ndarray
    membership: np.ndarray
    p_label: np.ndarray
    phi: np.ndarray
    fit_seconds: float
    cached: int
    shadow_size: float

    @property
    def n_shadows(self) -> int:
        return int(self.membership.shape[0])

    def columns(self, ids: np.ndarray) -> np.ndarray:
        positions = np.searchsorted(self.ids, ids)
        if not (positions < self.ids.size).all() or not np.array_equal(self.ids[positions], ids):
            raise InvalidParameterError("some target ids are not in the shadow pool")
        return positions


def build_shadow_pool(
    strategy: UnlearningStrategy, pool: IndexedDataset, *, n_shadows: int, seed: int,
    changes: dict[str, object] | None = None, cache: EvaluationCache | None = None,
    progress: Progress = NO_PROGRESS,
    forget: tuple[np.ndarray, IndexedDataset] | None = None, recipe: str = "strategy",
) -> tuple[ShadowPool, np.ndarray | None, float]:
    """Fit (or take from ``cache``) ``n_shadows`` shadows on halves of ``pool``.

    Args:
        strategy: the evaluated strategy: shadows copy its class and parameters (or
            Retrain's, see the module docstring) with ``seed`` per shadow and ``changes``
            (e.g. fewer epochs).
        forget: ``(forget_ids, targets)`` for U-LiRA: each shadow then forgets the forget
            ids in its half with the strategy's own ``forget`` and ``targets`` are scored
            again. The cache cannot serve these shadows (they are trained here).
        recipe: ``"strategy"`` (the evaluated strategy's class) or ``"retrain"`` (Retrain
            with the shared training parameters for every strategy: one set of reference
            models attacks every method; ignored with ``forget``).

    Returns:
        The pool's predictions; for U-LiRA the ``(N, len(targets))`` LiRA scores after
        forgetting (else ``None``); the seconds the forget requests took.
    """
    changes = dict(changes or {})
    ids = np.sort(pool.ids)
    ordered = pool.select(ids)
    membership = shadow_membership(ids, n_shadows, seed)
    use_retrain = (fits_like_retrain(strategy) or recipe == "retrain") and forget is None
    identity = fit_identity(strategy, changes, as_retrain=use_retrain)
    p_label = np.empty((n_shadows, ids.size))
    phi = np.empty((n_shadows, ids.size))
    after = None if forget is None else np.empty((n_shadows, len(forget[1])))
    fit_seconds = forget_seconds = 0.0
    cached, sizes = 0, []
    labels = ordered.y.numpy()
    task = progress.task(f"shadow models: {n_shadows}", n_shadows)
    for k in range(n_shadows):
        half = ordered.where(membership[k])
        sizes.append(len(half))
        shadow_seed = derive_key(seed, "lira-shadow-seed", k) >> 2
        key = sha256_ids(half.ids, prefix=f"{identity}|seed={shadow_seed}|")
        hit = cache.get_shadow(key) if (cache is not None and forget is None) else None
        if hit is None:
            if use_retrain:
                shadow: UnlearningStrategy = Retrain(**{
                    **shared_training_params(strategy), **changes, "seed": shadow_seed})
            else:
                shadow = copy_with(strategy, seed=shadow_seed, **changes)
            started = time.perf_counter()
            shadow.fit(half)
            seconds = time.perf_counter() - started
            probs = shadow.predict_proba(ordered.X).detach().double().numpy()
            hit = CachedShadow(ids, probs[np.arange(ids.size), labels],
                               logit_scaled_confidence(probs, labels), seconds, len(half))
            if cache is not None:
                cache.put_shadow(key, hit)
            if forget is not None and after is not None:
                forget_ids, targets = forget
                own = half.ids[np.isin(half.ids, forget_ids)]
                if own.size:
                    started = time.perf_counter()
                    shadow.forget(own)
                    forget_seconds += time.perf_counter() - started
                after[k] = logit_scaled_confidence(shadow.predict_proba(targets.X), targets.y)
            shadow.close()
        else:
            cached += 1
        p_label[k], phi[k] = hit.p_label, hit.phi
        fit_seconds += hit.seconds
        progress.advance(task)
    return (ShadowPool(ids, membership, p_label, phi, fit_seconds, cached,
                       float(np.mean(sizes))), after, forget_seconds)


def memorisation_scores(
    strategy: UnlearningStrategy, train: IndexedDataset, test: IndexedDataset, *,
    n_models: int = 4, seed: int = 0, cache: EvaluationCache | None = None,
    progress: Progress = NO_PROGRESS,
) -> tuple[np.ndarray, np.ndarray]:
    """How much each training sample is memorised: Feldman & Zhang's (NeurIPS 2020)
    in-minus-out estimate from the shadow pool.

    ``mem(x) = mean_{k: x in half k} p_k(y|x) - mean_{k: x not in half k} p_k(y|x)`` with
    the label's probability in place of the 0/1 correctness (smoother with few models).
    The pool is ``train + test`` with ``n_models`` shadows and ``seed``, exactly the pool
    :func:`~expunge.evaluate` builds for LiRA/RMIA on the same data, so with a shared
    ``cache`` the evaluation reuses these models.

    Args:
        strategy: a (fitted or unfitted) strategy whose recipe trains the models.
        train, test: the original training data and the test set.

    Returns:
        ``(ids, scores)`` of the training samples, in ``train``'s order. Cost: ``n_models``
        fits on half of ``train + test`` (none when cached).
    """
    pool, _ = pool_of(train, test)
    shadows, _, _ = build_shadow_pool(strategy, pool, n_shadows=n_models, seed=seed,
                                      cache=cache, progress=progress)
    columns = shadows.columns(train.ids)
    inside = shadows.membership[:, columns]
    p = shadows.p_label[:, columns]
    mean_in = np.where(inside, p, 0.0).sum(axis=0) / np.maximum(inside.sum(axis=0), 1)
    mean_out = np.where(~inside, p, 0.0).sum(axis=0) / np.maximum((~inside).sum(axis=0), 1)
    return train.ids.copy(), mean_in - mean_out


def memorised_forget_ids(
    strategy: UnlearningStrategy, train: IndexedDataset, test: IndexedDataset, *,
    fraction: float, n_models: int = 4, seed: int = 0, cache: EvaluationCache | None = None,
    progress: Progress = NO_PROGRESS, exclude_ids: np.ndarray | None = None,
) -> np.ndarray:
    """The ``fraction`` of training ids with the highest memorisation score (sorted ids).

    The difficulty-aware forget set of RUM (Zhao et al., NeurIPS 2024) and RULI: samples a
    model fits only because it saw them, which a retrained model gets wrong. Ties are
    broken by a keyed hash of the id. ``exclude_ids`` are never chosen (e.g. a tuning set).
    """
    if not 0 < fraction < 1:
        raise InvalidParameterError(f"fraction must be in (0, 1); got {fraction!r}.")
    ids, scores = memorisation_scores(strategy, train, test, n_models=n_models, seed=seed,
                                      cache=cache, progress=progress)
    allowed = ~np.isin(ids, exclude_ids) if exclude_ids is not None else np.ones(ids.size, bool)
    tie = keyed_hash(derive_key(seed, "memorised-ties"), ids).astype(np.float64)
    order = np.lexsort((tie, -scores))
    order = order[allowed[order]]
    count = max(1, round(fraction * ids.size))
    return np.sort(ids[order[:count]])


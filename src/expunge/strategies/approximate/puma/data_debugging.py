"""Data debugging with PUMA's scores: harmfulness of each training sample, mislabel ranking
(the paper's experiment E6)."""

from __future__ import annotations

import numpy as np
import torch

from expunge.exceptions import InvalidParameterError, NotFittedError, UnsupportedModelError
from expunge.strategies.approximate.curvature import eigenvalue_correction
from expunge.strategies.approximate.puma._model import PumaModel
from expunge.strategies.approximate.puma._precompute import Linearisation, kfac_inverse
from expunge.strategies.approximate.puma._solve import curvature_solve, kfac_solve, warn_solve
from expunge.strategies.approximate.puma.strategy import PUMA

#: curvatures the scores can use with the K-FAC solver
SCORE_CURVATURES = ("ekfac", "kfac")


def harmfulness_scores(strategy: PUMA, *, curvature: str = "ekfac"
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Harmfulness of every training sample of a fitted PUMA (or NaiveInfluence).

    The score of sample ``i`` is ``I_i = -grad C^T H^{-1} grad l_i``: the first-order change
    of the criterion (mean validation cross-entropy; with ``criterion="per_class_loss"`` the
    sum of the per-class losses) per unit of extra weight on ``i`` (Koh & Liang 2017's
    influence on the validation loss), with the strategy's curvature ``H`` plus weight
    decay and damping: an exact solver's, or with ``solver="kfac"``:

    * ``curvature="ekfac"`` (default): K-FAC's eigenbasis with EK-FAC's corrected
      eigenvalues (George et al. 2018), computed for the scores in one more pass over the
      curvature sample (~as long as the K-FAC factors: 0.1-0.4 s on MNIST). On E6
      (docs/results.md) it finds flipped labels as well as the exact curvature does,
      where plain K-FAC's eigenvalues (the independence of a layer's inputs and output
      derivatives) miss a sixth of them;
    * ``curvature="kfac"``: the factors PUMA's requests use, as they are.

    **Sign:** ``I_i > 0`` means up-weighting ``i`` *increases* the validation loss, so ``i``
    is harmful (a likely mislabel); ``I_i < 0`` means it helps. Removing ``i`` alone changes
    the criterion by about ``-(I_i - mean I) / n``.

    Cost: one solve per criterion plus one forward-mode JVP pass over the training split
    (computed on demand, kept in memory for the current parameters, never stored).

    Returns:
        ``(ids, scores)``: the training ids (criterion samples have no score) and their
        scores, as NumPy arrays in the same order.
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
    if curvature not in SCORE_CURVATURES:
        raise InvalidParameterError(
            f"curvature={curvature!r} is not one of {SCORE_CURVATURES}: 'ekfac' (the "
            "default) corrects K-FAC's eigenvalues, 'kfac' uses the request's factors."
        )
    fitted = strategy.fitted_
    assert isinstance(fitted, PumaModel) and fitted.cache is not None
    if not strategy.uses_kfac_solver:
        curvature = "exact"  # an exact solver's scores need no correction
    if curvature not in fitted.scores:
        fitted.scores[curvature] = _compute(strategy, fitted, curvature)
    ids, scores = fitted.scores[curvature]
    return ids.copy(), scores.copy()


def _compute(strategy: PUMA, fitted: PumaModel, curvature: str
             ) -> tuple[np.ndarray, np.ndarray]:
    cache = fitted.cache
    assert cache is not None
    lin = Linearisation(strategy, fitted.module, strategy.data_, fitted.val_ids,
                        fitted.removed_classes, sample_fraction=cache.sample_fraction)
    lin.fill_cache(cache)
    if len(lin.criterion_rows) == 0:
        raise UnsupportedModelError(
            "harmfulness_scores needs validation samples for the criterion; this model has "
            "none left. Refit with val_fraction > 0 or pass validation=..."
        )
    totals = cache.totals()
    if curvature == "ekfac":
        assert lin.layers is not None
        base = kfac_inverse(lin, cache)
        corrected = base.corrected(eigenvalue_correction(lin.curv, lin.layers, base,
                                                         lin.sample_rows))
        solve = kfac_solve(corrected, float(strategy.weight_decay) + cache.damping)
    else:
        solve = curvature_solve(lin, cache, lin.train_rows)
    results = [solve(g) for g in totals.criterion_gradients()]
    for r in results:
        warn_solve(strategy, r, "solve for the criterion direction H^-1 grad C")
    V = torch.stack([r.x for r in results])
    scores = -lin.curv.directional(V, lin.train_rows).sum(dim=1)
    return lin.data.ids[lin.train_rows].copy(), scores.numpy().astype(np.float64)


def rank_mislabelled(strategy: PUMA, top: int | None = None, *,
                     curvature: str = "ekfac") -> np.ndarray:
    """Training ids ordered from most to least harmful (see :func:`harmfulness_scores`,
    whose ``curvature`` this passes on).

    Inspecting this list from the front finds mislabelled samples: a flipped label makes
    its sample's gradient push against the validation loss, so its score is large and
    positive. Ties are broken by id. ``top`` keeps the first ``top`` ids.
    """
    ids, scores = harmfulness_scores(strategy, curvature=curvature)
    order = np.lexsort((ids, -scores))
    ranked = ids[order]
    return ranked if top is None else ranked[: int(top)]

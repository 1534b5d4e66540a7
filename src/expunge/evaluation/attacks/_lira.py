"""LiRA (Carlini et al. 2022) and U-LiRA (Hayes et al. 2024) with a few shadow models.

**Shadow models.** ``N`` copies of the evaluated strategy (same class and parameters, seed
``derive_key(seed, "lira-shadow", k)``, optionally fewer epochs) are each fitted on half of a
*pool* = original training data (forget set included) + test set. Each pool sample is in
exactly ``N // 2`` shadows, chosen by ranking the shadows by a keyed hash of the sample id,
so every target has shadows that saw it ("in") and shadows that did not ("out").

**LiRA (online, global variance).** For a target ``x`` with LiRA score
``phi = log p_y - log sum_{j != y} p_j`` (:func:`logit_scaled_confidence`), fit
``N(mu_in(x), s_in^2)`` and ``N(mu_out(x), s_out^2)`` to the in- and out-shadows' ``phi(x)``
and score a model by ``log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)``. With few
shadows the paper uses one variance for all examples; here it is the pooled *within-example*
variance (residuals around each example's own means), a choice [R]: the paper's code takes
the standard deviation of all in-values, which also counts the spread between examples.

**U-LiRA [R: simplified from Hayes et al., "Inexact Unlearning Needs More Careful
Evaluations to Avoid a False Sense of Privacy", 2024].** After fitting, each shadow *forgets*
the forget-set samples in its half with the evaluated strategy's own ``forget``. For a forget
sample ``x``, the shadows that held ``x`` give the "unlearned" distribution of ``phi(x)``, the
others (never trained on ``x``) the "retrained" one; the same likelihood ratio then says how
much more the evaluated model looks unlearned than retrained. The report compares the
model's ratios with the retrained reference's over the forget set: AUC 0.5 means the
unlearned model cannot be told from a retrained one (the paper classifies many held-out
target models per example; one target and one reference per example is the cheap version).

Cost: ``N`` fits on half the pool (plus ``N`` forget requests for U-LiRA), reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from expunge._hashing import derive_key, keyed_hash
from expunge._progress import NO_PROGRESS, Progress
from expunge.data._dataset import IndexedDataset
from expunge.evaluation._features import logit_scaled_confidence
from expunge.exceptions import InvalidParameterError
from expunge.strategies.base import UnlearningStrategy

#: standard deviations are floored here so degenerate (constant) scores stay finite
MIN_STD = 1e-6


def shadow_membership(ids: np.ndarray, n_shadows: int, seed: int) -> np.ndarray:
    """``(n_shadows, n)`` booleans: which shadows train on each id (exactly ``n_shadows // 2``).

    Shadow ``k`` ranks the ids by ``keyed_hash(derive_key(seed, "lira-shadow", k), id)``;
    each id goes to the ``n_shadows // 2`` shadows where its hash ranks lowest *among the
    shadows*, so an id's membership depends on nothing but the id, ``seed`` and ``N``.
    """
    if n_shadows < 2:
        raise InvalidParameterError(
            f"LiRA needs at least 2 shadow models (some with and some without each sample); "
            f"got shadow_models={n_shadows}."
        )
    ids = np.asarray(ids, dtype=np.int64)
    hashes = np.stack([keyed_hash(derive_key(seed, "lira-shadow", k), ids)
                       for k in range(n_shadows)])
    ranks = np.argsort(np.argsort(hashes, axis=0, kind="stable"), axis=0, kind="stable")
    return ranks < n_shadows // 2


def likelihood_ratio_scores(
    phi: np.ndarray, shadow_phi: np.ndarray, shadow_in: np.ndarray, *, min_std: float = MIN_STD
) -> np.ndarray:
    """Online LiRA: ``log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)`` per example.

    Args:
        phi: ``(n,)`` scores of the model under attack.
        shadow_phi: ``(N, n)`` scores of the same examples under each shadow.
        shadow_in: ``(N, n)`` booleans: shadow ``k`` is on the "in" side for example ``i``
            (trained on it for LiRA; trained on it *and then forgot it* for U-LiRA).

    Means are per example; the two variances are pooled over examples (global variance).
    Higher means more like the "in" side.
    """
    phi = np.asarray(phi, dtype=np.float64)
    shadow_phi = np.asarray(shadow_phi, dtype=np.float64)
    inside = np.asarray(shadow_in, dtype=bool)
    if shadow_phi.shape != inside.shape or shadow_phi.shape[1:] != phi.shape:
        raise InvalidParameterError(
            f"shadow_phi {shadow_phi.shape}, shadow_in {inside.shape} and phi {phi.shape} "
            "must agree: (n_shadows, n) and (n,)."
        )
    n_in, n_out = inside.sum(axis=0), (~inside).sum(axis=0)
    if (n_in == 0).any() or (n_out == 0).any():
        raise InvalidParameterError("every example needs at least one in- and one out-shadow.")

    def side(mask: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, float]:
        mean = np.where(mask, shadow_phi, 0.0).sum(axis=0) / count
        residual = np.where(mask, shadow_phi - mean, 0.0)
        dof = max(int(count.sum()) - phi.size, 1)
        return mean, max(float(np.sqrt((residual**2).sum() / dof)), min_std)

    mu_in, s_in = side(inside, n_in)
    mu_out, s_out = side(~inside, n_out)
    log_in = -0.5 * ((phi - mu_in) / s_in) ** 2 - np.log(s_in)
    log_out = -0.5 * ((phi - mu_out) / s_out) ** 2 - np.log(s_out)
    return np.asarray(log_in - log_out)


@dataclass
class ShadowModels:
    """LiRA scores of the target examples under every shadow, and what they cost.

    Attributes:
        membership: ``(N, n_targets)``: shadow ``k`` was fitted on target ``i``.
        phi_fit: ``(N, n_targets)`` LiRA scores after fitting.
        phi_forgotten: ``(N, n_targets)`` after each shadow forgot its forget-set samples
            (``None`` unless requested; for U-LiRA).
        forgotten: ``(N, n_targets)``: shadow ``k`` forgot target ``i``.
        fit_seconds / forget_seconds: summed over shadows.
        shadow_size: training samples per shadow (mean).
    """

    membership: np.ndarray
    phi_fit: np.ndarray
    phi_forgotten: np.ndarray | None
    forgotten: np.ndarray
    fit_seconds: float
    forget_seconds: float
    shadow_size: float

    @property
    def n_shadows(self) -> int:
        return int(self.membership.shape[0])


def train_shadows(
    make_shadow: Callable[[int], UnlearningStrategy],
    pool: IndexedDataset,
    targets: IndexedDataset,
    *,
    n_shadows: int,
    seed: int,
    forget_ids: np.ndarray | None = None,
    progress: Progress = NO_PROGRESS,
) -> ShadowModels:
    """Fit ``n_shadows`` shadows on halves of ``pool`` and score ``targets`` (ids in ``pool``).

    Args:
        make_shadow: ``k -> unfitted strategy`` (the evaluated strategy's class and settings
            with a per-shadow seed).
        pool: data the halves are drawn from.
        targets: the examples to score; every id must be in ``pool``.
        n_shadows: N (>= 2).
        seed: keys the halves.
        forget_ids: when given, each shadow then forgets ``forget_ids ∩ its half`` and the
            targets are scored again (U-LiRA).
    """
    membership_pool = shadow_membership(pool.ids, n_shadows, seed)
    target_pos = pool.positions(targets.ids)
    membership = membership_pool[:, target_pos]
    is_forget_target = (np.isin(targets.ids, forget_ids) if forget_ids is not None
                        else np.zeros(len(targets), bool))
    phi_fit = np.empty((n_shadows, len(targets)))
    phi_forgotten = np.empty((n_shadows, len(targets))) if forget_ids is not None else None
    fit_seconds = forget_seconds = 0.0
    sizes = []
    task = progress.task(f"LiRA: {n_shadows} shadow models", n_shadows)
    for k in range(n_shadows):
        half = pool.where(membership_pool[k])
        sizes.append(len(half))
        shadow = make_shadow(k)
        started = time.perf_counter()
        shadow.fit(half)
        fit_seconds += time.perf_counter() - started
        phi_fit[k] = logit_scaled_confidence(shadow.predict_proba(targets.X), targets.y)
        if phi_forgotten is not None:
            own = half.ids[np.isin(half.ids, forget_ids)]
            if own.size:
                started = time.perf_counter()
                shadow.forget(own)
                forget_seconds += time.perf_counter() - started
            phi_forgotten[k] = logit_scaled_confidence(shadow.predict_proba(targets.X), targets.y)
        shadow.close()
        progress.advance(task)
    return ShadowModels(
        membership=membership, phi_fit=phi_fit, phi_forgotten=phi_forgotten,
        forgotten=membership & is_forget_target[None, :], fit_seconds=fit_seconds,
        forget_seconds=forget_seconds, shadow_size=float(np.mean(sizes)),
    )

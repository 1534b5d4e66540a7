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

**U-LiRA [R: a small version of Hayes et al., "Inexact Unlearning Needs More Careful
Evaluations to Avoid a False Sense of Privacy", 2024].** After fitting, each shadow *forgets*
the forget-set samples in its half with the evaluated strategy's own ``forget``. For a forget
sample ``x``, the shadows that held ``x`` are *unlearned* models, the others (never trained on
``x``) *retrained* ones, both produced by the same strategy. As in the paper, held-out
target models are classified: each shadow in turn is the target, and the Gaussians of the
likelihood ratio are fitted on the other ``N - 1`` (:func:`ulira_leave_one_out`). AUC 0.5
means the strategy's unlearned models cannot be told from its retrained ones on these
samples (exact strategies are at 0.5 up to noise). This judges the *strategy's* forgetting
on these samples, not the one evaluated model: scoring that model against the shadows is
not calibrated, since it trained on all of ``D_r`` and the shadows on half the pool (for
exact SISA on MNIST it made 89 % of the forget samples look "unlearned" against 52 % for
a retrained shadow).

Cost: ``N`` fits on half the pool (plus ``N`` forget requests for U-LiRA), reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from expunge._hashing import derive_key, keyed_hash
from expunge._progress import NO_PROGRESS, Progress
from expunge.data import IndexedDataset
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
    phi: np.ndarray, shadow_phi: np.ndarray, shadow_in: np.ndarray, *,
    used: np.ndarray | None = None, min_std: float = MIN_STD,
) -> np.ndarray:
    """Online LiRA: ``log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)`` per example.

    Args:
        phi: ``(n,)`` scores of the model under attack.
        shadow_phi: ``(N, n)`` scores of the same examples under each shadow.
        shadow_in: ``(N, n)`` booleans: shadow ``k`` is on the "in" side for example ``i``
            (trained on it for LiRA; trained on it *and then forgot it* for U-LiRA).
        used: optional ``(N, n)`` booleans: which (shadow, example) values to use.

    Means are per example; the two variances are pooled over examples (global variance).
    Higher means more like the "in" side.
    """
    phi = np.asarray(phi, dtype=np.float64)
    shadow_phi = np.asarray(shadow_phi, dtype=np.float64)
    inside = np.asarray(shadow_in, dtype=bool)
    use = np.ones_like(inside) if used is None else np.asarray(used, dtype=bool)
    if (shadow_phi.shape != inside.shape or use.shape != inside.shape
            or shadow_phi.shape[1:] != phi.shape):
        raise InvalidParameterError(
            f"shadow_phi {shadow_phi.shape}, shadow_in {inside.shape} and phi {phi.shape} "
            "must agree: (n_shadows, n) and (n,)."
        )

    def side(mask: np.ndarray) -> tuple[np.ndarray, float]:
        count = mask.sum(axis=0)
        if (count == 0).any():
            raise InvalidParameterError(
                "every example needs at least one in- and one out-shadow."
            )
        mean = np.where(mask, shadow_phi, 0.0).sum(axis=0) / count
        residual = np.where(mask, shadow_phi - mean, 0.0)
        dof = max(int(count.sum()) - phi.size, 1)
        return mean, max(float(np.sqrt((residual**2).sum() / dof)), min_std)

    mu_in, s_in = side(inside & use)
    mu_out, s_out = side(~inside & use)
    log_in = -0.5 * ((phi - mu_in) / s_in) ** 2 - np.log(s_in)
    log_out = -0.5 * ((phi - mu_out) / s_out) ** 2 - np.log(s_out)
    return np.asarray(log_in - log_out)


def ulira_leave_one_out(
    shadow_phi: np.ndarray, unlearned: np.ndarray, *, min_std: float = MIN_STD
) -> tuple[np.ndarray, np.ndarray]:
    """U-LiRA on held-out shadows: each shadow's scores against Gaussians of the others.

    Shadow ``k`` is the target in turn. Its side (unlearned or retrained) would keep one
    shadow fewer than the other side, and a mean estimated from fewer values is farther from
    a new draw on average, which biases the ratio *against* the true side (an AUC below 0.5
    when nothing can be told apart). So, per example, one shadow of the other side is left
    out as well (the ``(k mod m)``-th of its ``m``), and both sides keep ``N/2 - 1``.

    Args:
        shadow_phi: ``(N, n)`` LiRA scores of the forget samples under each shadow *after*
            it forgot its share of them.
        unlearned: ``(N, n)`` booleans: shadow ``k`` trained on sample ``i`` and forgot it
            (otherwise it never saw it: a retrained model for that sample).

    Returns:
        ``(scores, is_unlearned)``, both ``(N * n,)``: the likelihood ratio of every
        (shadow, sample) pair and whether that shadow had unlearned the sample. Every
        sample needs >= 2 shadows on each side (N >= 4 with :func:`shadow_membership`).
    """
    shadow_phi = np.asarray(shadow_phi, dtype=np.float64)
    unlearned = np.asarray(unlearned, dtype=bool)
    n_shadows, n = shadow_phi.shape
    columns = np.arange(n)
    scores = np.empty_like(shadow_phi)
    for k in range(n_shadows):
        used = np.ones_like(unlearned)
        used[k] = False
        other_side = unlearned != unlearned[k][None, :]  # (N, n)
        counts = other_side.sum(axis=0)
        if (counts < 2).any() or ((~other_side).sum(axis=0) < 2).any():
            raise InvalidParameterError(
                "U-LiRA needs at least 2 unlearned and 2 retrained shadows per sample; use "
                "shadow_models >= 4."
            )
        # row index of the (k mod m)-th shadow on the other side, per example
        rank = np.cumsum(other_side, axis=0) - 1
        pick = np.argmax(other_side & (rank == (k % counts)[None, :]), axis=0)
        used[pick, columns] = False
        scores[k] = likelihood_ratio_scores(shadow_phi[k], shadow_phi, unlearned, used=used,
                                            min_std=min_std)
    return scores.reshape(-1), unlearned.reshape(-1)


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
        if phi_forgotten is not None and forget_ids is not None:
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

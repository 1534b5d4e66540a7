"""RMIA (Zarifzadeh, Liu & Shokri, "Low-Cost High-Power Membership Inference Attacks",
ICML 2024, section 3): a pairwise likelihood ratio against population samples.

For a target ``x`` and a population sample ``z`` (never trained on by the attacked model),

    LR(x, z) = [Pr(x | theta) / Pr(x)] / [Pr(z | theta) / Pr(z)],

where ``Pr(x | theta)`` is the attacked model's probability of ``x``'s label and ``Pr(x)``
the mean of that probability over reference models. The score of ``x`` is the share of
population samples it dominates, ``Pr_z[LR(x, z) >= gamma]``: a member's ratio stands out
against most of the population, a non-member's does not. Here the reference models are the
harness's shadow models, each trained on a keyed half of the pool, so every target is in
half of them: the paper's *online* setting, where ``Pr(x)`` is the plain mean over all
references (no offline correction ``a`` is needed).
"""

from __future__ import annotations

import numpy as np

from expunge.exceptions import InvalidParameterError

#: probabilities are floored here so a zero never divides
MIN_PROB = 1e-30


def rmia_scores(
    p_target: np.ndarray, p_references: np.ndarray, p_population: np.ndarray,
    p_population_references: np.ndarray, *, gamma: float = 1.0,
    in_population: np.ndarray | None = None,
) -> np.ndarray:
    """RMIA scores in [0, 1] (higher = more likely a member).

    Args:
        p_target: ``(n,)`` the attacked model's probability of each target's label.
        p_references: ``(N, n)`` the same under each reference model.
        p_population: ``(m,)`` the attacked model's probability of each population
            sample's label; ``p_population_references``: ``(N, m)`` under each reference.
        gamma: the likelihood-ratio threshold of a pairwise win (the paper's gamma).
        in_population: ``(n,)`` position of the target in the population, or -1: a target
            that is also a population sample is not compared with itself.
    """
    p_target = np.maximum(np.asarray(p_target, np.float64), MIN_PROB)
    p_population = np.maximum(np.asarray(p_population, np.float64), MIN_PROB)
    refs = np.maximum(np.asarray(p_references, np.float64), MIN_PROB)
    pop_refs = np.maximum(np.asarray(p_population_references, np.float64), MIN_PROB)
    if refs.shape[1:] != p_target.shape or pop_refs.shape[1:] != p_population.shape \
            or refs.shape[0] != pop_refs.shape[0]:
        raise InvalidParameterError(
            f"RMIA needs (N, n) and (N, m) reference probabilities for n={p_target.size} "
            f"targets and m={p_population.size} population samples; got {refs.shape} and "
            f"{pop_refs.shape}."
        )
    if gamma <= 0:
        raise InvalidParameterError(f"gamma must be > 0; got {gamma!r}.")
    ratio_x = np.log(p_target) - np.log(refs.mean(axis=0))
    ratio_z = np.sort(np.log(p_population) - np.log(pop_refs.mean(axis=0)))
    m = ratio_z.size
    # LR(x, z) >= gamma  <=>  ratio_z <= ratio_x - log(gamma)
    wins = np.searchsorted(ratio_z, ratio_x - np.log(gamma), side="right").astype(np.float64)
    denominator = np.full(p_target.shape, float(m))
    if in_population is not None:
        self_pair = np.asarray(in_population) >= 0
        wins -= self_pair & (gamma <= 1.0)  # LR(x, x) = 1 counts as a win when gamma <= 1
        denominator -= self_pair
    return np.asarray(wins / np.maximum(denominator, 1.0))

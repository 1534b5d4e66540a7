"""PUMA and naive influence removal, one module per job.

* :mod:`.strategy`: :class:`PUMA` (registered ``"puma"``): parameters, fit, forget,
  refresh, ``from_model``;
* :mod:`.naive`: :class:`NaiveInfluence` (registered ``"influence"``);
* :mod:`.reweighting`: the re-weighting problem, closed form and FISTA;
* :mod:`.data_debugging`: :func:`harmfulness_scores`, :func:`rank_mislabelled`;
* private: the patch (``_patch``), one request (``_request``), the per-bucket cache and
  its disk rule (``_cache``), building it (``_precompute``), the solvers (``_solve``), the
  fitted state (``_model``).

The curvature they use is :mod:`expunge.strategies.approximate.curvature`. The design, the
guarantees and measured costs are in ``docs/puma.md``.
"""

from expunge.strategies.approximate.puma.data_debugging import (
    harmfulness_scores,
    rank_mislabelled,
)
from expunge.strategies.approximate.puma.naive import NaiveInfluence
from expunge.strategies.approximate.puma.reweighting import Reweighting, solve_reweighting
from expunge.strategies.approximate.puma.strategy import PUMA

__all__ = [
    "PUMA",
    "NaiveInfluence",
    "Reweighting",
    "harmfulness_scores",
    "rank_mislabelled",
    "solve_reweighting",
]

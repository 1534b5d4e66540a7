"""The field's approximate baselines behind one API (``docs/baselines.md``).

Ten strategies that fit exactly as :class:`~expunge.Retrain` does and forget by patching
the trained module: :class:`Finetune`, :class:`GradientAscent`, :class:`NegGradPlus`,
:class:`RandomLabels`, :class:`L1Sparse`, :class:`SalUn`, :class:`SCRUB`, :class:`SSD`,
:class:`FisherForgetting` and :class:`CertifiedRemoval`. Importing this package registers
them (``finetune``, ``gradient_ascent``, ``neggrad_plus``, ``random_labels``,
``l1_sparse``, ``salun``, ``scrub``, ``ssd``, ``fisher``, ``certified``).
"""

from expunge.strategies.approximate.baselines._base import GradientPatch, PatchStrategy
from expunge.strategies.approximate.baselines.certified import (
    CertifiedRemoval,
    RemovalBudgetExhausted,
)
from expunge.strategies.approximate.baselines.finetune import Finetune
from expunge.strategies.approximate.baselines.fisher import FisherForgetting
from expunge.strategies.approximate.baselines.gradient_ascent import GradientAscent
from expunge.strategies.approximate.baselines.l1_sparse import L1Sparse
from expunge.strategies.approximate.baselines.neggrad_plus import NegGradPlus
from expunge.strategies.approximate.baselines.random_labels import RandomLabels
from expunge.strategies.approximate.baselines.salun import SalUn
from expunge.strategies.approximate.baselines.scrub import SCRUB
from expunge.strategies.approximate.baselines.ssd import SSD

#: the registered names, in the order the docs and benchmarks list them
BASELINES = ("finetune", "gradient_ascent", "neggrad_plus", "random_labels", "l1_sparse",
             "salun", "scrub", "ssd", "fisher", "certified")

__all__ = [
    "BASELINES",
    "SCRUB",
    "SSD",
    "CertifiedRemoval",
    "Finetune",
    "FisherForgetting",
    "GradientAscent",
    "GradientPatch",
    "L1Sparse",
    "NegGradPlus",
    "PatchStrategy",
    "RandomLabels",
    "RemovalBudgetExhausted",
    "SalUn",
]

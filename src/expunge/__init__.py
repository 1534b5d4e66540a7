"""expunge: machine unlearning for PyTorch, with evidence.

Exact strategies (:class:`Retrain`, :class:`SISA`) give models bit-for-bit equal to training
without the forgotten samples; every request is recorded in a hash-chained ledger.
"""

from expunge import exceptions
from expunge._open import open
from expunge._version import __version__
from expunge.strategies import (
    SISA,
    ForgetReport,
    Retrain,
    UnlearningStrategy,
    available_strategies,
    get_strategy,
)

__all__ = [
    "SISA",
    "ForgetReport",
    "Retrain",
    "UnlearningStrategy",
    "__version__",
    "available_strategies",
    "exceptions",
    "get_strategy",
    "open",
]

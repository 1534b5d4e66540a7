"""expunge: machine unlearning for PyTorch, with evidence.

Exact strategies (:class:`Retrain`, :class:`SISA`, :class:`ARCANE`) give models bit-for-bit
equal to training without the forgotten samples; the approximate :class:`PUMA` patches a
trained model with influence estimates. Every request is recorded in a hash-chained ledger,
and :func:`evaluate` measures how well forgetting worked against a retrained reference.
"""

from expunge import exceptions
from expunge._open import open
from expunge._version import __version__
from expunge.evaluation import EvaluationReport, evaluate
from expunge.operations import verify_receipt
from expunge.strategies import (
    SISA,
    ForgetReport,
    Retrain,
    UnlearningStrategy,
    available_strategies,
    get_strategy,
)
from expunge.strategies.approximate.puma import (
    PUMA,
    NaiveInfluence,
    harmfulness_scores,
    rank_mislabelled,
)
from expunge.strategies.exact.arcane import ARCANE

__all__ = [
    "ARCANE",
    "PUMA",
    "SISA",
    "EvaluationReport",
    "ForgetReport",
    "NaiveInfluence",
    "Retrain",
    "UnlearningStrategy",
    "__version__",
    "available_strategies",
    "evaluate",
    "exceptions",
    "get_strategy",
    "harmfulness_scores",
    "open",
    "rank_mislabelled",
    "verify_receipt",
]

"""Unlearning strategies: the base class, the registry and the built-in strategies."""

from expunge.strategies.base import FittedModel, ForgetReport, ForgetStats, UnlearningStrategy
from expunge.strategies.exact.retrain import Retrain
from expunge.strategies.exact.sharded import BlockPlan, ShardedStrategy
from expunge.strategies.exact.sisa import SISA
from expunge.strategies.registry import available_strategies, get_strategy, register_strategy

__all__ = [
    "SISA",
    "BlockPlan",
    "FittedModel",
    "ForgetReport",
    "ForgetStats",
    "Retrain",
    "ShardedStrategy",
    "UnlearningStrategy",
    "available_strategies",
    "get_strategy",
    "register_strategy",
]

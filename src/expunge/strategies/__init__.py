"""Unlearning strategies: the base class, the registry and the built-in strategies."""

from expunge.strategies.base import FittedModel, ForgetReport, ForgetStats, UnlearningStrategy
from expunge.strategies.exact.retrain import Retrain
from expunge.strategies.exact.sharded import BlockPlan, ShardedStrategy
from expunge.strategies.exact.sisa import SISA
from expunge.strategies.registry import available_strategies, get_strategy, register_strategy


def _import_all_strategies() -> None:
    """Import every module under exact/ and approximate/ so each registers itself."""
    import importlib
    import pkgutil

    from expunge.strategies import approximate, exact

    for package in (exact, approximate):
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")


_import_all_strategies()

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

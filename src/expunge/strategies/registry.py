"""Name -> strategy class registry (``available_strategies``, ``get_strategy``)."""

from __future__ import annotations

from typing import Any, TypeVar

from expunge.exceptions import UnknownStrategyError
from expunge.strategies.base import UnlearningStrategy

_STRATEGIES: dict[str, type[UnlearningStrategy]] = {}
S = TypeVar("S", bound=type[UnlearningStrategy])


def register_strategy(cls: S) -> S:
    """Class decorator: register ``cls`` under ``cls.name``."""
    if cls.name in _STRATEGIES and _STRATEGIES[cls.name] is not cls:
        raise ValueError(f"a strategy named {cls.name!r} is already registered")
    _STRATEGIES[cls.name] = cls
    return cls


def available_strategies() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> Any:
    """The strategy class registered as ``name`` (a subclass of ``UnlearningStrategy``).

    Typed ``Any`` because each subclass has its own constructor parameters.
    """
    try:
        return _STRATEGIES[name]
    except (KeyError, TypeError):
        raise UnknownStrategyError(
            f"Unknown strategy {name!r}. Available: {', '.join(available_strategies())}."
        ) from None

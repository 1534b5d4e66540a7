"""Name -> strategy class registry (``available_strategies``, ``get_strategy``)."""

from __future__ import annotations

import inspect
import re
from typing import Any, TypeVar

from expunge.exceptions import StrategyRegistrationError, UnknownStrategyError
from expunge.strategies.base import GUARANTEES, UnlearningStrategy

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

_STRATEGIES: dict[str, type[UnlearningStrategy]] = {}
S = TypeVar("S", bound=type[UnlearningStrategy])


def register_strategy(cls: S) -> S:
    """Class decorator: register ``cls`` under ``cls.name``.

    Raises:
        StrategyRegistrationError: ``cls`` is not a concrete subclass of
            :class:`UnlearningStrategy`, has no valid ``name`` (lowercase, e.g. ``"sisa"``)
            or ``guarantee`` (one of ``GUARANTEES``), or another class is
            registered under its name. Nothing is registered then.
    """
    if not (isinstance(cls, type) and issubclass(cls, UnlearningStrategy)):
        raise StrategyRegistrationError(
            f"register_strategy expects a subclass of UnlearningStrategy; got {cls!r}."
        )
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise StrategyRegistrationError(
            f"{cls.__name__} needs its own registry name: set the class attribute name to a "
            f"lowercase identifier such as {cls.__name__.lower()!r} (got {name!r})."
        )
    if getattr(cls, "guarantee", None) not in GUARANTEES:
        raise StrategyRegistrationError(
            f"{cls.__name__}.guarantee must be one of {', '.join(map(repr, GUARANTEES))}; "
            f"got {getattr(cls, 'guarantee', None)!r}."
        )
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise StrategyRegistrationError(
            f"{cls.__name__} cannot be registered: it does not implement {missing}."
        )
    registered = _STRATEGIES.get(name)
    if registered is not None and registered is not cls:
        raise StrategyRegistrationError(
            f"A strategy named {name!r} is already registered "
            f"({registered.__module__}.{registered.__qualname__}); choose another name."
        )
    _STRATEGIES[name] = cls
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

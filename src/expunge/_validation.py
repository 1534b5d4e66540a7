"""Declarative parameter checks (after scikit-learn's ``_param_validation``, much smaller).

Each strategy lists ``_parameter_constraints``; ``validate_params`` checks all of them and
raises one :class:`InvalidParameterError` whose message names the parameter, the allowed
values and the value received.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from expunge.exceptions import InvalidParameterError


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` (int or float) in ``[low, high]`` (either end may be open/None)."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"  # "both", "left", "right", "neither"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if self.kind is float and not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        left_ok = self.low is None or (
            value >= self.low if self.closed in ("both", "left") else value > self.low
        )
        right_ok = self.high is None or (
            value <= self.high if self.closed in ("both", "right") else value < self.high
        )
        return left_ok and right_ok

    def __str__(self) -> str:
        def show(value: float) -> str:  # ints in full (a seed's bound is 2**63 - 1)
            return str(int(value)) if self.kind is int else f"{value:g}"

        lo = "-inf" if self.low is None else show(self.low)
        hi = "inf" if self.high is None else show(self.high)
        lb = "[" if self.closed in ("both", "left") and self.low is not None else "("
        rb = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        return f"{'an int' if self.kind is int else 'a float'} in the range {lb}{lo}, {hi}{rb}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values)

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Check:
    """Any predicate, with a description of what it accepts."""

    predicate: Callable[[Any], bool]
    description: str

    def accepts(self, value: Any) -> bool:
        try:
            return bool(self.predicate(value))
        except Exception:
            return False

    def __str__(self) -> str:
        return self.description


Constraint = Interval | Options | Check | type | None


def _accepts(constraint: Constraint, value: Any) -> bool:
    if constraint is None:
        return value is None
    if isinstance(constraint, type):
        return isinstance(value, constraint) and not (
            constraint in (int, float) and isinstance(value, bool)
        )
    return constraint.accepts(value)


def describe(constraint: Constraint) -> str:
    if constraint is None:
        return "None"
    if isinstance(constraint, type):
        return f"an instance of {constraint.__name__}"
    return str(constraint)


def validate_params(
    constraints: Mapping[str, list[Constraint]], params: Mapping[str, Any], owner: str
) -> None:
    """Raise :class:`InvalidParameterError` for the first parameter no constraint accepts."""
    for name, allowed in constraints.items():
        value = params.get(name)
        if any(_accepts(c, value) for c in allowed):
            continue
        described = [describe(c) for c in allowed]
        choices = described[0]
        if len(described) > 1:
            choices = ", ".join(described[:-1]) + " or " + described[-1]
        raise InvalidParameterError(
            f"The {name!r} parameter of {owner} must be {choices}. Got {value!r} instead."
        )

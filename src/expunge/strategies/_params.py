"""Constructor parameters as the manifest records them, and what ``expunge.open`` may change.

The manifest records every parameter that decides *what* is computed; those are immutable
for the store's life. Runtime parameters (``_runtime_params``: where and how visibly the
work runs) are not recorded and may be passed to ``expunge.open``; so may request
parameters (``_request_params``: recorded, but acting only on later requests, each of which
records the values it used in its ledger entry).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from expunge._validation import Check, Constraint
from expunge.exceptions import InvalidParameterError, StoreMismatchError

#: the parameters every strategy has: where it persists, whether it shows progress
#: (both runtime parameters: see ``UnlearningStrategy._runtime_params``)
COMMON_CONSTRAINTS: dict[str, list[Constraint]] = {
    "store": [None, str, Check(lambda v: hasattr(v, "__fspath__"), "a path")],
    "show_progress": [bool],
}


def jsonable_param(value: Any) -> Any:
    """A parameter as recorded in the manifest; callables by qualified name."""
    if callable(value) and not isinstance(value, type):
        module = getattr(value, "__module__", "?")
        return {"callable": f"{module}:{getattr(value, '__qualname__', repr(value))}"}
    if isinstance(value, tuple):
        return [jsonable_param(v) for v in value]
    if isinstance(value, list):
        return [jsonable_param(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable_param(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"array_sha256": hashlib.sha256(value.tobytes()).hexdigest()}
    if isinstance(value, Path):
        return str(value)
    return value


def check_overrides(cls: Any, recorded: Mapping[str, Any], overrides: Mapping[str, Any],
                    location: str) -> None:
    """``expunge.open(S, **overrides)`` may change runtime parameters only.

    A recorded parameter may be passed again with the value it has in the manifest (a
    script that always passes its full configuration keeps working); a custom callable,
    which the manifest records by qualified name, must be passed again with that name.

    Raises:
        InvalidParameterError: an override the strategy does not take.
        StoreMismatchError: an override that would change a recorded parameter.
    """
    names = set(cls._param_names())
    changeable = set(cls._runtime_params) | set(cls._request_params)
    runtime = sorted(changeable - {"store"})
    for key, value in overrides.items():
        if key == "store":
            raise InvalidParameterError(
                f"expunge.open({location!r}) opens that store; do not pass store= as well."
            )
        if key not in names:
            raise InvalidParameterError(
                f"{cls.__name__} has no parameter {key!r}. Runtime parameters you may pass to "
                f"expunge.open: {', '.join(runtime)}."
            )
        if key in changeable:
            continue
        stored = recorded.get(key)
        given = jsonable_param(value)
        if isinstance(stored, dict) and "callable" in stored:
            if given != stored:
                got = given.get("callable") if isinstance(given, dict) else repr(value)
                raise StoreMismatchError(
                    f"The store {location!r} was fitted with {key}={stored['callable']}, but "
                    f"{key}={got} was passed. Pass the same function (same module and name) "
                    "again; a different model needs a new store."
                )
            continue
        if given != stored:
            raise StoreMismatchError(
                f"{key} is recorded in the store {location!r} ({key}={stored!r}) and cannot be "
                f"changed on open (got {key}={value!r}): the store's model and ledger were "
                f"computed with it. Runtime parameters you may pass: {', '.join(runtime)}. To "
                "use other parameters, fit into a new store."
            )

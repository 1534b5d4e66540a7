"""Helpers shared by CLI commands: consoles, id lists, strategy parameters as flags."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
from rich.console import Console

from expunge._imports import import_callable
from expunge.data import as_id_array
from expunge.exceptions import InvalidParameterError, InvalidRequestError, StoreMismatchError
from expunge.strategies import available_strategies, get_strategy
from expunge.strategies.base import UnlearningStrategy

#: constructor parameters set by other flags, never by ``--<param>``
_NOT_FLAGS = frozenset({"store", "show_progress"})


def importable_cwd() -> None:
    """Let ``--model package.module:factory`` (and a store recording one) find modules in the
    current directory, as ``python -m`` would (the ``expunge`` console script does not)."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def open_store(path: str, **overrides: Any) -> UnlearningStrategy:
    """``expunge.open(path)`` for a command: a custom callable the manifest records by name
    (``{"callable": "package.module:function"}``, from the Python API) is imported by that
    name and passed again, so operations staff need no Python to process requests.

    Raises:
        StoreMismatchError: such a callable cannot be imported (naming it and the fix).
    """
    import expunge
    from expunge.store import DirectoryStore

    store = DirectoryStore(path, create=False)
    try:
        with store.snapshot():
            state = store.read_state()
            # only a manifest whose committed digest matches names modules to import
            # (otherwise expunge.open below refuses the store, naming the problem)
            trusted = state is not None and state.get("manifest") == store.manifest_digest()
            params = (store.read_manifest() or {}).get("params") or {} if trusted else {}
    finally:
        store.close()
    for key, value in params.items():
        if isinstance(value, dict) and isinstance(value.get("callable"), str) and \
                key not in overrides:
            name = value["callable"]
            try:
                overrides[key] = import_callable(name, key, StoreMismatchError)
            except StoreMismatchError as err:
                raise StoreMismatchError(
                    f"The store {path!r} was fitted with a custom {key} ({name}) that the CLI "
                    f"cannot import: {err} Use the Python API, expunge.open({path!r}, "
                    f"{key}=...), or refit with an importable one (--{key.replace('_', '-')} "
                    "package.module:function)."
                ) from err
    return expunge.open(path, **overrides)


def console(args: argparse.Namespace) -> Console:
    return Console(quiet=bool(getattr(args, "quiet", False)), highlight=False)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0 seconds")
    return value


def add_timeout_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", type=_seconds, default=None, metavar="SECONDS",
        help="how long to wait while another process writes to the store (default: wait, "
             "saying so); then fail with exit code 2")


def parse_ids(text: str | None, path: str | None) -> np.ndarray:
    """Ids from ``--ids 1,2,3`` or ``--ids-file`` (whitespace/comma separated)."""
    if (text is None) == (path is None):
        raise InvalidRequestError("Give exactly one of --ids or --ids-file.")
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise InvalidRequestError(f"Cannot read --ids-file {path!r}: {err.strerror}.") from err
    tokens = [t for t in (text or "").replace(",", " ").split() if t]
    values: list[int] = []
    for token in tokens:
        try:
            values.append(int(token))
        except ValueError:
            raise InvalidRequestError(
                f"{token!r} is not an integer id. Pass ids like --ids 17,4242."
            ) from None
    return as_id_array(values)


def _flag_type(annotation: Any, default: Any) -> Any:
    """The argparse type for a constructor parameter, from its default or annotation."""
    if isinstance(default, bool):
        return bool
    for kind in (int, float, str):
        if isinstance(default, kind):
            return kind
    text = str(annotation)
    for name, kind in (("int", int), ("float", float), ("str", str)):
        if name in text and "Callable" not in text and "dict" not in text:
            return kind
    if "str" in text and "dict" not in text:
        return str  # a name or a callable: the flag takes the name or an import string
    return None


def strategy_flags() -> dict[str, tuple[Any, set[str]]]:
    """Every simple constructor parameter of every strategy: name -> (type, strategies)."""
    flags: dict[str, tuple[Any, set[str]]] = {}
    for name in available_strategies():
        cls = get_strategy(name)
        hints = typing.get_type_hints(cls.__init__)
        for param in inspect.signature(cls.__init__).parameters.values():
            if param.name in ("self", *_NOT_FLAGS) or param.kind is param.VAR_KEYWORD:
                continue
            if param.name == "model_params":
                kind: Any = "json"
            else:
                kind = _flag_type(hints.get(param.name, param.annotation), param.default)
            if kind is None:
                continue
            entry = flags.setdefault(param.name, (kind, set()))
            entry[1].add(name)
    return flags


def common_parser() -> argparse.ArgumentParser:
    """The flags every command takes (before or after its name)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars and no informational output")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    return common


def _choices(cls: type[UnlearningStrategy], name: str) -> str | None:
    """``{a,b}`` for a parameter that takes one of fixed values (its Options constraint)."""
    from expunge._validation import Options

    for constraint in cls._parameter_constraints.get(name, []):
        if isinstance(constraint, Options):
            return "{" + ",".join(str(v) for v in constraint.values) + "}"
    return None


def _metavar(kind: Any) -> str:
    return {int: "INT", float: "FLOAT", str: "TEXT"}.get(kind, "VALUE")


def add_strategy_flags(parser: argparse.ArgumentParser, strategy: str | None = None) -> None:
    """One flag per constructor parameter (``n_shards`` <-> ``--n-shards``).

    Every strategy's flags are accepted (so that a flag of another strategy gets a clear
    error naming the strategy, not argparse's usage dump), but only ``strategy``'s are
    shown in the help, each with its description, default and allowed values.
    """
    from expunge.cli._help import parameter_help

    shown = None
    if strategy is not None and strategy in available_strategies():
        shown = get_strategy(strategy)
    group = parser.add_argument_group(
        f"{shown.__name__} parameters" if shown else "strategy parameters",
        "one flag per constructor parameter (n_shards <-> --n-shards); a --config TOML file "
        "may set them too, flags override it" if shown else
        "see `expunge fit STRATEGY --help` for one strategy's parameters")
    for name, (kind, owners) in sorted(strategy_flags().items()):
        flag = "--" + name.replace("_", "-")
        text = argparse.SUPPRESS
        if shown is not None and shown.name in owners:
            text = parameter_help(shown, name)
        choices = _choices(shown, name) if shown is not None else None
        if kind is bool:
            group.add_argument(flag, dest=f"param_{name}", action=argparse.BooleanOptionalAction,
                               default=None, help=text)
        elif kind == "json":
            group.add_argument(flag, dest=f"param_{name}", default=None, metavar="JSON",
                               help=text)
        else:
            group.add_argument(flag, dest=f"param_{name}", default=None,
                               metavar=choices or _metavar(kind), type=kind, help=text)
    parser.add_argument("--config", help="TOML file of constructor parameters (flags override)")


def strategy_params(args: argparse.Namespace, strategy: str) -> dict[str, Any]:
    """Constructor parameters from ``--config`` and flags, checked against the strategy."""
    cls: type[UnlearningStrategy] = get_strategy(strategy)
    valid = [p for p in cls._param_names() if p not in _NOT_FLAGS]
    params: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            params.update(tomllib.loads(Path(args.config).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise InvalidParameterError(f"Cannot read --config {args.config!r}: {err}") from err
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise InvalidParameterError(
                f"--config {args.config!r} has keys {unknown} that {cls.__name__} does not take. "
                f"Valid keys: {', '.join(valid)}."
            )
    for key, value in vars(args).items():
        if not key.startswith("param_") or value is None:
            continue
        name = key[len("param_"):]
        if name not in valid:
            raise InvalidParameterError(
                f"--{name.replace('_', '-')} does not apply to {strategy!r}. "
                f"Its parameters: {', '.join('--' + v.replace('_', '-') for v in valid)}."
            )
        if name == "model_params":
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise InvalidParameterError(
                    f"--model-params must be JSON, e.g. '{{\"hidden_sizes\": [256]}}'; got "
                    f"{value!r} ({err.msg})."
                ) from err
        params[name] = value
    return params

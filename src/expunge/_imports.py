"""Callables named by import strings (``"package.module:function"``).

A user's model factory, loss, augmentation or schedule may be given as an import string
instead of a function object: the string is what the manifest records, so ``expunge.open``
and the CLI (``expunge fit --model mypkg.nets:make_net``, then ``expunge forget``) find the
same function again without being handed it. The string is resolved lazily, when the
function is first needed: for a reopened store, only after the manifest's digest has been
checked, and it only ever imports a module that is already importable in this environment
(nothing is loaded from the store).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from expunge.exceptions import InvalidParameterError


def is_import_string(value: Any) -> bool:
    """Whether ``value`` looks like ``"package.module:attribute"``."""
    if not isinstance(value, str) or value.count(":") != 1:
        return False
    module, attribute = value.split(":")
    return bool(module) and bool(attribute) and all(
        part.isidentifier() for part in (*module.split("."), *attribute.split(".")))


def import_callable(text: str, what: str,
                    error: type[Exception] = InvalidParameterError) -> Callable[..., Any]:
    """The callable named by ``text`` (``"package.module:name"``, ``name`` may be dotted).

    Raises:
        ``error`` (an :class:`ExpungeError` subclass) naming ``what``, the string, the reason
        and the fix: the module cannot be imported, has no such attribute, or it is not
        callable.
    """
    if not is_import_string(text):
        raise error(
            f"{what}={text!r} is not an import string; write it as 'package.module:function'."
        )
    module_name, attribute = text.split(":")
    if module_name == "__main__":
        raise error(
            f"{what}={text!r} names a function of a script (__main__), which no other process "
            "can import: move it into a module (a .py file on the Python path)."
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or whatever the module raised while importing
        raise error(
            f"Cannot import {what}={text!r}: {type(err).__name__}: {err}. Install the package "
            "that defines it, or add its folder to PYTHONPATH (the CLI also looks in the "
            "current directory)."
        ) from err
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise error(
                f"Cannot find {what}={text!r}: module {module_name!r} has no attribute "
                f"{attribute!r}. Check the name after the colon."
            ) from None
    if not callable(target):
        raise error(f"{what}={text!r} is a {type(target).__name__}, not a callable.")
    return target  # type: ignore[no-any-return]


def callable_name(value: Any) -> str:
    """``"module:qualname"``: how the manifest records a Python callable."""
    module = getattr(value, "__module__", "?")
    return f"{module}:{getattr(value, '__qualname__', repr(value))}"

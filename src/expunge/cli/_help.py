"""Help text for strategy parameters, read from the strategies' own docstrings.

``expunge fit STRATEGY --help`` lists that strategy's parameters, each with the description
from the class docstring's ``Args:`` section, its default (from the signature) and its
allowed values (from ``_parameter_constraints``), so the CLI says what the Python API says
and cannot drift from it.

Docstrings are Google style. An entry may document several parameters at once
(``tol, max_iter: ...``) or defer to another class (``... : as for :class:`Retrain```;
``(see :class:`expunge.training.TrainConfig`)``): the other class's entry for that name is
used, followed by whatever the deferring entry adds about the name. A class without an
entry for a name inherits its base classes' entries.
"""

from __future__ import annotations

import importlib
import inspect
import re
from functools import cache

from expunge._validation import describe
from expunge.strategies import available_strategies, get_strategy

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Attributes):\s*$")
_ENTRY = re.compile(r"^(?P<names>[A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)\s*:\s*(?P<text>.*)$")
_REFERENCE = re.compile(r"(?:as for|see)\s+:class:`~?(?P<target>[\w.]+)`")
_ROLE = re.compile(r":(?:class|func|meth|attr|mod):`~?([\w.]+)`")


def _entries(doc: str) -> list[tuple[list[str], str]]:
    """``(names, text)`` of every entry in the docstring's Args/Attributes section."""
    lines = doc.splitlines()
    out: list[tuple[list[str], str]] = []
    inside, indent = False, None
    current: list[str] = []

    def flush() -> None:
        if current:
            match = _ENTRY.match(" ".join(current))
            if match:
                names = [n.strip() for n in match["names"].split(",")]
                out.append((names, match["text"].strip()))
            current.clear()

    for line in lines:
        if _SECTION.match(line.strip()) and not line.startswith(" " * 8):
            flush()
            inside, indent = True, None
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        level = len(line) - len(line.lstrip())
        if indent is None:
            indent = level
        if level < indent:  # back to the docstring's body: the section is over
            flush()
            inside = False
            continue
        if level == indent:
            flush()
            current.append(line.strip())
        else:  # a continuation (a wrapped names list or description)
            current.append(line.strip())
    flush()
    return out


def _clean(text: str) -> str:
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return re.sub(r"``([^`]*)``", r"\1", text).strip()


def _resolve(target: str) -> type | None:
    for name in available_strategies():
        cls = get_strategy(name)
        if cls.__name__ == target.rsplit(".", 1)[-1]:
            return cls
    module, _, attr = target.rpartition(".")
    if not module:
        return None
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) else None


@cache
def class_parameter_docs(cls: type) -> dict[str, str]:
    """Every parameter ``cls`` documents (directly, by reference, or through its bases)."""
    docs: dict[str, str] = {}
    for names, text in _entries(inspect.getdoc(cls) or ""):
        reference = _REFERENCE.search(text)
        target = _resolve(reference["target"]) if reference else None
        for name in names:
            described = text
            if target is not None and target is not cls:
                inherited = class_parameter_docs(target).get(name)
                if inherited:
                    # what the deferring entry adds, when it names this parameter
                    rest = text[reference.end():].strip(" ;.")  # type: ignore[union-attr]
                    extra = f" {rest}." if rest and f"``{name}``" in rest else ""
                    described = inherited + extra
            docs.setdefault(name, _clean(described))
    for base in cls.__mro__[1:]:
        if base is object:
            continue
        for name, text in class_parameter_docs(base).items():
            docs.setdefault(name, text)
    return docs


def parameter_help(cls: type, name: str) -> str:
    """One flag's help: description, default and allowed values."""
    description = class_parameter_docs(cls).get(name, "")
    parameter = inspect.signature(cls).parameters[name]
    constraints = getattr(cls, "_parameter_constraints", {}).get(name)
    parts = [description.rstrip(".") + "." if description else ""]
    if parameter.default is not inspect.Parameter.empty:
        parts.append(f"Default: {parameter.default!r}.")
    if constraints:
        allowed = [describe(c) for c in constraints]
        parts.append("Allowed: " + (" or ".join(allowed)) + ".")
    # argparse formats help with %: escape it
    return " ".join(p for p in parts if p).replace("%", "%%")

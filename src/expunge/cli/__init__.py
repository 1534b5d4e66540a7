"""The ``expunge`` console script: a thin layer over the public API.

Each subcommand is a module in :mod:`expunge.cli.commands` that defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; they are discovered here. Errors that
expunge raises print one line to stderr and exit with code 2 (``--debug`` re-raises them
with the traceback); so do operating-system and SQLite errors that reach this far (the
library wraps those it meets in stores; this is the net for the rest, e.g. a dataset file).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sqlite3
import sys
from collections.abc import Sequence
from types import ModuleType

from expunge._version import __version__
from expunge.exceptions import ExpungeError

EXIT_USAGE = 2


def _commands() -> list[ModuleType]:
    from expunge.cli import commands

    modules = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            modules.append(importlib.import_module(f"{commands.__name__}.{info.name}"))
    return modules


def _fit_strategy(argv: Sequence[str]) -> str | None:
    """The strategy ``expunge fit`` is asked for (``fit NAME`` or ``fit --strategy NAME``)."""
    tokens = list(argv)
    for position, token in enumerate(tokens):
        if token.startswith("-"):
            continue
        if token != "fit":
            return None
        rest = tokens[position + 1:]
        for index, item in enumerate(rest):
            if item == "--strategy" and index + 1 < len(rest):
                return rest[index + 1]
            if item.startswith("--strategy="):
                return item.split("=", 1)[1]
        return rest[0] if rest and not rest[0].startswith("-") else None
    return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    from expunge.cli._common import common_parser
    from expunge.cli.commands import fit

    fit.SELECTED = _fit_strategy(argv)
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="expunge", parents=[common],
        description="Machine unlearning for PyTorch: fit, forget, evaluate, audit.",
    )
    parser.add_argument("--version", action="version", version=f"expunge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _commands():
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP,
                                 parents=[common])
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.quiet = bool(getattr(args, "quiet", False))
    args.debug = bool(getattr(args, "debug", False))
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return EXIT_USAGE
    from expunge.cli._common import importable_cwd

    importable_cwd()
    try:
        return int(args._run(args) or 0)
    except ExpungeError as err:
        if args.debug:
            raise
        print(f"expunge: error: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, sqlite3.Error) as err:
        if args.debug:
            raise
        filename = getattr(err, "filename", None)
        where = f" ({filename})" if filename else ""
        text = getattr(err, "strerror", None) or str(err)
        print(f"expunge: error: {type(err).__name__}{where}: {_one_line(text)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("expunge: interrupted; the store is at its last committed state", file=sys.stderr)
        return 130


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

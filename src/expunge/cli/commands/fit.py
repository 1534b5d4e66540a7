"""``expunge fit STRATEGY``: train a strategy on a dataset into a store.

``expunge fit STRATEGY --help`` lists that strategy's parameters only, with descriptions
from its docstring (see :mod:`expunge.cli._help`). ``--strategy NAME`` is accepted too
(the form of earlier versions).
"""

from __future__ import annotations

import argparse
import time

from expunge.cli._common import add_strategy_flags, add_timeout_flag, console, strategy_params
from expunge.data import available_datasets, load_dataset
from expunge.exceptions import InvalidParameterError
from expunge.strategies import available_strategies, get_strategy

NAME = "fit"
HELP = "train a strategy on a dataset and persist it in a store"


#: the strategy named on the command line, set by the CLI before it builds the parser so
#: that ``--help`` shows that strategy's parameters only
SELECTED: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(available_strategies())
    parser.add_argument("strategy", nargs="?", metavar="STRATEGY", default=None,
                        help=f"one of {names}; `expunge fit STRATEGY --help` lists its "
                             "parameters")
    parser.add_argument("--strategy", dest="strategy_option", default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument("--dataset", default="digits",
                        help=f"one of {', '.join(available_datasets())} (default: digits)")
    parser.add_argument("--data-root", default=None,
                        help="folder with the dataset's files (mnist, adult); no downloads")
    parser.add_argument("--store", required=True, help="directory to create the store in")
    add_timeout_flag(parser)
    add_strategy_flags(parser, SELECTED)
    if SELECTED in available_strategies():
        cls = get_strategy(SELECTED)
        parser.description = f"Fit {cls.__name__}, {cls.summary}."


def run(args: argparse.Namespace) -> int:
    out = console(args)
    name = args.strategy or args.strategy_option
    if name is None or (args.strategy and args.strategy_option
                        and args.strategy != args.strategy_option):
        raise InvalidParameterError(
            f"Name one strategy: expunge fit STRATEGY ... (one of "
            f"{', '.join(available_strategies())}).")
    params = strategy_params(args, name)
    cls = get_strategy(name)
    train, test = load_dataset(args.dataset, root=args.data_root)
    strategy = cls(**params, store=args.store, show_progress=not args.quiet)
    started = time.perf_counter()
    strategy.fit(train, timeout=args.timeout)
    seconds = time.perf_counter() - started
    out.print(
        f"fitted [bold]{cls.name}[/] on {args.dataset} ({len(train)} samples) in {seconds:.1f} s; "
        f"test accuracy {strategy.score(test):.4f}"
    )
    out.print(f"store: {args.store}   fingerprint: {strategy.fingerprint()[:16]}")
    strategy.close()
    return 0

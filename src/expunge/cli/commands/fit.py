"""``expunge fit``: train a strategy on a dataset into a store."""

from __future__ import annotations

import argparse
import time

from expunge.cli._common import add_strategy_flags, add_timeout_flag, console, strategy_params
from expunge.data import available_datasets, load_dataset
from expunge.strategies import get_strategy

NAME = "fit"
HELP = "train a strategy on a dataset and persist it in a store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", required=True, help="a name from `expunge strategies`")
    parser.add_argument("--dataset", default="digits",
                        help=f"one of {', '.join(available_datasets())} (default: digits)")
    parser.add_argument("--data-root", default=None,
                        help="folder with the dataset's files (mnist, adult); no downloads")
    parser.add_argument("--store", required=True, help="directory to create the store in")
    add_timeout_flag(parser)
    add_strategy_flags(parser)


def run(args: argparse.Namespace) -> int:
    out = console(args)
    params = strategy_params(args, args.strategy)
    cls = get_strategy(args.strategy)
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

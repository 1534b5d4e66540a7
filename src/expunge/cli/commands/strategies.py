"""``expunge strategies``: the registered strategies, their guarantee and one-line summary."""

from __future__ import annotations

import argparse

from rich.table import Table

from expunge.cli._common import console
from expunge.strategies import available_strategies, get_strategy

NAME = "strategies"
HELP = "list the registered unlearning strategies"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    table = Table(title="expunge strategies")
    table.add_column("name")
    table.add_column("guarantee")
    table.add_column("what it does")
    for name in available_strategies():
        cls = get_strategy(name)
        table.add_row(name, cls.guarantee, cls.summary)
    console(args).print(table)
    return 0

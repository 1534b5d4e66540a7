"""``expunge ledger``: show a store's deletion ledger; ``--verify`` checks its hash chain."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from expunge.cli._common import console, open_store

NAME = "ledger"
HELP = "show the deletion ledger of a store; --verify checks the hash chain"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="a store written by `expunge fit`")
    parser.add_argument("--verify", action="store_true",
                        help="verify the hash chain and that it ends at the live model")
    parser.add_argument("--json", action="store_true", help="print the entries as JSON lines")


def run(args: argparse.Namespace) -> int:
    out = console(args)
    strategy = open_store(args.store)
    try:
        entries = strategy.ledger.entries()
        if args.json:
            for entry in entries:
                print(json.dumps(entry.to_dict(), sort_keys=True))
        else:
            table = Table(title=f"ledger of {args.store}")
            for column in ("#", "kind", "time (UTC)", "ids", "guarantee", "seconds",
                           "retrained", "passes", "purged", "hash"):
                table.add_column(column)
            for e in entries:
                shown = ", ".join(map(str, e.ids[:5])) + (" ..." if len(e.ids) > 5 else "")
                table.add_row(str(e.seq), e.kind, e.created_at[:19], shown or "-", e.guarantee,
                              f"{e.seconds:.2f}", str(e.samples_retrained), str(e.sample_passes),
                              str(len(e.purged)), e.hash[:12])
            out.print(table)
        if args.verify:
            count = strategy.verify()
            out.print(f"[green]ledger verified[/]: {count} entries, chain intact, ends at the "
                      f"live model; head {strategy.ledger.head}")
    finally:
        strategy.close()
    return 0

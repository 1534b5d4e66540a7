"""``expunge ledger``: show a store's deletion ledger; ``--verify`` checks its hash chain;
``--receipt SEQ`` and ``--public-key`` export a signed receipt and the key that verifies it."""

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
    parser.add_argument("--receipt", type=int, default=None, metavar="SEQ",
                        help="print the signed receipt of entry SEQ (JSON) and nothing else")
    parser.add_argument("--public-key", action="store_true",
                        help="print the PEM public key that verifies the store's receipts")


def run(args: argparse.Namespace) -> int:
    out = console(args)
    strategy = open_store(args.store)
    try:
        if args.receipt is not None or args.public_key:
            if args.receipt is not None:
                print(json.dumps(strategy.receipt(args.receipt), indent=2, sort_keys=True))
            if args.public_key:
                print(strategy.public_key.decode("ascii"), end="")
            return 0
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

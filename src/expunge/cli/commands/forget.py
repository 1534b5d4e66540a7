"""``expunge forget``: forget sample ids in a store and print the request's report."""

from __future__ import annotations

import argparse

from rich.table import Table

from expunge.cli._common import add_timeout_flag, console, open_store, parse_ids

NAME = "forget"
HELP = "forget sample ids from a fitted store (one ledger entry per call)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="a store written by `expunge fit`")
    parser.add_argument("--ids", default=None, help="comma-separated sample ids, e.g. 17,4242")
    parser.add_argument("--ids-file", default=None, help="file of ids (whitespace or commas)")
    parser.add_argument("--tag", default=None, help="free text stored with the ledger entry")
    add_timeout_flag(parser)


def run(args: argparse.Namespace) -> int:
    ids = parse_ids(args.ids, args.ids_file)
    strategy = open_store(args.store, show_progress=not args.quiet)
    try:
        report = strategy.forget(ids, tag=args.tag, timeout=args.timeout)
    finally:
        strategy.close()
    table = Table(title=f"request #{report.seq} ({report.request_id[:12]})", show_header=False)
    table.add_row("ids forgotten", str(len(report.ids)))
    table.add_row("guarantee", report.guarantee)
    table.add_row("seconds", f"{report.seconds:.3f}")
    table.add_row("sub-models retrained", ", ".join(map(str, report.submodels_retrained)) or "none")
    table.add_row("samples retrained (distinct)", str(report.samples_retrained))
    table.add_row("sample-passes (samples x epochs)", str(report.sample_passes))
    table.add_row("store entries purged", str(len(report.purged)))
    table.add_row("fingerprint after", report.fingerprint_after[:16])
    console(args).print(table)
    return 0

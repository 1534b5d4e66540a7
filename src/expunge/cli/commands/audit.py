"""``expunge audit``: replay sub-models from scratch and compare every checkpoint bit for bit.

Exit code 0 when every check matched, 1 when one did not (the report names it); an
approximate store prints that no replay guarantee exists and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.table import Table

from expunge.cli._common import console, open_store, parse_ids

NAME = "audit"
HELP = "replay audit: re-derive sub-models on the retained data and compare bit for bit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="a store written by `expunge fit`")
    parser.add_argument("--submodels", default="all",
                        help="'all' (default), a count K of sub-models drawn at random (a cheap "
                             "probabilistic audit), or indices like 0,3,7 with --indices")
    parser.add_argument("--indices", action="store_true",
                        help="read --submodels as comma-separated sub-model indices")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the random draw (default: fresh; printed for reruns)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _which(args: argparse.Namespace) -> object:
    if args.submodels == "all":
        return "all"
    if args.indices:
        return [int(k) for k in parse_ids(args.submodels, None).tolist()]
    return int(parse_ids(args.submodels, None)[0]) if "," not in args.submodels else \
        [int(k) for k in parse_ids(args.submodels, None).tolist()]


def run(args: argparse.Namespace) -> int:
    out = console(args)
    which = _which(args)
    strategy = open_store(args.store, show_progress=not args.quiet)
    try:
        report = strategy.audit(which, seed=args.seed)  # type: ignore[arg-type]
    finally:
        strategy.close()
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
    elif not report.replayable:
        out.print(f"[yellow]no replay guarantee[/]: {report.note}")
    else:
        table = Table(title=f"replay audit of {args.store}", show_header=False)
        table.add_row("result", "[green]PASSED[/]" if report.passed else "[red]FAILED[/]")
        table.add_row("sub-models checked",
                      f"{len(report.submodels_checked)} of {report.submodels_total}: "
                      f"{', '.join(map(str, report.submodels_checked))}")
        table.add_row("checkpoints matched bit for bit",
                      f"{report.checkpoints_matched} of {report.checkpoints_checked}")
        table.add_row("sample-passes replayed", str(report.sample_passes))
        table.add_row("seconds", f"{report.seconds:.2f}")
        if report.seed is not None:
            table.add_row("draw seed (rerun with --seed)", str(report.seed))
        table.add_row("chance to catch one altered sub-model",
                      f"{report.detection_probability:.0%}")
        table.add_row("ledger head", report.ledger_head[:16])
        out.print(table)
    if report.passed is False:  # a failed audit is said even with --quiet
        print(f"expunge: audit FAILED: {len(report.mismatches)} mismatch(es)", file=sys.stderr)
        for line in report.mismatches[:20]:
            print(f"  mismatch: {line}", file=sys.stderr)
    return 0 if report.passed in (True, None) else 1

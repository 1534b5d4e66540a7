"""``expunge bench``: reproduce the papers' experiments as tables and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from expunge.bench import available_experiments, render_folder, run_all, spec_dir
from expunge.cli._common import console

NAME = "bench"
HELP = "run benchmark experiments (E1-E7, A1-A7, ...) and write JSON, tables and plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiments", nargs="+", metavar="EXPERIMENT",
                        help="experiment names (shipped specs, or --specs) or 'all'")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings on digits: every experiment in a few minutes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    parser.add_argument("--out", required=True, help="folder for JSON, PNG and results.md")
    parser.add_argument("--data-root", default="../shared/datasets",
                        help="folder holding mnist/ and adult/ (default ../shared/datasets)")
    parser.add_argument("--specs", default=None, help=f"spec folder (default {spec_dir()})")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--render-only", action="store_true",
                        help="redraw plots and results.md from the JSON already in --out "
                             "(EXPERIMENT is ignored; nothing is trained)")


def run(args: argparse.Namespace) -> int:
    out = console(args)
    specs = Path(args.specs) if args.specs else None
    if args.list:
        for name, path in available_experiments(specs).items():
            out.print(f"{name}\t{path}")
        return 0
    if args.render_only:
        results = render_folder(Path(args.out), quick=args.quick, specs=specs)
        out.print(f"redrew {len(results)} experiment(s) into {args.out}/results.md")
        return 0
    root = Path(args.data_root)
    data_roots = {"mnist": root / "mnist", "adult": root / "adult", "digits": None}
    run_all(args.experiments, quick=args.quick, seeds=args.seeds, out=Path(args.out),
            data_roots=data_roots, specs=specs, log=out.print, show_progress=not args.quiet)
    out.print(f"results written to {args.out}/results.md")
    return 0

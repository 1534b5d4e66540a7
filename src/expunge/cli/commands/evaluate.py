"""``expunge evaluate``: how well a store's model forgot some ids, against a retrained reference.

The store holds the retained training data (``expunge.open(store).training_data``); the
test set, and the inputs of ids the store has already forgotten, come from
``--test-dataset``/``--data-root`` (the same loader ``expunge fit`` used). What is evaluated
is the store's model as it is now: ids still in the store give a "not forgotten yet"
baseline, unless ``--forget`` forgets them first (a ledger entry, like ``expunge forget``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from expunge.cli._common import console, open_store, parse_ids
from expunge.data import (
    IndexedDataset,
    available_datasets,
    class_forget_ids,
    load_dataset,
    random_forget_ids,
)
from expunge.evaluation import ATTACKS, evaluate
from expunge.exceptions import InvalidParameterError, InvalidRequestError

NAME = "evaluate"
HELP = "measure forgetting (accuracy gaps, membership attacks, distances, cost) vs retraining"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="a store written by `expunge fit`")
    which = parser.add_argument_group("forget set (exactly one)")
    which.add_argument("--forget-ids", default=None, help="comma-separated ids, e.g. 17,4242")
    which.add_argument("--forget-ids-file", default=None,
                       help="file of ids (whitespace or commas)")
    which.add_argument("--forget-fraction", type=float, default=None,
                       help="a random fraction of the original training ids (with --seed)")
    which.add_argument("--forget-class", type=int, default=None,
                       help="every training sample of this class")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of --forget-fraction's sample (default 0)")
    parser.add_argument("--test-dataset", "--dataset", dest="dataset", default="digits",
                        help=f"dataset the store was fitted on, for its test split and the "
                             f"inputs of forgotten ids: {', '.join(available_datasets())} "
                             "(default: digits)")
    parser.add_argument("--data-root", default=None,
                        help="folder with the dataset's files (mnist, adult); no downloads")
    parser.add_argument("--out", default=None,
                        help="write report.md, report.json and PNG plots into this folder")
    parser.add_argument("--attacks", default="default",
                        help=f"comma-separated from {', '.join(ATTACKS)}; 'all'; or 'default' "
                             "(everything but the shadow-model attacks lira, ulira)")
    parser.add_argument("--reference", choices=("retrain", "none"), default="retrain",
                        help="judge against Retrain on the retained data (default, cached in "
                             "the store) or report no gaps")
    parser.add_argument("--shadow-models", type=int, default=8,
                        help="shadow models for lira/ulira (default 8)")
    parser.add_argument("--shadow-epochs", type=int, default=None,
                        help="epochs per shadow model (default: the strategy's)")
    parser.add_argument("--svc-max-samples", type=int, default=5000,
                        help="cap per side of the SVC attack's training set (default 5000)")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds: refit + forget per seed in memory and "
                             "report mean ± std")
    parser.add_argument("--forget", action="store_true",
                        help="forget the ids in the store first (recorded in its ledger)")
    parser.add_argument("--explain", action="store_true",
                        help="print what a good value is next to every metric")


def _forget_ids(args: argparse.Namespace, original_ids: np.ndarray,
                original: IndexedDataset | None) -> np.ndarray:
    given = [args.forget_ids is not None, args.forget_ids_file is not None,
             args.forget_fraction is not None, args.forget_class is not None]
    if sum(given) != 1:
        raise InvalidRequestError(
            "Give exactly one of --forget-ids, --forget-ids-file, --forget-fraction or "
            "--forget-class."
        )
    if args.forget_fraction is not None:
        # sampled from the *original* ids (retained + forgotten), so the same ids come out
        # before and after they are forgotten
        placeholder = IndexedDataset(np.zeros((original_ids.size, 1), np.float32),
                                     np.zeros(original_ids.size, np.int64), original_ids)
        return random_forget_ids(placeholder, fraction=args.forget_fraction, seed=args.seed)
    if args.forget_class is not None:
        if original is None:  # pragma: no cover - original is always built for classes
            raise InvalidParameterError("--forget-class needs the training data.")
        return class_forget_ids(original, args.forget_class)
    return parse_ids(args.forget_ids, args.forget_ids_file)


def run(args: argparse.Namespace) -> int:
    out = console(args)
    strategy = open_store(args.store, show_progress=not args.quiet)
    try:
        retained = strategy.training_data
        train, test = load_dataset(args.dataset, root=args.data_root)
        if test.input_shape != retained.input_shape:
            raise InvalidParameterError(
                f"--test-dataset {args.dataset!r} has inputs of shape {test.input_shape}, but "
                f"the store's model was fitted on shape {retained.input_shape}: pass the "
                "dataset the store was fitted on (and --data-root)."
            )
        original_ids = np.union1d(retained.ids, strategy.forgotten_ids)
        # the original training data, from the dataset's files (evaluate checks that they
        # hold the same samples as the store); else the store's data + what the files have
        if train.contains(original_ids).all():
            original = train.select(original_ids)
        else:
            forgotten = strategy.forgotten_ids
            extra = forgotten[train.contains(forgotten)]
            original = (IndexedDataset.concat([retained, train.select(extra)])
                        if extra.size else retained)
        ids = _forget_ids(args, original_ids, original)
        seeds = None
        if args.seeds is not None:
            seeds = [int(s) for s in parse_ids(args.seeds, None).tolist()]
        report = evaluate(
            strategy, train=original, test=test, forget_ids=ids,
            reference=None if args.reference == "none" else "retrain",
            attacks=args.attacks, seeds=seeds, forget=args.forget,
            shadow_models=args.shadow_models, shadow_epochs=args.shadow_epochs,
            svc_max_samples=args.svc_max_samples, show_progress=not args.quiet,
        )
    finally:
        strategy.close()
    out.print(report.table(explain=args.explain))
    out.print(report.timings_table())
    for note in report.notes:
        out.print(f"[dim]note: {note}[/dim]")
    if args.out:
        paths = report.write(Path(args.out))
        out.print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0

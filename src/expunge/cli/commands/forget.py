"""``expunge forget``: forget sample ids (or a subject's samples) in a store; ``--dry-run``
previews the request's cost instead."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from expunge.cli._common import add_timeout_flag, console, open_store, parse_ids
from expunge.exceptions import InvalidRequestError

NAME = "forget"
HELP = "forget sample ids or a subject's samples from a fitted store (one ledger entry per call)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="a store written by `expunge fit`")
    parser.add_argument("--ids", default=None, help="comma-separated sample ids, e.g. 17,4242")
    parser.add_argument("--ids-file", default=None, help="file of ids (whitespace or commas)")
    parser.add_argument("--subject", default=None,
                        help="forget every retained sample of this subject key (a user id, an "
                             "e-mail address), as given in IndexedDataset(..., subjects=...)")
    parser.add_argument("--tag", default=None, help="free text stored with the ledger entry")
    add_timeout_flag(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="preview the request (sub-models and blocks retrained, "
                             "sample-passes, estimated seconds, what would be purged); "
                             "change nothing")
    parser.add_argument("--receipt-out", default=None, metavar="FILE",
                        help="write the request's signed receipt (JSON) to FILE")
    parser.add_argument("--signing-key", default=None, metavar="PEM",
                        help="Ed25519 private key that signs the receipt (default: "
                             "$EXPUNGE_SIGNING_KEY, else STORE/keys/receipt-signing-key.pem)")
    parser.add_argument("--json", action="store_true",
                        help="print the report (or the preview) as JSON")


def _request(args: argparse.Namespace) -> tuple[object | None, str | None]:
    if args.subject is not None:
        if args.ids is not None or args.ids_file is not None:
            raise InvalidRequestError("Give --subject or --ids/--ids-file, not both.")
        return None, args.subject
    return parse_ids(args.ids, args.ids_file), None


def _preview_table(preview: object) -> Table:
    p = preview.to_dict()  # type: ignore[attr-defined]
    table = Table(title="dry run: nothing was changed", show_header=False)
    table.add_row("ids to forget", str(len(p["ids"])))
    table.add_row("guarantee", p["guarantee"])
    table.add_row("sub-models retrained",
                  ", ".join(f"{k} (from block {b})" for k, b in p["from_block"].items()) or "none")
    table.add_row("blocks retrained", str(p["blocks_retrained"]))
    passes = p["sample_passes"]
    table.add_row("sample-passes", "unknown before it runs" if passes is None else
                  f"{passes}{' (exact)' if p['exact'] else ''}")
    seconds = p["estimated_seconds"]
    table.add_row("estimated seconds",
                  "unknown" if seconds is None else f"{seconds:.3f} ({p['estimate_basis']})")
    more = "" if p["purged_complete"] else " at least"
    table.add_row("store entries purged", f"{len(p['purged'])}{more}")
    return table


def run(args: argparse.Namespace) -> int:
    ids, subject = _request(args)
    out = console(args)
    overrides = {} if args.signing_key is None else {"signing_key": args.signing_key}
    strategy = open_store(args.store, show_progress=not args.quiet, **overrides)
    try:
        if args.dry_run:
            preview = strategy.preview(ids, subject=subject)  # type: ignore[arg-type]
            if args.json:
                print(json.dumps(preview.to_dict(), sort_keys=True))
            else:
                out.print(_preview_table(preview))
            return 0
        if subject is not None:
            report = strategy.forget_subject(subject, tag=args.tag, timeout=args.timeout)
        else:
            report = strategy.forget(ids, tag=args.tag,  # type: ignore[arg-type]
                                     timeout=args.timeout)
    finally:
        strategy.close()
    if args.receipt_out:
        Path(args.receipt_out).write_text(json.dumps(report.receipt, indent=2, sort_keys=True))
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
        return 0
    table = Table(title=f"request #{report.seq} ({report.request_id[:12]})", show_header=False)
    table.add_row("ids forgotten", str(len(report.ids)))
    table.add_row("guarantee", report.guarantee)
    table.add_row("seconds", f"{report.seconds:.3f}")
    table.add_row("sub-models retrained", ", ".join(map(str, report.submodels_retrained)) or "none")
    table.add_row("samples retrained (distinct)", str(report.samples_retrained))
    table.add_row("sample-passes (samples x epochs)", str(report.sample_passes))
    table.add_row("store entries purged", str(len(report.purged)))
    table.add_row("fingerprint after", report.fingerprint_after[:16])
    if args.receipt_out:
        table.add_row("signed receipt", args.receipt_out)
    if report.subject_nonce:
        table.add_row("subject nonce (give it to the subject)", report.subject_nonce)
    out.print(table)
    return 0

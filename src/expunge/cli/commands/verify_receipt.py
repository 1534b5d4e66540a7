"""``expunge verify-receipt``: check a signed deletion receipt offline.

Needs the receipt file and the store's public key, nothing else: no store, no network.
Exit code 0 when the receipt verifies, 1 when it does not (altered, forged, signed by
another key, or not about the given subject).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from expunge.cli._common import console
from expunge.exceptions import InvalidParameterError
from expunge.operations.receipts import verify_receipt

NAME = "verify-receipt"
HELP = "verify a signed deletion receipt offline (exit 0: valid, 1: invalid)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("receipt", metavar="FILE", help="the receipt (JSON)")
    parser.add_argument("--public-key", required=True, metavar="PEM",
                        help="the store's public key (PEM file: `expunge serve` serves it, "
                             "m.public_key returns it)")
    parser.add_argument("--subject", default=None,
                        help="also check the receipt concerns this subject key (needs --nonce)")
    parser.add_argument("--nonce", default=None,
                        help="the subject nonce returned with the subject's request")


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise InvalidParameterError(f"Cannot read {what} {path!r}: {err.strerror}.") from err


def run(args: argparse.Namespace) -> int:
    out = console(args)
    receipt = _read(args.receipt, "the receipt")
    key = _read(args.public_key, "--public-key")
    if (args.subject is None) != (args.nonce is None):
        raise InvalidParameterError("Give both --subject and --nonce, or neither.")
    ok = verify_receipt(receipt, key, subject=args.subject, subject_nonce=args.nonce)
    if not ok:
        print("receipt INVALID: altered, forged, signed by another key"
              + (", or not about this subject" if args.subject else ""))
        return 1
    fields = json.loads(receipt)
    out.print(f"[green]receipt valid[/]: request #{fields['seq']} ({fields['kind']}) of store "
              f"{fields['store_id'][:16]}, {fields['n_ids']} id(s), guarantee "
              f"{fields['guarantee']}, at {fields['created_at']}")
    out.print(f"model fingerprint {str(fields['fingerprint_before'])[:16]} -> "
              f"{fields['fingerprint_after'][:16]}; ledger hash {fields['ledger_hash'][:16]}"
              + ("; concerns the given subject" if args.subject else ""))
    return 0

"""``expunge export``: write a store's current model as one module for serving."""

from __future__ import annotations

import argparse

from expunge.cli._common import console, open_store

NAME = "export"
HELP = "write the store's current model for serving (safetensors + JSON recipe, no pickle)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="a store written by `expunge fit`")
    parser.add_argument("--out", required=True,
                        help="folder to write weights.safetensors and recipe.json into "
                             "(read back with expunge.export.load_exported)")


def run(args: argparse.Namespace) -> int:
    strategy = open_store(args.store)
    try:
        strategy.export(args.out)
        fingerprint = strategy.fingerprint()
    finally:
        strategy.close()
    console(args).print(f"exported to {args.out} (model fingerprint {fingerprint[:16]})")
    return 0

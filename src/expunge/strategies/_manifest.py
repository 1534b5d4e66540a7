"""The manifest: what a store was fitted with, written at creation and immutable after.

``manifest.json`` records the format version, a random ``store_id`` (the ledger's genesis
derives from it), the strategy, every recorded parameter, the dataset's shape and its
fingerprint keyed with the store's secret (an HMAC: it cannot confirm a guessed sample),
its stored input dtype and input transform (JSON: ``{"kind": "scale", "factor": ...}``),
and the versions that wrote it. Its keyed digest is committed with every state, so an
edit is caught by ``verify`` and by ``expunge.open``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import torch

from expunge._version import __version__
from expunge.data import IndexedDataset
from expunge.exceptions import StoreIntegrityError, StoreMismatchError
from expunge.store import Store


def new_manifest(strategy: str, params: dict[str, Any], dataset: IndexedDataset,
                 dataset_hmac: str, format_version: int) -> dict[str, Any]:
    return {
        "format_version": format_version,
        "store_id": uuid.uuid4().hex,
        "strategy": strategy,
        "params": params,
        "dataset": {
            "hmac": dataset_hmac, "n_samples": len(dataset),
            "n_classes": dataset.n_classes, "input_shape": list(dataset.input_shape),
            # stored dtype and the input transform predict_proba applies to raw inputs
            "dtype": str(dataset.dtype).removeprefix("torch."),
            "transform": dataset.transform.to_dict(),
        },
        "expunge_version": __version__,
        "torch_version": torch.__version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _same_fit(existing: dict[str, Any], manifest: dict[str, Any]) -> bool:
    return all(existing.get(k) == manifest.get(k)
               for k in ("format_version", "strategy", "params")) and \
        existing.get("dataset", {}).get("hmac") == manifest["dataset"]["hmac"]


def prepare_manifest(store: Store, strategy: str, owner: str, params: dict[str, Any],
                     dataset: IndexedDataset, format_version: int) -> None:
    """Write the manifest for a ``fit``, or check the existing one (under the write lock).

    Until a fit commits, the manifest is provisional: the same parameters and data resume
    (reusing finished checkpoints), anything else replaces it. After, a fit must match it.

    Raises:
        StoreMismatchError: the committed store holds another strategy, parameters or data,
            or has forgotten samples already. StoreIntegrityError: the manifest was edited.
    """
    dataset_hmac = store.keyed_digest("dataset", dataset.fingerprint())
    manifest = new_manifest(strategy, params, dataset, dataset_hmac, format_version)
    existing = store.read_manifest()
    committed = store.read_state()
    if committed is None:
        if existing is None or not _same_fit(existing, manifest):
            store.write_manifest(manifest)
        return
    where = store.location
    if committed.get("manifest") != store.manifest_digest():
        raise StoreIntegrityError(
            f"{store.describe_file('manifest')} was modified after the store was created; "
            "its recorded parameters cannot be trusted. Restore it, or use a new store."
        )
    if existing is None or existing.get("format_version") != format_version:
        raise StoreMismatchError(
            f"The store {where!r} has format version "
            f"{(existing or {}).get('format_version')!r}; this expunge writes version "
            f"{format_version}. Use a new store."
        )
    if existing.get("strategy") != strategy:
        raise StoreMismatchError(
            f"The store {where!r} holds a {existing.get('strategy')!r} model, not "
            f"{strategy!r}. Use a new store, or reopen it with expunge.open({where!r})."
        )
    recorded = dict(existing.get("params") or {})
    for key, value in params.items():
        if recorded.get(key) != value:
            raise StoreMismatchError(
                f"The store {where!r} was created with {key}={recorded.get(key)!r}, "
                f"but this {owner} has {key}={value!r}. Use a new store, or "
                f"reopen it with expunge.open({where!r})."
            )
    if existing.get("dataset", {}).get("hmac") != dataset_hmac:
        raise StoreMismatchError(
            f"The store {where!r} was fitted on other data (its keyed dataset fingerprint "
            "differs). Use a new store."
        )
    if store.ledger.entries("forget"):
        raise StoreMismatchError(
            f"The store {where!r} has already forgotten samples; fitting again would bring "
            f"them back. Reopen it with expunge.open({where!r}) to keep forgetting."
        )

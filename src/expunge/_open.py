"""``expunge.open``: reopen a store and keep forgetting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expunge.exceptions import InvalidParameterError, StoreError, StoreMismatchError
from expunge.store import DirectoryStore
from expunge.strategies.base import FORMAT_VERSION, UnlearningStrategy
from expunge.strategies.registry import get_strategy

#: what a manifest must hold, and of which type
_MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "strategy": str, "params": dict, "dataset": dict, "store_id": str,
}
_DATASET_FIELDS: dict[str, type | tuple[type, ...]] = {
    "hmac": str, "n_samples": int, "n_classes": int, "input_shape": list,
}


def _check_manifest(manifest: dict[str, Any], where: str, path: str) -> None:
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        older = isinstance(version, int) and version < FORMAT_VERSION
        raise StoreMismatchError(
            f"The store {where!r} has format version {version!r}; this expunge reads version "
            f"{FORMAT_VERSION}. "
            + ("Stores of older formats are not migrated (they have no content digests or "
               "store key): open it with the expunge version that wrote it "
               f"({manifest.get('expunge_version', 'unknown')}), or refit into a new store."
               if older else
               f"Open it with the expunge version that wrote it "
               f"({manifest.get('expunge_version', 'unknown')}).")
        )
    for fields, part, name in ((_MANIFEST_FIELDS, manifest, "manifest"),
                               (_DATASET_FIELDS, manifest.get("dataset"), "dataset")):
        for key, kind in fields.items():
            if not isinstance(part, dict) or not isinstance(part.get(key), kind):
                raise StoreError(
                    f"{path} is malformed: its {name} has no valid {key!r}. The manifest was "
                    "edited outside expunge; restore it, or refit into a new store."
                )


def open(path: str | Path, **overrides: Any) -> UnlearningStrategy:
    """Reopen the store at ``path``: strategy, parameters, partition, models and ledger.

    The recorded parameters are immutable: ``overrides`` may set runtime parameters only
    (``show_progress``; ``executor``, ``n_jobs``, ``ray_address`` for the sharded
    strategies), or pass again a custom callable the manifest records by name (``model=fn``,
    checked against that name). A recorded parameter may be repeated with its recorded value.

    Reading needs no lock; when no other process is writing, open also finishes an
    interrupted request (deletes what the committed state does not name).

    Args:
        path: a store directory written by ``fit(..., store=path)``.
        **overrides: runtime parameters, or a recorded custom callable. ``signing_key=PATH``
            signs this handle's receipts with that Ed25519 PEM key (``set_signing_key``).

    Raises:
        StoreError: ``path`` is not a readable store. StoreMismatchError: written by an
            incompatible version, a custom callable is needed, or an override would change
            a recorded parameter. StoreIntegrityError: the manifest or a file was modified.
    """
    if isinstance(path, str) and not path.strip():
        raise InvalidParameterError("expunge.open needs a store path; got ''.")
    signing_key = overrides.pop("signing_key", None)
    store = DirectoryStore(path, create=False)
    try:
        manifest = store.read_manifest() or {}
        where = str(path)
        _check_manifest(manifest, where, store.describe_file("manifest"))
        cls = get_strategy(str(manifest.get("strategy")))
        strategy = cls._from_store(store, manifest, overrides, path)
        if signing_key is not None:
            strategy.set_signing_key(signing_key)
        return strategy
    except BaseException:
        store.close()
        raise

"""``expunge.open``: reopen a store and keep forgetting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expunge.exceptions import StoreMismatchError
from expunge.store import DirectoryStore
from expunge.strategies.base import FORMAT_VERSION, UnlearningStrategy
from expunge.strategies.registry import get_strategy


def open(path: str | Path, **overrides: Any) -> UnlearningStrategy:
    """Reopen the store at ``path``: strategy, parameters, partition, models and ledger.

    Args:
        path: a store directory written by ``fit(..., store=path)``.
        **overrides: values for parameters the manifest cannot hold (a custom ``model``
            callable) or runtime settings (``show_progress``). ``signing_key=PATH`` signs
            this handle's receipts with that Ed25519 PEM key (see ``set_signing_key``).

    Raises:
        StoreError: ``path`` is not a store. StoreMismatchError: written by an incompatible
            version, or a custom model is needed.
    """
    signing_key = overrides.pop("signing_key", None)
    store = DirectoryStore(path, create=False)
    try:
        manifest = store.read_manifest() or {}
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreMismatchError(
                f"The store {str(path)!r} has format version {version!r}; this expunge reads "
                f"version {FORMAT_VERSION}. Open it with the expunge version that wrote it "
                f"({manifest.get('expunge_version', 'unknown')})."
            )
        cls = get_strategy(str(manifest.get("strategy")))
        strategy = cls._from_store(store, manifest, overrides, path)
        if signing_key is not None:
            strategy.set_signing_key(signing_key)
        return strategy
    except BaseException:
        store.close()
        raise

"""The only code that knows file names inside a store directory.

```
STORE/
  manifest.json            written at creation; its keyed digest is committed with the state
  expunge.sqlite           committed state + the deletion ledger (one transaction per request)
  secret.key               the store's 32-byte secret (keyed digests; keep it with the data)
  write.lock, read.lock    OS file locks: one writer at a time; no purge under a reader
  blobs/<name>.safetensors content-addressed tensors: checkpoints, the retained training data
```
Blob names are ``/``-separated (``ckpt/sub-003/block-002-<key>``); they map to nested folders.
"""

from __future__ import annotations

import re
from pathlib import Path

MANIFEST = "manifest.json"
DATABASE = "expunge.sqlite"
KEY = "secret.key"
WRITE_LOCK = "write.lock"
READ_LOCK = "read.lock"
BLOBS = "blobs"
BLOB_SUFFIX = ".safetensors"
TEMP_SUFFIX = ".tmp"

_BLOB_NAME = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


def manifest_path(root: Path) -> Path:
    return root / MANIFEST


def database_path(root: Path) -> Path:
    return root / DATABASE


def key_path(root: Path) -> Path:
    return root / KEY


def blobs_dir(root: Path) -> Path:
    return root / BLOBS


def blob_path(root: Path, name: str) -> Path:
    """Path of blob ``name``; refuses names that could escape the store."""
    if not _BLOB_NAME.match(name) or ".." in name.split("/"):
        raise ValueError(f"invalid blob name {name!r}")
    return blobs_dir(root) / (name + BLOB_SUFFIX)


def blob_name(root: Path, path: Path) -> str:
    """Inverse of :func:`blob_path`."""
    rel = path.relative_to(blobs_dir(root)).as_posix()
    return rel[: -len(BLOB_SUFFIX)]

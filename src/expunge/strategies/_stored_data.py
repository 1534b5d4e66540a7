"""The retained training data in the store, split into buckets by a keyed hash of the id.

Every request changes the retained data, and the store must hold exactly the retained data
(nothing of a forgotten sample may stay on disk). Written as one blob, MNIST's 188 MB would
be copied and fsynced again on every request: about 1 s, as long as SISA's whole retraining
of one slice. Split into :data:`DATA_BUCKETS` blobs by a keyed hash of the id, a request
rewrites only the buckets that held a forgotten id (1/16 of the data for a single id) and
keeps the others, which are content-addressed: a bucket's blob name is a hash of the
original dataset's keyed fingerprint (an HMAC under the store's secret, so names reveal
nothing checkable about the data), the bucket and the ids it holds, so an unchanged bucket
keeps its name and its bytes. A touched bucket is not copied either: its forgotten rows
are overwritten in place and the file renamed to its new name (see
:func:`write_training_data`), so a random 1 % batch, which touches every bucket, writes
the forgotten rows' bytes and not the retained data again.

Inputs are stored in the dataset's stored dtype (uint8 images as uint8: the store holds
about the raw bytes of the retained data, plus 24 bytes a sample for label, id and position)
with the input transform recorded in every bucket's metadata, so a reopened strategy feeds
its model exactly as the fitted one did. The store holds its own copy of the retained data,
whatever held the original (memory, a memory-mapped file, a torch ``Dataset``): forgetting
rewrites the buckets that held a forgotten id, and the original source is never referenced
again after ``fit`` (purging it is the data owner's job; see docs/data.md).

A store fitted on data with subject keys also keeps, per row, the keyed hash of the row's
subject (``subject_hmac``, 32 bytes; all zeros for a row without subject): it is rewritten
and purged with the row, and the clear key never reaches the disk.

Row order is part of the data (a float sum over rows depends on it), so each bucket also
stores every row's position in the original dataset, and reading sorts by it: a reopened
strategy sees the rows in exactly the order ``fit(D).forget(F)`` held in memory, which is
the order of ``D.drop(F)``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from expunge._hashing import derive_key, keyed_buckets, sha256_ids
from expunge.data import Identity, IndexedDataset, transform_from_dict
from expunge.exceptions import DatasetError, StoreIntegrityError
from expunge.store import Store, ids_digest, row_patches
from expunge.store.subjects import SUBJECT_HASH_BYTES

#: prefix of the training-data blobs (one per non-empty bucket)
DATA_BLOB_PREFIX = "data/train-"
#: buckets of the stored training data: a single-id request rewrites ~1/DATA_BUCKETS of it
DATA_BUCKETS = 16
# a fixed key, not the strategy's seed: the layout on disk never changes what is computed
_BUCKET_KEY = derive_key(0, "stored-data-bucket")


def data_buckets(ids: np.ndarray) -> np.ndarray:
    """The bucket of each id: ``floor(u(id) * DATA_BUCKETS)`` for a keyed uniform ``u``."""
    return keyed_buckets(_BUCKET_KEY, ids, DATA_BUCKETS)


#: bytes of one row's subject hash (HMAC-SHA256)


def _bucket_names(ids: np.ndarray, dataset_fingerprint: str) -> list[tuple[int, np.ndarray, str]]:
    """(bucket, rows, blob name) of every non-empty bucket of rows with these ``ids``."""
    bucket = data_buckets(ids)
    out = []
    for b in range(DATA_BUCKETS):
        rows = np.flatnonzero(bucket == b)
        if rows.size:
            name = f"{DATA_BLOB_PREFIX}{b:02d}-" + sha256_ids(
                np.ascontiguousarray(ids[rows]), prefix=f"{dataset_fingerprint}|bucket {b}|")[:24]
            out.append((b, rows, name))
    return out


def training_data_blobs(ids: np.ndarray, dataset_fingerprint: str) -> list[str]:
    """The blob names :func:`write_training_data` gives data with these ``ids`` (in order)."""
    return [name for _, _, name in _bucket_names(np.asarray(ids, np.int64), dataset_fingerprint)]


def write_training_data(store: Store, data: IndexedDataset, positions: np.ndarray,
                        dataset_fingerprint: str,
                        subject_hashes: np.ndarray | None = None,
                        previous_ids: np.ndarray | None = None) -> list[str]:
    """Store ``data`` (rows at original ``positions``) as buckets; return the blob names.

    Buckets whose ids did not change already exist under the same name and are neither
    copied nor written again (``write_blob`` is atomic and a no-op for an existing name).
    ``subject_hashes`` (``uint8``, one row of :data:`SUBJECT_HASH_BYTES` per sample) is
    stored with the rows; the dataset fingerprint, hence every name, already covers the
    subjects.

    ``previous_ids``: the ids of the data committed now, of which ``data`` keeps a subset
    (a request). A bucket that lost rows is then staged as an **in-place rewrite** of its
    committed blob (:meth:`Store.rewrite_blob`): the lost rows are overwritten (inputs,
    label, id and subject hash with zeros, the position with ``-1``, which readers skip)
    and the file renamed, so a request writes the forgotten rows' bytes, not the
    retained ones again. A bucket whose file would be more than :data:`MAX_HOLES` holes,
    a compressed one, or a store that cannot (memory) is written anew, compactly.
    """
    if positions.shape != (len(data),):
        raise ValueError(f"positions has shape {positions.shape}; expected ({len(data)},)")
    if subject_hashes is not None and subject_hashes.shape != (len(data), SUBJECT_HASH_BYTES):
        raise ValueError(f"subject_hashes has shape {subject_hashes.shape}")
    before: dict[int, str] = {}
    if previous_ids is not None:
        before = {b: name for b, _, name in _bucket_names(np.asarray(previous_ids, np.int64),
                                                          dataset_fingerprint)}
    names = []
    for b, rows, name in _bucket_names(data.ids, dataset_fingerprint):
        if not store.has_blob(name) and b in before and store.rewrite_blob(
                before[b], name, functools.partial(_hole_patches, data.ids[rows])):
            names.append(name)
            continue
        if not store.has_blob(name):
            mask = np.zeros(len(data), dtype=bool)
            mask[rows] = True
            part = data.where(mask)  # gathers this bucket's rows only (data may be a view)
            tensors = {"X": part.X, "y": part.y,
                       "ids": torch.from_numpy(np.ascontiguousarray(data.ids[rows])),
                       "positions": torch.from_numpy(np.ascontiguousarray(positions[rows]))}
            if subject_hashes is not None:
                tensors["subject_hmac"] = torch.from_numpy(
                    np.ascontiguousarray(subject_hashes[rows]))
            store.write_blob(name, tensors, {"n_classes": str(data.n_classes), "bucket": str(b),
                                             "transform": data.transform.spec()}, shared=True,
                             # uncompressed: a later request overwrites rows in place
                             compress=False)
        names.append(name)
    return names


#: the largest share of a bucket file's rows that may be holes (forgotten rows overwritten
#: in place) before the bucket is written anew without them: bounds the file at twice its
#: retained rows
MAX_HOLES = 0.5
#: the fill byte of each stored tensor's forgotten rows (``positions`` ``-1``: a hole)
HOLE_FILLS = {"X": 0, "y": 0, "ids": 0, "positions": 0xFF, "subject_hmac": 0}


def _hole_patches(kept_ids: np.ndarray, tensors: Mapping[str, torch.Tensor],
                  metadata: Mapping[str, str], regions: Mapping[str, tuple[int, int]]
                  ) -> list[tuple[int, int, int]] | None:
    """The patches that leave exactly ``kept_ids`` in a bucket file (its other live rows
    become holes), or ``None`` when it should be written anew instead."""
    ids, positions = tensors["ids"].numpy(), tensors["positions"].numpy()
    live = positions >= 0
    lost = live & ~np.isin(ids, kept_ids)
    if int((live & ~lost).sum()) != len(kept_ids) or set(tensors) - set(HOLE_FILLS):
        return None  # not the rows this bucket should keep, or an unknown layout
    if (len(ids) - int(live.sum()) + int(lost.sum())) > MAX_HOLES * len(ids):
        return None
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    fills = {k: f for k, f in HOLE_FILLS.items() if k in tensors}
    return row_patches(dict(regions), shapes, np.flatnonzero(lost).tolist(), fills)


def read_training_data(store: Store, names: str | Sequence[str]
                       ) -> tuple[IndexedDataset, np.ndarray]:
    """The stored training data, in original row order, and each row's original position.

    ``names`` may be a single blob name: the layout of stores written before buckets.
    """
    data, positions, _ = read_stored_data(store, names)
    return data, positions


def read_stored_data(store: Store, names: str | Sequence[str]
                     ) -> tuple[IndexedDataset, np.ndarray, np.ndarray | None]:
    """:func:`read_training_data` plus the rows' subject hashes (``None`` without subjects)."""
    parts = [_without_holes(*store.read_blob(name))
             for name in ([names] if isinstance(names, str) else names)]
    if not parts:
        raise StoreIntegrityError(
            f"The committed state of the store {store.location!r} names no training data."
        )
    try:
        n_classes = int(parts[0][1]["n_classes"])
        # stores written before transforms were recorded hold float32 model inputs
        specs = {metadata.get("transform", "") for _, metadata in parts}
        if len(specs) != 1:
            raise ValueError(f"buckets record different input transforms {sorted(specs)}")
        spec = specs.pop()
        transform = transform_from_dict(json.loads(spec)) if spec else Identity()
        y = torch.cat([tensors["y"] for tensors, _ in parts])
        ids = np.concatenate([tensors["ids"].numpy() for tensors, _ in parts])
        positions = np.concatenate([tensors["positions"].numpy() for tensors, _ in parts])
        order = np.argsort(positions, kind="stable")
        subjects = None
        if all("subject_hmac" in tensors for tensors, _ in parts):
            subjects = np.concatenate([t["subject_hmac"].numpy() for t, _ in parts])[order]
        # each bucket's rows go straight to their sorted place: one copy of the inputs in
        # memory besides the buckets read (not a concatenation and then a reordering)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        first = parts[0][0]["X"]
        X = torch.empty((len(order), *first.shape[1:]), dtype=first.dtype)
        start = 0
        for tensors, _ in parts:
            rows = tensors.pop("X")
            X[torch.from_numpy(rank[start:start + len(rows)])] = rows
            start += len(rows)
        data = IndexedDataset(X, y[torch.from_numpy(order)], ids[order], n_classes=n_classes,
                              transform=transform)
    except (KeyError, ValueError, RuntimeError, DatasetError, json.JSONDecodeError) as err:
        raise StoreIntegrityError(
            f"The training data stored in {store.location!r} is inconsistent ({err}); its "
            "blobs were edited outside expunge."
        ) from None
    return data, positions[order], subjects


def _without_holes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]
                   ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A bucket's rows without the holes in-place rewrites left (position ``-1``)."""
    positions = tensors.get("positions")
    if positions is not None and positions.ndim == 1 and bool((positions < 0).any()):
        keep = positions >= 0
        tensors = {k: (v[keep] if v.ndim and len(v) == len(keep) else v)
                   for k, v in tensors.items()}
    return tensors, metadata


def training_ids_digest(store: Store, ids: np.ndarray) -> str:
    """The keyed digest of a set of training ids (recorded by ``fit``, checked by verify)."""
    return ids_digest(store.key, ids.tolist())


def check_training_ids(store: Store, retained: np.ndarray, forgotten: Mapping[int, int], *,
                       n_samples: int, digest: str) -> None:
    """The retained ids and the forgotten ones are disjoint and together the fitted ids.

    This is the ledger's promise stated on the data: every id the ledger lists as forgotten
    left the stored training data, and nothing else did.

    Raises:
        StoreIntegrityError: naming the first id that breaks it.
    """
    gone = np.fromiter(forgotten, dtype=np.int64, count=len(forgotten))
    back = np.intersect1d(retained, gone)
    if back.size:
        raise StoreIntegrityError(
            f"Ids {back[:10].tolist()} are in the stored training data, but the ledger lists "
            f"them as forgotten (request #{forgotten[int(back[0])]}): the data was written "
            "back outside expunge."
        )
    every = np.concatenate([np.asarray(retained, dtype=np.int64), gone])
    if len(every) != n_samples or training_ids_digest(store, every) != digest:
        raise StoreIntegrityError(
            f"The stored training data ({len(retained)} samples) plus the {len(gone)} forgotten "
            f"ids is not the data the store was fitted on ({n_samples} samples): samples were "
            "added or removed outside expunge."
        )

"""What a fitted ARCANE model keeps per class besides its checkpoints: features and selection.

Per class ``k``, a :class:`ClassState` holds the class's retained ids (sorted), their
features (computed **once per sample**, by the row-independent kernels of
:mod:`~expunge.strategies.exact._features`), and the class's last greedy selection with
its resume trace. A request that touches class ``k`` derives the new state from the old one
by dropping rows (features and trace entries of the forgotten ids go with them) and, when a
selected id left, resuming the greedy from the unchanged prefix; classes a request does not
touch keep their state object, untouched.

Everything is committed with the model, content-addressed like the checkpoints, so that a
reopened store (every CLI request) starts from what the in-process model had:

* features: ``arcane/features-<k>-<bucket>-<hash>``, the class split into
  :data:`FEATURE_BUCKETS` buckets by a keyed hash of the id, so a one-id request rewrites
  one bucket (a quarter of the class: ~4 MB on MNIST) and nothing else. The name hashes the map,
  the ids and the bytes: a blob that does not match its name is not trusted (the rows are
  computed again from the data);
* selection: ``arcane/selection-<k>-<hash>``: picked ids, gains and the trace (a couple of
  MB: the directions of the picks and the periodic snapshots of every candidate's gain
  statistic). Its name hashes the selection parameters and the content.

Blobs that held a forgotten id's features or trace entries are no longer named by the
committed state and are purged with the checkpoints (the engine's garbage collection).
Untouched classes keep their blob names and are never read again after a reopen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from expunge._hashing import derive_key, keyed_buckets
from expunge.exceptions import StoreError
from expunge.store import Store
from expunge.strategies.exact._features import FeatureMap
from expunge.strategies.exact._selection import Selection, SelectionTrace, unit_rows

FEATURE_BLOB_PREFIX = "arcane/features-"
SELECTION_BLOB_PREFIX = "arcane/selection-"
TRACE_BLOB_PREFIX = "arcane/trace-"
#: the dimension of the selection's features (a keyed projection of the model's features)
SELECTION_DIM = 128
#: bump when what a blob means changes, so that older blobs are recomputed, not trusted
FORMAT = "arcane-state-v2"
#: feature blobs per class: fewer files to list and sync, a quarter of a class per request
FEATURE_BUCKETS = 4
_BUCKET_KEY = derive_key(0, "arcane-feature-bucket")


def feature_buckets(ids: np.ndarray) -> np.ndarray:
    """The feature bucket of each id (a keyed hash: independent of the other ids)."""
    return keyed_buckets(_BUCKET_KEY, ids, FEATURE_BUCKETS)


def selection_features(density: np.ndarray, seed: int) -> np.ndarray:
    """The greedy's features: unit rows of a keyed 128-d projection of ``density``, float32.

    A projection of the model's own features (not of the pixels) makes the selection pick
    what is diverse for the density it trains; 128 dimensions keep the greedy (``O(n·m·p)``)
    cheap, and float32 storage halves its memory traffic (the arithmetic is float64).
    """
    projection = FeatureMap("projection", SELECTION_DIM, seed)
    return unit_rows(projection.rowwise(np.asarray(density, dtype=np.float64))).astype(np.float32)


@dataclass(frozen=True)
class ClassState:
    """One class's candidates, their features and its last selection (see the module doc).

    ``density``/``select`` are ``None`` when not needed (no Gaussian learner / no
    selection) or not loaded yet (``blobs`` then names where they are).
    """

    ids: np.ndarray | None  # sorted retained ids of the class (None: not loaded yet)
    density: np.ndarray | None = None  # (n, D) float32: the model's features
    select: np.ndarray | None = None  # (n, 128) float32: the selection's features
    selection: Selection | None = None
    blobs: dict[str, Any] = field(default_factory=dict)  # committed names (set by commit)
    #: ids that left the class since ``blobs`` were committed: ``write_state`` rewrites the
    #: feature buckets that held them, and only those (``None``: write every bucket)
    removed: np.ndarray | None = None

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` (all present) in this class's sorted ids."""
        assert self.ids is not None
        return np.searchsorted(self.ids, np.asarray(ids, dtype=np.int64))

    def keep(self, ids: np.ndarray) -> ClassState:
        """The state restricted to ``ids`` (a subset of this class's ids), selection aside."""
        at = self.rows(ids)
        assert self.ids is not None
        return ClassState(
            ids=np.asarray(ids, dtype=np.int64),
            density=None if self.density is None else self.density[at],
            select=None if self.select is None else self.select[at],
            selection=self.selection,
            blobs=self.blobs,
            removed=np.setdiff1d(self.ids, ids, assume_unique=True),
        )


# ------------------------------------------------------------------------- storage
def _digest(prefix: str, arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256(prefix.encode())
    for array in arrays:
        a = np.ascontiguousarray(array)
        h.update(f"{a.dtype.str}{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:24]


def write_state(store: Store, key: str, k: int, state: ClassState) -> ClassState:
    """Commit ``state``'s features and selection (only blobs not in the store yet are written).

    Returns the state with ``blobs`` naming them.
    """
    assert state.ids is not None
    names: dict[str, Any] = {"ids": ids_digest(key, k, state.ids)}
    loaded = state.density is not None or state.select is not None
    if "features" in state.blobs and state.removed is not None:
        names["features"] = _rewrite_touched(store, key, k, state)
    elif loaded:
        names["features"] = [_write_bucket(store, key, k, state, b) for b in range(FEATURE_BUCKETS)
                             if (feature_buckets(state.ids) == b).any()]
    if state.selection is not None:
        # the picks alone (a few KB: all a plan needs) and the trace (what a resume needs)
        picks = {"ids": state.selection.ids, "gains": state.selection.gains}
        names["selection"] = _write_arrays(store, f"{SELECTION_BLOB_PREFIX}{k:03d}-",
                                           f"{FORMAT}|{key}|{k}|selection", picks, k)
        if state.selection.trace is not None:
            names["trace"] = _write_arrays(store, f"{TRACE_BLOB_PREFIX}{k:03d}-",
                                           f"{FORMAT}|{key}|{k}|trace",
                                           state.selection.trace.arrays(), k)
    return replace(state, blobs=names)


def _write_bucket(store: Store, key: str, k: int, state: ClassState, b: int) -> str:
    assert state.ids is not None
    rows = np.flatnonzero(feature_buckets(state.ids) == b)
    arrays = {"ids": state.ids[rows]}
    if state.density is not None:
        arrays["density"] = state.density[rows]
    if state.select is not None:
        arrays["select"] = state.select[rows]
    return _write_arrays(store, f"{FEATURE_BLOB_PREFIX}{k:03d}-{b:02d}-",
                         f"{FORMAT}|{key}|{k}|{b}", arrays, k)


def _rewrite_touched(store: Store, key: str, k: int, state: ClassState) -> list[str]:
    """The class's feature blobs after ``state.removed`` left: the buckets that held them
    are written again without them (from memory, or read back if not loaded); the others
    keep their names (the same as ``write_state`` would give the remaining rows)."""
    assert state.removed is not None and state.ids is not None
    touched = set(feature_buckets(state.removed).tolist())
    loaded = state.density is not None or state.select is not None
    out = []
    for name in state.blobs["features"]:
        bucket = _bucket_of(name)
        if bucket not in touched:
            out.append(name)
        elif loaded:
            if (feature_buckets(state.ids) == bucket).any():
                out.append(_write_bucket(store, key, k, state, bucket))
        else:
            arrays = _read_features(store, name, key, k)
            if arrays is None:
                raise StoreError(f"The feature blob {name!r} is missing or does not match "
                                 "its name; the class's features cannot be rewritten.")
            keep = ~np.isin(arrays["ids"], state.removed)
            if keep.any():
                out.append(_write_arrays(store, f"{FEATURE_BLOB_PREFIX}{k:03d}-{bucket:02d}-",
                                         f"{FORMAT}|{key}|{k}|{bucket}",
                                         {n: a[keep] for n, a in arrays.items()}, k))
    return sorted(out)


def _bucket_of(name: str) -> int:
    return int(name[len(FEATURE_BLOB_PREFIX):].split("-")[1])


def _write_arrays(store: Store, prefix: str, salt: str, arrays: dict[str, np.ndarray],
                  k: int) -> str:
    name = prefix + _digest(salt, [arrays[n] for n in sorted(arrays)])  # canonical order
    if not store.has_blob(name):
        store.write_blob(name, {n: torch.from_numpy(np.ascontiguousarray(a))
                                for n, a in arrays.items()}, {"class": str(k)})
    return name


def blob_names(blobs: dict[str, Any]) -> set[str]:
    """Every blob a committed class state keeps alive."""
    names = set(blobs.get("features", []))
    names.update(blobs[part] for part in ("selection", "trace") if part in blobs)
    return names


def ids_digest(key: str, k: int, ids: np.ndarray) -> str:
    """What ``blobs["ids"]`` holds: tells, without reading anything, if the class changed."""
    return _digest(f"{FORMAT}|{key}|{k}|ids", [np.asarray(ids, dtype=np.int64)])


def read_state(store: Store, key: str, k: int, blobs: dict[str, Any], ids: np.ndarray,
               compute: Callable[[np.ndarray], tuple[np.ndarray | None, np.ndarray | None]],
               ) -> ClassState:
    """Class ``k``'s committed state for its current ``ids``, checked against the blob names.

    Rows whose blob is missing or does not match its name are recomputed with ``compute``
    (ids -> (density, select)); a selection blob that does not check out is dropped (the
    class is selected again). Both give the same bits as the trusted blobs would have.
    """
    ids = np.asarray(ids, dtype=np.int64)
    columns: dict[str, np.ndarray | None] = {"density": None, "select": None}
    if "features" in blobs:
        parts = [a for a in (_read_features(store, n, key, k) for n in blobs["features"]) if a]
        stored = np.concatenate([a["ids"] for a in parts]) if parts else np.empty(0, np.int64)
        order = np.argsort(stored)
        at = np.searchsorted(stored[order], ids)
        found = at < len(stored)
        found[found] = stored[order][at[found]] == ids[found]
        missing = ids[~found]
        fresh = compute(missing) if missing.size else (None, None)
        for c, name in enumerate(("density", "select")):
            kept = [a[name] for a in parts if name in a]
            if not kept and fresh[c] is None:
                continue
            values = np.concatenate(kept)[order] if kept else None
            width = (values if values is not None else fresh[c]).shape[1]  # type: ignore[union-attr]
            out = np.empty((len(ids), width), dtype=np.float32)
            if values is not None:
                out[found] = values[at[found]]
            if missing.size:
                out[~found] = fresh[c]
            columns[name] = out
    return ClassState(ids, columns["density"], columns["select"],
                      read_selection(store, key, k, blobs, with_trace=True), dict(blobs))


def read_selection(store: Store, key: str, k: int, blobs: dict[str, Any],
                   with_trace: bool = False) -> Selection | None:
    """Class ``k``'s committed picks (and trace), or ``None`` if missing or not as named."""
    if "selection" not in blobs:
        return None
    picks = _read_arrays(store, blobs["selection"], f"{FORMAT}|{key}|{k}|selection",
                         ["ids", "gains"])
    if picks is None:
        return None
    trace = None
    if with_trace and "trace" in blobs:
        fields = ["candidates", "q_best", "directions", "snapshot_steps", "snapshot_q",
                  "snapshot_t"]
        arrays = _read_arrays(store, blobs["trace"], f"{FORMAT}|{key}|{k}|trace", fields)
        trace = None if arrays is None else SelectionTrace(*(arrays[f] for f in fields))
    return Selection(picks["ids"], picks["gains"], trace)


def _read_arrays(store: Store, name: str, salt: str, fields: list[str],
                 optional: tuple[str, ...] | list[str] = ()) -> dict[str, np.ndarray] | None:
    """The arrays of blob ``name`` if it has ``fields`` and its content matches its name."""
    if not store.has_blob(name):
        return None
    tensors, _ = store.read_blob(name)
    arrays = {n: t.numpy() for n, t in tensors.items()}
    if any(f not in arrays for f in fields):
        return None  # an older format
    hashed = sorted([*fields, *(f for f in optional if f in arrays)])
    return arrays if name.endswith(_digest(salt, [arrays[f] for f in hashed])) else None


def _read_features(store: Store, name: str, key: str, k: int) -> dict[str, np.ndarray] | None:
    try:
        bucket = _bucket_of(name)
    except (ValueError, IndexError):
        return None
    return _read_arrays(store, name, f"{FORMAT}|{key}|{k}|{bucket}", ["ids"],
                        optional=["density", "select"])

"""PUMA's cache: sums over samples, kept per id-bucket so that a request can remove a
forgotten sample's contribution by recomputing one bucket on its retained rows.

Every cached quantity is a sum over rows (:class:`BucketStats`):

* over the **curvature sample** ``S`` (a keyed random subset of the training split of at
  most ``cache_samples`` ids): the K-FAC factor sums and the sum of cross-entropy gradients
  (the mean training gradient ``g_bar`` the gradient-difference patch needs);
* over the **criterion set** ``C`` (the validation ids, without removed classes): the sum of
  cross-entropy gradients and losses, per criterion (``grad C`` and the held-out loss the
  damping rule matches).

The sums are stored as state blobs (``puma/bucket-*``), one per *part*. The rows are split
into the same 16 id-buckets as the stored training data
(:func:`expunge.strategies._stored_data.data_buckets`), and each bucket ``b`` into two
parts: its curvature-sample rows (part ``b``: the K-FAC factors and ``g_bar``'s sum) and
its criterion rows (part ``16 + b``: ``grad C`` and the losses), so that a forgotten
sample of ``S`` recomputes only sample rows and a forgotten criterion sample only
criterion rows. A request recomputes, at the current parameters and on the retained rows
only, exactly the parts holding a forgotten id, and drops the old blobs: afterwards no
persisted number was computed from a forgotten sample's row. (Stores written before the
split hold one combined part per bucket, key ``b``; a request that touches such a bucket
recomputes both of its parts, so every row is counted once in any mix of the two.)
Untouched parts keep the sums computed at the parameters of their last update: the
*drift* a full refresh (``refresh_after``, :meth:`PUMA.refresh`) removes. Everything else
(eigendecompositions, ``H^-1 grad C``, scores) is derived from these sums in memory and
never stored.

The ``A`` factors of layers whose input depends on no parameter (the first ``Linear`` of an
MLP, the first convolution: :func:`parameter_free_inputs`) are functions of a bucket's rows
alone. They are not stored: a reopened cache recomputes them from the stored data before
its first use (:meth:`PumaCache.fill_inputs`, one forward pass over the curvature sample),
with the function that computed them in the first place, so the bits are the same. On
the MNIST MLP that is the 785 x 785 factor, 40 % of every bucket blob a request writes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from expunge._hashing import derive_key, keyed_uniform, sha256_ids
from expunge._progress import NO_PROGRESS, Progress
from expunge.store import Store
from expunge.strategies._stored_data import DATA_BUCKETS, data_buckets
from expunge.strategies.approximate.curvature import (
    KFACFactors,
    KFACInverse,
    KFACLayer,
    LossCurvature,
    input_factor_sums,
    kfac_factors_and_gradient,
)

#: the key of bucket ``b``'s criterion part is ``CRITERION_PART + b``; its sample part is ``b``
CRITERION_PART = DATA_BUCKETS

#: purposes of the keyed subsets (with the strategy's seed)
VALIDATION_KEY = "puma-validation"
SAMPLE_KEY = "puma-curvature-sample"
CANDIDATE_KEY = "puma-candidates"
GRADIENT_KEY = "puma-mean-gradient"


def keyed_subset(seed: int, purpose: str, ids: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the ids whose keyed uniform under ``(seed, purpose)`` is below ``fraction``:
    a fixed random subset, each id's membership independent of every other id."""
    if fraction >= 1.0:
        return np.ones(len(ids), dtype=bool)
    return keyed_uniform(derive_key(int(seed), purpose), np.asarray(ids)) < fraction


# ============================================================================ one bucket
@dataclass
class BucketStats:
    """One id-bucket's share of every cached sum, computed at one parameter value.

    Attributes:
        bucket: the part's key: ``b`` for bucket ``b``'s curvature-sample rows,
            ``CRITERION_PART + b`` for its criterion rows (``b`` for both in stores
            written before the split).
        generation: the request count when it was computed (0: at fit or the last refresh).
        key: identifies the content (parameters, rows, criterion): the blob name's hash.
        n_sample: rows of the curvature sample in this bucket.
        grad_sum: sum of their cross-entropy gradients, ``(p,)`` (empty: no sample rows).
        kfac: their K-FAC factor sums (``None`` when the solver needs none, or no sample
            rows).
        crit_count, crit_loss, crit_grad: per criterion ``k``: rows, sum of losses, sum of
            gradients ``(K, p)`` over the bucket's criterion rows (``crit_grad`` empty: no
            criterion rows).
        data_inputs: the layers whose ``A`` factor is a function of the rows alone: not
            stored, and empty after a read until :meth:`PumaCache.fill_inputs`.
    """

    bucket: int
    generation: int
    key: str
    n_sample: int
    grad_sum: torch.Tensor
    kfac: KFACFactors | None
    crit_count: torch.Tensor
    crit_loss: torch.Tensor
    crit_grad: torch.Tensor
    data_inputs: tuple[int, ...] = ()

    @property
    def missing_inputs(self) -> bool:
        """Whether some data-only ``A`` factor still has to be recomputed (after a read)."""
        return self.kfac is not None and any(self.kfac.A[k].numel() == 0
                                             for k in self.data_inputs)

    @property
    def blob_name(self) -> str:
        # state, not a disposable cache: a reopened strategy reads it back
        return f"puma/bucket-{self.bucket:02d}-{self.key[:32]}"

    def to_blob(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {"grad_sum": self.grad_sum, "crit_count": self.crit_count,
                   "crit_loss": self.crit_loss, "crit_grad": self.crit_grad}
        if self.kfac is not None:
            # the factors are symmetric (mirrored when computed): their upper triangles
            # are a third less to write per request than the whole matrices; the
            # data-only A factors are recomputed from the stored data instead
            skipped = {f"kfac.A.{k}" for k in self.data_inputs}
            for name, factor in self.kfac.to_tensors("kfac.").items():
                if name in skipped:
                    continue
                if factor.ndim == 2:
                    tensors[f"{name}.triu"] = _upper(factor)
                else:
                    tensors[name] = factor
        meta = {"bucket": self.bucket, "generation": self.generation, "key": self.key,
                "n_sample": self.n_sample,
                "kfac_weight": None if self.kfac is None else self.kfac.weight,
                "kfac_layers": None if self.kfac is None else len(self.kfac.A),
                "data_inputs": list(self.data_inputs)}
        return tensors, {"puma_bucket": json.dumps(meta, sort_keys=True)}

    @classmethod
    def from_blob(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
                  ) -> BucketStats:
        meta = json.loads(metadata["puma_bucket"])
        kfac = None
        data_inputs = tuple(int(k) for k in meta.get("data_inputs", ()))
        if meta["kfac_layers"] is not None:
            full = {k[:-len(".triu")]: _from_upper(v) for k, v in tensors.items()
                    if k.endswith(".triu")}  # stores written before packing hold full ones
            # placeholders for the data-only factors, filled by PumaCache.fill_inputs
            absent = {f"kfac.A.{k}": torch.empty(0) for k in data_inputs}
            kfac = KFACFactors.from_tensors({**tensors, **full, **absent}, "kfac.",
                                            int(meta["kfac_layers"]), float(meta["kfac_weight"]))
        return cls(int(meta["bucket"]), int(meta["generation"]), str(meta["key"]),
                   int(meta["n_sample"]), tensors["grad_sum"], kfac, tensors["crit_count"],
                   tensors["crit_loss"], tensors["crit_grad"], data_inputs)


@functools.lru_cache(maxsize=16)
def _upper_positions(size: int) -> torch.Tensor:
    """Flat positions of a ``size x size`` matrix's upper triangle, row by row (gathered
    by ``index_select``: 20x faster than a boolean mask, which finds them on every call)."""
    rows, cols = torch.triu_indices(size, size)
    return rows * size + cols


def _upper(matrix: torch.Tensor) -> torch.Tensor:
    """The upper triangle of a square matrix, row by row."""
    return matrix.reshape(-1).index_select(0, _upper_positions(matrix.shape[0]))


@functools.lru_cache(maxsize=16)
def _upper_mask(size: int) -> torch.Tensor:
    """``True`` on and above the diagonal of a ``size x size`` matrix."""
    return torch.ones(size, size, dtype=torch.bool).triu()


def _mirrored(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` with its lower triangle replaced by the upper one's mirror: exactly
    symmetric (a matmul's ``X^T X`` may differ from its transpose in the last bit), so
    that what a bucket holds in memory is what its blob gives back. One selecting pass
    (copies, no arithmetic): a third of the time of adding two triangles."""
    return torch.where(_upper_mask(matrix.shape[0]), matrix, matrix.T)


def _from_upper(packed: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle is ``packed`` (:func:`_upper`'s inverse;
    the same bits as :func:`_mirrored` of the matrix it was packed from)."""
    size = math.isqrt(8 * packed.numel() + 1) // 2  # n(n+1)/2 entries: sqrt(8k+1) = 2n+1
    flat = torch.zeros(size * size, dtype=packed.dtype)
    flat[_upper_positions(size)] = packed
    return _mirrored(flat.reshape(size, size))


@dataclass(frozen=True)
class BucketRows:
    """The rows one bucket's sums run over: curvature-sample rows and, per criterion,
    criterion rows (positions in the strategy's data)."""

    sample: np.ndarray
    criteria: tuple[np.ndarray, ...]

    def key(self, ids: np.ndarray, fingerprint: str, with_kfac: bool,
            data_inputs: Sequence[int] = ()) -> str:
        # the data-only factors change what the blob holds, hence its name
        h = hashlib.sha256(f"{fingerprint}|kfac={with_kfac}|data_inputs={list(data_inputs)}|"
                           .encode())
        h.update(sha256_ids(ids[self.sample]).encode())
        for rows in self.criteria:
            h.update(sha256_ids(ids[rows], prefix="|criterion|").encode())
        return h.hexdigest()


def data_input_factors(curv: LossCurvature, layers: Sequence[KFACLayer],
                       data_inputs: Sequence[int], sample: np.ndarray
                       ) -> dict[int, torch.Tensor]:
    """The data-only ``A`` factors of a bucket's sample rows, mirrored exactly symmetric:
    the bits :func:`compute_bucket`'s K-FAC pass gave them, for a read cache to fill in."""
    sums = input_factor_sums(curv, layers, list(data_inputs), sample)
    return {k: _mirrored(a) for k, a in sums.items()}


def compute_bucket(curv: LossCurvature, layers: Sequence[KFACLayer] | None,
                   uncovered: torch.Tensor, bucket: int, rows: BucketRows, *, key: str,
                   generation: int, data_inputs: Sequence[int] = (),
                   progress: Progress = NO_PROGRESS, task: int | None = None) -> BucketStats:
    """A bucket's sums at ``curv``'s parameters. ``layers=None``: no K-FAC factors.

    Cost: a gradient pass over the bucket's sample and criterion rows, plus (with K-FAC)
    one forward and ``K`` backward passes over its sample rows. ``data_inputs`` only marks
    the factors the blob leaves out.
    """
    n_sample = len(rows.sample)
    kfac = None
    if n_sample == 0:  # a criterion part
        grad_sum = torch.empty(0, dtype=curv.dtype)
    elif layers is not None:  # the K-FAC pass also gives the gradient sum (one more backward)
        # the data-only A factors come from this pass too: data_input_factors gives a
        # reopened cache the same bits (the same passes over the same rows)
        kfac, gradient = kfac_factors_and_gradient(curv, layers, uncovered, rows.sample,
                                                   progress=progress, task=task)
        assert gradient is not None
        kfac = KFACFactors([_mirrored(a) for a in kfac.A], [_mirrored(g) for g in kfac.G],
                           kfac.diagonal, kfac.weight)
        grad_sum = gradient
    else:
        grad_sum = curv.gradient_and_loss(rows.sample, 1.0)[0]
        progress.advance(task, n_sample)
    counts, losses, grads = [], [], []
    if any(len(c) for c in rows.criteria):
        for crit_rows in rows.criteria:
            gradient, loss, count = curv.gradient_and_loss(crit_rows, 1.0)
            counts.append(count)
            losses.append(loss)
            grads.append(gradient)
            progress.advance(task, len(crit_rows))
        crit_grad = torch.stack(grads)
    else:  # a sample part: no K x p zeros to store and sum
        counts = losses = [0.0] * len(rows.criteria)
        crit_grad = torch.empty(0, dtype=curv.dtype)
    return BucketStats(bucket, generation, key, n_sample, grad_sum, kfac,
                       torch.tensor(counts, dtype=curv.dtype),
                       torch.tensor(losses, dtype=curv.dtype), crit_grad,
                       tuple(data_inputs) if kfac is not None else ())


# ============================================================================ the cache
@dataclass
class CacheTotals:
    """Sums over every bucket, and the means PUMA uses."""

    n_sample: int
    grad_sum: torch.Tensor
    kfac: KFACFactors | None
    crit_count: torch.Tensor
    crit_loss: torch.Tensor
    crit_grad: torch.Tensor

    @property
    def mean_gradient(self) -> torch.Tensor:
        """``g_bar``: the mean cross-entropy gradient over the curvature sample."""
        return self.grad_sum / max(self.n_sample, 1)

    @property
    def active(self) -> np.ndarray:
        """Criteria that still have rows (a removed class's criterion has none)."""
        return np.flatnonzero(self.crit_count.numpy() > 0)

    def criterion_gradients(self) -> torch.Tensor:
        """``grad C_k``, the mean gradient over each active criterion's rows, ``(K', p)``."""
        idx = torch.from_numpy(self.active)
        return self.crit_grad[idx] / self.crit_count[idx, None]

    def held_out_loss(self) -> float:
        """Mean cross-entropy over every criterion row (the damping rule's target)."""
        total = float(self.crit_count.sum())
        return float(self.crit_loss.sum()) / total if total else float("nan")


@dataclass
class PumaCache:
    """Per-bucket sums, the choices that define them, and the damping in use.

    Attributes:
        buckets: ``bucket -> BucketStats`` (buckets without rows are absent).
        sample_fraction: the keyed threshold defining the curvature sample ``S``.
        damping: ``gamma``, added to the curvature's eigenvalues on top of the weight
            decay (K-FAC: chosen by the leave-one-out rule unless fixed).
        damping_info: how it was chosen (:class:`DampingCalibration` as a dict).
        generation: requests served since fit; ``refreshed_at``: the generation of the
            last full refresh; ``forgotten_since_refresh``: training ids forgotten since.
        train_at_refresh: training-split size at the last full refresh.
    """

    buckets: dict[int, BucketStats]
    sample_fraction: float
    damping: float
    damping_info: dict[str, Any]
    generation: int = 0
    refreshed_at: int = 0
    forgotten_since_refresh: int = 0
    train_at_refresh: int = 0
    _inverse: KFACInverse | None = field(default=None, repr=False)
    #: ``H^-1 grad C`` of a point request with the K-FAC solver: a function of the sums
    #: alone, so requests that touch no bucket reuse it (memoised, never stored)
    _directions: torch.Tensor | None = field(default=None, repr=False)

    def totals(self) -> CacheTotals:
        # summed in bucket order: a request re-inserts the buckets it recomputed, and a
        # reopened store reads them sorted; float sums in another order differ in the last
        # bits, and the same request would give other bits in-process than after a reopen
        stats = [self.buckets[b] for b in sorted(self.buckets)]
        if any(st.missing_inputs for st in stats):
            raise RuntimeError("PUMA's cache was read but not filled: call fill_inputs first")
        # a part without sample (criterion) rows holds no gradient sum (criterion sums):
        # it is left out, so the sums run over the same terms in the same order as when
        # a bucket's two parts were one
        sampled = [s for s in stats if s.grad_sum.numel()]
        judged = [s for s in stats if s.crit_grad.numel()]
        kfacs = [s.kfac for s in stats if s.kfac is not None]
        kfac = None
        if kfacs:
            kfac = kfacs[0]
            for factors in kfacs[1:]:
                kfac = kfac + factors
        size = sampled[0].grad_sum.numel() if sampled else judged[0].crit_grad.shape[1]
        dtype = stats[0].crit_count.dtype
        grad_sum = (sum((s.grad_sum for s in sampled[1:]), sampled[0].grad_sum.clone())
                    if sampled else torch.zeros(size, dtype=dtype))
        k = len(stats[0].crit_count)
        return CacheTotals(
            sum(s.n_sample for s in stats), grad_sum, kfac,
            sum((s.crit_count for s in judged[1:]), judged[0].crit_count.clone())
            if judged else torch.zeros(k, dtype=dtype),
            sum((s.crit_loss for s in judged[1:]), judged[0].crit_loss.clone())
            if judged else torch.zeros(k, dtype=dtype),
            sum((s.crit_grad for s in judged[1:]), judged[0].crit_grad.clone())
            if judged else torch.zeros(k, size, dtype=dtype))

    def fill_inputs(self, curv: LossCurvature, layers: Sequence[KFACLayer] | None,
                    ids: np.ndarray, sample_rows: np.ndarray,
                    skip: Iterable[int] = ()) -> int:
        """Recompute the data-only ``A`` factors a read left out (buckets' sample rows from
        ``sample_rows``, positions in data with ``ids``: the curvature sample of the data
        the buckets were computed on). Returns the buckets filled. Cost: one forward pass
        over their sample rows, once per reopened store.

        ``skip``: buckets the caller is about to recompute from scratch (a request's
        touched buckets): filling them would be thrown away. They stay unfilled in this
        cache, so a later user of it (a failed request's retry) fills them then."""
        skipped = set(skip)
        todo = sorted(b for b, st in self.buckets.items()
                      if st.missing_inputs and b not in skipped)
        if not todo:
            return 0
        assert layers is not None
        in_bucket = data_buckets(ids[sample_rows])
        for b in todo:
            stats = self.buckets[b]
            assert stats.kfac is not None
            sample = sample_rows[in_bucket == b]
            if len(sample) != stats.n_sample:
                raise RuntimeError(
                    f"PUMA's cache bucket {b} was computed on {stats.n_sample} sample rows; "
                    f"the stored data gives {len(sample)}. The store is inconsistent.")
            own = data_input_factors(curv, layers, stats.data_inputs, sample)
            for k, factor in own.items():
                stats.kfac.A[k] = factor
        return len(todo)

    def bucket_lag(self) -> int:
        """Patches applied since the oldest bucket's sums were computed (0: every sum is
        at the current parameters)."""
        return max((self.generation - s.generation for s in self.buckets.values()), default=0)

    def meta(self) -> dict[str, Any]:
        return {"buckets": {str(b): s.blob_name for b, s in sorted(self.buckets.items())},
                "sample_fraction": self.sample_fraction, "damping": self.damping,
                "damping_info": self.damping_info, "generation": self.generation,
                "refreshed_at": self.refreshed_at,
                "forgotten_since_refresh": self.forgotten_since_refresh,
                "train_at_refresh": self.train_at_refresh}

    def write(self, store: Store) -> None:
        store.write_blobs([(stats.blob_name, *stats.to_blob())
                           for stats in self.buckets.values()
                           if not store.has_blob(stats.blob_name)])

    @classmethod
    def read(cls, meta: dict[str, Any], store: Store) -> PumaCache:
        buckets = {int(b): BucketStats.from_blob(*store.read_blob(name))
                   for b, name in meta["buckets"].items()}
        return cls(buckets, float(meta["sample_fraction"]), float(meta["damping"]),
                   dict(meta["damping_info"]), int(meta["generation"]),
                   int(meta["refreshed_at"]), int(meta["forgotten_since_refresh"]),
                   int(meta["train_at_refresh"]))


def bucket_rows(ids: np.ndarray, sample_rows: np.ndarray,
                criterion_rows: Sequence[np.ndarray],
                only: Iterable[int] | None = None) -> dict[int, BucketRows]:
    """Split sample and criterion rows (positions; ``ids`` are the data's ids) by bucket.

    Keys are parts: ``b`` holds bucket ``b``'s sample rows, ``CRITERION_PART + b`` its
    criterion rows. ``only`` restricts the result to those parts (a request touches a
    few); parts with no rows at all are left out. Cost: one keyed hash per row given.
    """
    wanted = (set(range(2 * DATA_BUCKETS)) if only is None else {int(b) for b in only})
    sample_b = data_buckets(ids[sample_rows])
    crit_b = [data_buckets(ids[rows]) for rows in criterion_rows]
    none = np.empty(0, dtype=sample_rows.dtype)
    out = {}
    for key in sorted(wanted):
        if key < CRITERION_PART:
            sample = sample_rows[sample_b == key]
            criteria = tuple(none for _ in criterion_rows)
        else:
            sample = none
            criteria = tuple(rows[cb == key - CRITERION_PART]
                             for rows, cb in zip(criterion_rows, crit_b, strict=True))
        if len(sample) or any(len(c) for c in criteria):
            out[key] = BucketRows(sample, criteria)
    return out


def touched_parts(cache: PumaCache, sample_ids: np.ndarray, criterion_ids: np.ndarray
                  ) -> set[int]:
    """The parts a request must recompute: the sample parts of ``sample_ids``' buckets
    (forgotten ids of the curvature sample), the criterion parts of ``criterion_ids``'
    (forgotten or removed criterion ids), and both parts of a bucket stored as one
    combined part (a store written before the split) that either touches."""
    parts = {int(b) for b in data_buckets(sample_ids)}
    parts |= {CRITERION_PART + int(b) for b in data_buckets(criterion_ids)}
    combined = {b for b, st in cache.buckets.items()
                if b < CRITERION_PART and st.n_sample and st.crit_grad.numel()}
    for b in combined:
        if b in parts or CRITERION_PART + b in parts:
            parts |= {b, CRITERION_PART + b}
    return parts

"""Building PUMA's cache: the rows it covers, the per-bucket sums, the damping.

Shared by ``fit``, a full refresh and ``forget`` (which rebuilds only touched buckets).
The curvature operator is created on the strategy's whole data by reference (no copy);
every computation touches only the rows it is given.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from expunge._hashing import derive_key, keyed_order
from expunge._progress import NO_PROGRESS, Progress
from expunge.data import IndexedDataset
from expunge.exceptions import InvalidParameterError
from expunge.strategies.approximate.curvature import (
    KFACInverse,
    KFACLayer,
    LeaveOneOutPredictor,
    LossCurvature,
    calibrate_damping,
    kfac_layers,
    parameter_free_inputs,
    warn_approximation,
)
from expunge.strategies.approximate.puma._cache import (
    SAMPLE_KEY,
    BucketStats,
    PumaCache,
    bucket_rows,
    compute_bucket,
    keyed_subset,
)

if TYPE_CHECKING:
    from expunge.strategies.approximate.puma.strategy import PUMA

#: rows per batch in every data pass
CHUNK_SIZE = 4096
#: training rows probed by the leave-one-out damping rule
DAMPING_PROBES = 256


class Linearisation:
    """The data of one linearisation: the operator at the current parameters, which rows
    are training, curvature-sample and criterion rows, and the K-FAC layers."""

    def __init__(self, strategy: PUMA, module: nn.Module, data: IndexedDataset,
                 val_ids: np.ndarray, removed: tuple[int, ...], *,
                 criterion_ids: np.ndarray | None = None,
                 sample_fraction: float | None = None) -> None:
        """Training split: the ids not in ``val_ids``; criterion set: ``criterion_ids``
        (default ``val_ids``) without the ``removed`` classes."""
        self.strategy, self.data = strategy, data
        self.val_ids, self.removed = val_ids, removed
        # a lazy view: the operator reads only the rows it asks for (a request touches few
        # rows; materialising every input would make each request O(n))
        self.curv = LossCurvature(
            module, data.batches(), data.y,  # type: ignore[arg-type]
            scope=strategy.scope,  # type: ignore[arg-type]
            kind=strategy.hessian,  # type: ignore[arg-type]
            weight_decay=float(strategy.weight_decay),
            damping=0.0 if strategy.uses_kfac_solver else strategy.damping_value(0.0),
            dtype=strategy.torch_dtype, chunk_size=CHUNK_SIZE,
            # the exact solvers make many products over every training row: cache the
            # head's inputs once; K-FAC touches few rows per request: never pass over all
            cache_features=not strategy.uses_kfac_solver,
        )
        is_val = np.isin(data.ids, val_ids)
        self.train_rows = np.flatnonzero(~is_val)
        self.n_train = len(self.train_rows)
        if sample_fraction is None:
            sample_fraction = strategy.sample_fraction(self.n_train)
        self.sample_fraction = float(sample_fraction)
        in_sample = keyed_subset(int(strategy.seed), SAMPLE_KEY, data.ids[self.train_rows],
                                 self.sample_fraction)
        self.sample_rows = self.train_rows[in_sample]
        labels = data.y.numpy()
        in_criterion = is_val if criterion_ids is None else np.isin(data.ids, criterion_ids)
        crit = np.flatnonzero(in_criterion & ~np.isin(labels, list(removed)))
        if strategy.criterion == "per_class_loss":
            self.criterion_groups = [crit[labels[crit] == c] for c in range(data.n_classes)]
        else:
            self.criterion_groups = [crit]
        self.criterion_rows = crit
        self.layers: list[KFACLayer] | None = None
        self.uncovered = torch.zeros(self.curv.size, dtype=torch.bool)
        #: layers whose A factor is a function of the data alone (not stored)
        self.data_inputs: tuple[int, ...] = ()
        if strategy.needs_kfac:
            self.layers, self.uncovered = kfac_layers(self.curv)
            if len(self.train_rows):
                self.data_inputs = parameter_free_inputs(
                    self.curv, self.layers, torch.as_tensor(self.train_rows[:1]))

    def fill_cache(self, cache: PumaCache, skip: Iterable[int] = ()) -> None:
        """Recompute what a read cache left out (its data-only factors) from this data,
        which must be the data its buckets were computed on; ``skip``: buckets about to
        be recomputed anyway."""
        cache.fill_inputs(self.curv, self.layers, self.data.ids, self.sample_rows, skip)

    def bucket_stats(self, fingerprint: str, generation: int,
                     only: Iterable[int] | None = None, progress: Progress = NO_PROGRESS,
                     exclude: np.ndarray | None = None) -> dict[int, BucketStats]:
        """Compute the sums of every bucket (or ``only`` those), without rows in
        ``exclude`` (positions of samples being forgotten)."""
        sample, groups = self.sample_rows, self.criterion_groups
        if exclude is not None and len(exclude):
            sample = sample[~np.isin(sample, exclude)]
            groups = [g[~np.isin(g, exclude)] for g in groups]
        rows = bucket_rows(self.data.ids, sample, groups, only)
        total = sum(len(r.sample) + sum(len(c) for c in r.criteria) for r in rows.values())
        what = "K-FAC factors and gradient sums" if self.layers is not None else "gradient sums"
        task = progress.task(f"{type(self.strategy).__name__}: {what} "
                             f"({len(rows)} id-buckets)", total)
        with_kfac = self.layers is not None
        return {b: compute_bucket(self.curv, self.layers, self.uncovered, b, r,
                                  key=r.key(self.data.ids, fingerprint, with_kfac,
                                            self.data_inputs),
                                  generation=generation, data_inputs=self.data_inputs,
                                  progress=progress, task=task)
                for b, r in rows.items()}


def kfac_inverse(lin: Linearisation, cache: PumaCache) -> KFACInverse:
    """The K-FAC inverse of the cache's factor totals (memoised on the cache)."""
    if cache._inverse is None:
        totals = cache.totals()
        assert totals.kfac is not None and lin.layers is not None
        cache._inverse = KFACInverse(totals.kfac, lin.layers, lin.uncovered, lin.curv.size)
    return cache._inverse


def choose_damping(lin: Linearisation, cache: PumaCache,
                   progress: Progress = NO_PROGRESS) -> tuple[float, dict[str, Any]]:
    """The damping for K-FAC: fixed, or by the leave-one-out rule on the criterion rows.

    The rule (:func:`~expunge.strategies.approximate.curvature.calibrate_damping`) probes
    ``DAMPING_PROBES`` curvature-sample rows (a keyed choice) and matches their predicted
    leave-one-out loss to the criterion's mean loss.
    """
    strategy = lin.strategy
    if strategy.damping != "auto":
        value = strategy.damping_value(0.0)
        return value, {"rule": "fixed", "damping": value}
    totals = cache.totals()
    target = totals.held_out_loss()
    if not np.isfinite(target):
        raise InvalidParameterError(
            "damping='auto' calibrates the damping on the validation (criterion) samples, "
            "and none is left. Pass damping=<a number >= 0>, e.g. 1e-4, or keep validation "
            "samples (val_fraction > 0, or validation=...)."
        )
    task = progress.task(f"{type(strategy).__name__}: damping (leave-one-out rule)", 1)
    started = time.perf_counter()
    order = keyed_order(derive_key(int(strategy.seed), "puma-damping-probes"),
                        lin.data.ids[lin.sample_rows])
    probes = np.sort(lin.sample_rows[order[:DAMPING_PROBES]])
    predictor = LeaveOneOutPredictor(lin.curv, lin.layers or [], kfac_inverse(lin, cache),
                                     probes, totals.mean_gradient, lin.n_train)
    result = calibrate_damping(predictor, target, base=float(strategy.weight_decay))
    progress.advance(task)
    if result.status == "ceiling":
        warn_approximation(
            f"{type(strategy).__name__}'s damping rule could not bring the predicted "
            f"leave-one-out loss ({result.predicted:.4g}) down to the held-out loss "
            f"({target:.4g}; training loss {result.train_loss:.4g}) with damping up to "
            f"{result.damping:.3g}: the curvature is badly approximated. The largest "
            "damping was used; consider solver='cg' or a fixed damping."
        )
    info = {"rule": "leave-one-out", **result.to_dict(),
            "seconds": time.perf_counter() - started}
    return result.damping, info


def build_cache(lin: Linearisation, fingerprint: str, *, generation: int,
                progress: Progress = NO_PROGRESS) -> tuple[PumaCache, dict[str, float]]:
    """A complete cache at the operator's parameters (fit and full refresh), with the time
    of each part."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    buckets = lin.bucket_stats(fingerprint, generation, progress=progress)
    seconds["sums"] = time.perf_counter() - started
    cache = PumaCache(buckets, lin.sample_fraction, 0.0, {}, generation=generation,
                      refreshed_at=generation, train_at_refresh=lin.n_train)
    if lin.strategy.uses_kfac_solver:
        started = time.perf_counter()
        kfac_inverse(lin, cache)
        seconds["eigendecomposition"] = time.perf_counter() - started
        started = time.perf_counter()
        cache.damping, cache.damping_info = choose_damping(lin, cache, progress)
        seconds["damping"] = time.perf_counter() - started
    else:
        cache.damping = lin.strategy.damping_value(0.0)
        cache.damping_info = {"rule": "fixed" if lin.strategy.damping != "auto"
                              else "exact curvature: weight decay only", "damping": cache.damping}
    return cache, seconds

"""One run of the evaluation: resolve what state the forget ids are in, get the reference,
predict once, then let each metric family add its rows (``_families/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from expunge._hashing import derive_key, keyed_order
from expunge._progress import Progress
from expunge.data import IndexedDataset
from expunge.evaluation._families import FAMILIES
from expunge.evaluation._families._context import Options, RunContext, Timer
from expunge.evaluation._families.across_runs import keep_margins
from expunge.evaluation._features import LOSS_EPS
from expunge.evaluation._reference import (
    Reference,
    model_view,
    retrain_reference,
    store_bytes_excluding_cache,
    strategy_reference,
)
from expunge.evaluation._report import MetricRow
from expunge.exceptions import (
    DatasetError,
    DivergedError,
    InvalidParameterError,
    InvalidRequestError,
    UnknownSampleError,
)
from expunge.strategies.base import ForgetReport, UnlearningStrategy


@dataclass
class Run:
    """One run's rows and what the report keeps of it."""

    seed: int
    unlearn_seed: int | None
    status: str
    fingerprint: str
    rows: list[MetricRow]
    n_forget: int
    n_retain: int
    removed_class: int | None
    reference: dict[str, Any] | None
    forget_report: dict[str, Any] | None
    curves: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    margins: dict[str, Any] = field(default_factory=dict)


def _select_from_train(train: IndexedDataset | None, ids: np.ndarray) -> IndexedDataset:
    if train is None:
        raise InvalidParameterError(
            f"The strategy has already forgotten ids {ids[:10].tolist()}, so their inputs are "
            "no longer in it: pass the original training data as train= (the CLI loads it "
            "with --test-dataset/--data-root)."
        )
    present = train.contains(ids)
    if not present.all():
        raise InvalidParameterError(
            f"train= lacks forget ids {ids[~present][:10].tolist()}; pass the original "
            "training data the strategy was fitted on."
        )
    return train.select(ids)


def _check_train_matches(train: IndexedDataset | None, data: IndexedDataset,
                         ids: np.ndarray, seed: int) -> None:
    """``train`` must hold the same samples as the strategy for shared ids (a cheap check)."""
    if train is None or train is data:
        return
    sample = ids if ids.size <= 256 else ids[np.sort(keyed_order(derive_key(seed, "check"),
                                                                 ids)[:256])]
    sample = sample[train.contains(sample) & data.contains(sample)]
    if sample.size == 0:
        return
    a, b = train.select(sample), data.select(sample)
    if not (torch.equal(a.y, b.y) and torch.equal(a.X, b.X) and a.transform == b.transform):
        raise DatasetError(
            "train= does not hold the same samples as the strategy's training data (labels or "
            "inputs differ for shared ids): pass the training data the strategy was fitted on."
        )


def _state(strategy: UnlearningStrategy, train: IndexedDataset | None, ids: np.ndarray,
           forget: bool, forget_report: ForgetReport | None
           ) -> tuple[str, IndexedDataset, IndexedDataset, ForgetReport | None, list[str]]:
    """(status, D_f, D_r, the forget report, notes) for the strategy as it is now."""
    data = strategy.training_data  # raises NotFittedError when unfitted
    present = data.contains(ids)
    if forget:
        forget_set = data.select(ids) if present.all() else None
        forget_report = strategy.forget(ids)  # raises, changing nothing, unless all present
        assert forget_set is not None
        return "forgotten by evaluate", forget_set, strategy.training_data, forget_report, []
    if present.all():
        return "not forgotten yet", data.select(ids), data.drop(ids), forget_report, [
            "status: the model still holds the forget set (not forgotten yet); the numbers "
            "are a before-forgetting baseline."]
    if not present.any():
        forgotten = np.isin(ids, strategy.forgotten_ids)
        if not forgotten.all():
            raise UnknownSampleError(
                f"Ids {ids[~forgotten][:10].tolist()} were never in this strategy's training "
                "data (neither retained nor forgotten); check forget_ids."
            )
        status = "forgotten" if forget_report is None else "forgotten by evaluate"
        return status, _select_from_train(train, ids), data, forget_report, []
    raise InvalidRequestError(
        f"Ids {ids[present][:10].tolist()} are still in the training data but "
        f"{ids[~present][:10].tolist()} were already forgotten; evaluate one state at a "
        "time: forget the rest first, or pass only one group."
    )


def _loss_histograms(ctx: RunContext) -> dict[str, Any]:
    log_losses = {(s, split): np.log10(np.maximum(ctx.feature("loss", s, split), 1e-30))
                  for s in ctx.sides for split in ("forget", "test")}
    everything = np.concatenate([v for v in log_losses.values() if v.size])
    low, high = np.floor(everything.min()), np.ceil(everything.max())
    edges = np.linspace(low, max(high, low + 1.0), 41)
    hist: dict[str, Any] = {"edges": edges.tolist()}
    for s in ctx.sides:
        hist[s] = {split: np.histogram(log_losses[(s, split)], bins=edges)[0].tolist()
                   for split in ("forget", "test")}
    return hist


def run_once(
    strategy: UnlearningStrategy, train: IndexedDataset | None, test: IndexedDataset,
    ids: np.ndarray, reference_arg: str | UnlearningStrategy | None, forget: bool,
    forget_report: ForgetReport | None, seed: int, options: Options, timer: Timer,
    progress: Progress, unlearn_seed: int | None = None,
) -> Run:
    """Evaluate ``strategy`` as it is now on ``ids``: every metric family, one seed."""
    data = strategy.training_data
    status, forget_set, retained, forget_report, notes = _state(
        strategy, train, ids, forget, forget_report)
    _check_train_matches(train, data, retained.ids, seed)
    if train is not None and status == "not forgotten yet":
        _check_train_matches(train, forget_set, ids, seed)
    retained_y = retained.y.numpy()
    forget_classes = np.unique(forget_set.y.numpy())
    removed_class = (int(forget_classes[0]) if forget_classes.size == 1
                     and not (retained_y == forget_classes[0]).any() else None)

    ref: Reference | None = None
    with timer("reference"):
        if reference_arg == "retrain":
            ref = retrain_reference(strategy, retained, cache=options.cache_reference,
                                    shared=options.cache)
        elif isinstance(reference_arg, UnlearningStrategy):
            ref = strategy_reference(reference_arg, retained, ids)

    model = model_view(strategy)
    splits = {"forget": forget_set, "retain": retained, "test": test}
    with timer("predictions"):
        P = {"model": {k: model.predict_proba(v.X).detach().double().numpy()
                       for k, v in splits.items()}}
        if ref is not None:
            P["reference"] = {k: ref.view.predict_proba(v.X).detach().double().numpy()
                              for k, v in splits.items()}
    for side, probabilities in P.items():
        for split, p in probabilities.items():
            bad = int((~np.isfinite(p)).any(axis=1).sum())
            if bad:  # a broken model (overflowing logits): nothing below can judge it
                who = "The model" if side == "model" else "The reference model"
                raise DivergedError(
                    f"{who} ({strategy.name}) gives non-finite probabilities on {bad} of "
                    f"{len(p)} {split} samples (its logits overflow): it cannot be evaluated. "
                    "The request diverged; lower the method's step size or steps."
                )
    if any((p == 0).any() for side in P.values() for p in side.values()):
        notes.append(f"some probabilities are exactly 0 (e.g. SISA's vote shares): losses and "
                     f"m-entropy clip them at {LOSS_EPS:g}.")
    ctx = RunContext(
        strategy=strategy, forget_set=forget_set, retained=retained, test=test, ids=ids,
        seed=seed, options=options, timer=timer, progress=progress, model=model, ref=ref, P=P,
        forget_report=forget_report, removed_class=removed_class, status=status,
        store_bytes=store_bytes_excluding_cache(strategy.store_), notes=notes,
    )
    for family in FAMILIES:
        family(ctx)
    ctx.curves["loss_hist"] = _loss_histograms(ctx)
    ctx.curves["roc"] = ctx.roc
    return Run(
        seed=seed, unlearn_seed=unlearn_seed, status=status, fingerprint=strategy.fingerprint(),
        rows=ctx.rows, n_forget=len(forget_set), n_retain=len(retained),
        removed_class=removed_class, reference=None if ref is None else ref.description,
        forget_report=ctx.cost, curves=ctx.curves, notes=ctx.notes, margins=keep_margins(ctx),
    )

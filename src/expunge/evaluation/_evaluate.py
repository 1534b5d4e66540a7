"""``expunge.evaluate``: did it forget, at what cost, judged against a retrained reference.

What is evaluated is the strategy **as it is now**:

* if the forget ids are still in ``strategy.training_data``, the model has *not* forgotten
  them yet and the report says so (status ``"not forgotten yet"``): a "before" baseline
  showing what the attacks see on a model that still holds the data;
* if the strategy has already forgotten them (``strategy.forget(ids)`` or ``expunge forget``),
  the report measures how well (status ``"forgotten"``); their inputs and labels are then
  no longer in the strategy, so pass the original data as ``train=``;
* ``forget=True`` calls ``strategy.forget(forget_ids)`` first and adds its cost
  (status ``"forgotten by evaluate"``);
* ``seeds=[s1, s2, ...]`` treats ``strategy`` as a template: for each seed a fresh copy
  (``seed=s``, in memory) is fitted on ``train``, forgets ``forget_ids`` and is evaluated
  against a reference with the same seed; the report gives mean ± std over seeds.

Splits: ``D_f`` = the forget samples, ``D_r`` = the strategy's training data without them
(= what it retains), ``D_te`` = ``test``. Metric definitions and the sources of each
attack are in ``docs/evaluation.md`` and ALGORITHMS.md section 5.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from expunge._hashing import derive_key, keyed_order, sha256_ids
from expunge._progress import Progress
from expunge._version import __version__
from expunge.data import IndexedDataset, as_id_array
from expunge.evaluation._distances import (
    js_divergence,
    mean_l1_distance,
    parameter_l2,
    prediction_agreement,
)
from expunge.evaluation._features import (
    FEATURES,
    LOSS_EPS,
    confidence,
    logit_scaled_confidence,
)
from expunge.evaluation._metrics import MembershipMetrics, membership_metrics
from expunge.evaluation._reference import (
    Reference,
    model_view,
    retrain_reference,
    store_bytes_excluding_cache,
    strategy_reference,
)
from expunge.evaluation._report import EvaluationReport, MetricRow, aggregate_rows
from expunge.evaluation.attacks import (
    likelihood_ratio_scores,
    logistic_loss_attack,
    svc_mia_efficacy,
    threshold_attack,
    train_shadows,
    ulira_leave_one_out,
)
from expunge.evaluation.attacks._logistic import MIN_PER_CLASS
from expunge.exceptions import (
    DatasetError,
    InvalidParameterError,
    InvalidRequestError,
    UnknownSampleError,
)
from expunge.strategies.base import ForgetReport, UnlearningStrategy

THRESHOLD_ATTACKS = tuple(FEATURES)  # loss, confidence, entropy, m_entropy
ATTACKS = (*THRESHOLD_ATTACKS, "svc", "logistic", "lira", "ulira")
#: the population attacks; LiRA/U-LiRA train shadow models, so they are opt-in
DEFAULT_ATTACKS = (*THRESHOLD_ATTACKS, "svc", "logistic")
SHADOW_ATTACKS = ("lira", "ulira")

_FEATURE_TITLES = {"loss": "Loss", "confidence": "Confidence", "entropy": "Entropy",
                   "m_entropy": "M-entropy"}

# one line per metric: what a good value is, relative to the reference
_GOOD_MIA_AUC = ("close to the reference's (about 0.5 for a random forget set); above = forget "
                 "samples still look like members, below = they look less familiar than unseen "
                 "data (over-forgetting, also detectable)")
_GOOD_BACC = "close to the reference's (0.5 = chance)"
_GOOD_TPR1 = ("close to the reference's (0.01 = chance at 1% FPR); higher = some forget samples "
              "are identified with confidence")
_GOOD_TPR01 = ("close to the reference's (0.001 = chance at 0.1% FPR); higher = some forget "
               "samples are identified with confidence")
_GOOD_POWER = ("well above 0.5 for both models: the attack detects real members, so its "
               "forget-set numbers mean something")
GOOD = {
    "UA": ("close to the reference's UA: a retrained model still gets many forget samples "
           "right; far above it = over-forgetting"),
    "RA": "close to the reference's (no collateral damage on the retained data)",
    "TA": "close to the reference's (generalisation kept)",
    "removed_class_TA": "close to the reference's (near 0: a model that never saw a class "
                        "cannot predict it)",
    "other_classes_TA": "close to the reference's (the other classes are unharmed)",
    "avg_gap": "0 = matches the reference on UA, RA, TA (and MIA-Efficacy); lower is better",
    "svc": ("close to the reference's, not 1 (a retrained model is confident on forget samples "
            "it generalises to); higher = more forget samples look unseen"),
    "logistic.accuracy": "close to the reference's (about 0.5 for a random forget set)",
    "logistic.auc": "close to the reference's (about 0.5 for a random forget set)",
    "ulira.auc": ("0.5 = the strategy's unlearned models cannot be told from its retrained "
                  "ones on the forget samples (exact strategies: 0.5 up to noise)"),
    "ulira.accuracy": "0.5 = indistinguishable from retraining (Hayes et al. 2024)",
    "agreement": ("1 for exact methods; otherwise close to the agreement of two references "
                  "trained with different seeds (run with seeds=)"),
    "l1": ("0 for exact methods; otherwise at most the distance between two references with "
           "different seeds"),
    "js": ("0 for exact methods; otherwise at most the divergence between two references with "
           "different seeds"),
    "param_l2": ("0 for exact methods (bitwise equal to retraining); else compare with two "
                 "references with different seeds"),
    "forget_seconds": "below the reference's (retraining from scratch); the ratio is the speed-up",
    "speedup": "above 1x = faster than retraining from scratch",
    "samples_retrained": "below the reference's (retraining touches every retained sample)",
    "sample_passes": "below the reference's (|D_r| x epochs)",
    "store_bytes": ("what the model keeps to forget fast (checkpoints, caches); the reference "
                    "keeps one model"),
    "fit_seconds": "one-off training cost; the reference column is one retraining",
    "precompute_seconds": ("paid once at fit time by approximate strategies; count it in when "
                           "requests are rare"),
}


# ============================================================================ options
@dataclass(frozen=True)
class _Options:
    attacks: tuple[str, ...]
    shadow_models: int
    shadow_epochs: int | None
    svc_max_samples: int | None
    cache_reference: bool


@dataclass
class _Run:
    seed: int
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


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, family: str) -> Any:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[family] = self.seconds.get(family, 0.0) + time.perf_counter() - started


def _check_attacks(attacks: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(attacks, str):
        if attacks == "all":
            return ATTACKS
        if attacks == "default":
            return DEFAULT_ATTACKS
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    chosen = list(dict.fromkeys(attacks))
    unknown = [a for a in chosen if a not in ATTACKS]
    if unknown:
        raise InvalidParameterError(
            f"unknown attack(s) {unknown}; choose from {', '.join(ATTACKS)}, or 'all'."
        )
    return tuple(a for a in ATTACKS if a in chosen)


def _check_int(value: Any, name: str, minimum: int, *, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidParameterError(
            f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}; "
            f"got {value!r}."
        )
    return int(value)


def _seed_of(strategy: UnlearningStrategy) -> int:
    seed = strategy.get_params().get("seed", 0)
    return int(seed) if isinstance(seed, (int, np.integer)) else 0


def _copy_with(strategy: UnlearningStrategy, **changes: Any) -> UnlearningStrategy:
    """A new, unfitted, in-memory, silent copy of ``strategy`` with ``changes``."""
    names = strategy.get_params()
    missing = [k for k in changes if k not in names]
    if missing:
        raise InvalidParameterError(
            f"{type(strategy).__name__} has no parameter(s) {missing}, which this evaluation "
            "needs to vary (seeds= and shadow models set 'seed'; shadow_epochs sets 'epochs')."
        )
    return strategy.clone().set_params(**changes, store=None, show_progress=False)


# ============================================================================ public
def evaluate(
    strategy: UnlearningStrategy,
    *,
    test: IndexedDataset,
    forget_ids: Iterable[int] | np.ndarray | torch.Tensor,
    train: IndexedDataset | None = None,
    reference: str | UnlearningStrategy | None = None,
    attacks: str | Sequence[str] = DEFAULT_ATTACKS,
    seeds: Sequence[int] | None = None,
    forget: bool = False,
    shadow_models: int = 8,
    shadow_epochs: int | None = None,
    svc_max_samples: int | None = 5000,
    cache_reference: bool = True,
    show_progress: bool = False,
) -> EvaluationReport:
    """Measure how well ``strategy`` forgot ``forget_ids``, next to a retrained reference.

    Args:
        strategy: a fitted strategy (or, with ``seeds``, a template to fit per seed).
        test: held-out data (``D_te``): test accuracy and the attacks' non-members.
        forget_ids: the ids to judge (``D_f``).
        train: the *original* training data, forget samples included. Needed when the
            strategy has already forgotten them (their inputs are gone from it) and for
            ``seeds``; otherwise ``strategy.training_data`` is used.
        reference: ``None`` (no gaps), ``"retrain"`` (Retrain with the same model and
            training settings on ``D_r``, cached in the strategy's store) or a strategy
            (fitted on ``D_r`` now if unfitted; a fitted one must not hold forget ids).
        attacks: names from ``ATTACKS`` or ``"all"``; default: the threshold attacks
            (loss, confidence, entropy, m_entropy), ``"svc"`` and ``"logistic"``. ``"lira"``
            and ``"ulira"`` train ``shadow_models`` shadow models (their cost is reported).
        seeds: rerun fit + forget + evaluation per seed and report mean ± std.
        forget: call ``strategy.forget(forget_ids)`` first (recorded in its ledger).
        shadow_models: N for LiRA / U-LiRA (>= 4; each sample is in exactly N/2 shadows).
        shadow_epochs: epochs for the shadows (default: the strategy's own). Fewer is
            cheaper but makes the shadows less like the model.
        svc_max_samples: cap on each side of the SVC attack's training set (``None`` = the
            papers' full sets; the RBF SVC costs ~n^2).
        cache_reference: store/load ``reference="retrain"`` in the strategy's store.
        show_progress: progress bars for shadow training.

    Returns:
        An :class:`EvaluationReport`.

    Cost: two forward passes over ``D_f``, ``D_r`` and ``D_te`` per model; one training run
    for the reference (none when cached); ``shadow_models`` fits on half of
    ``D_f + D_r + D_te`` for LiRA, plus as many ``forget`` requests for U-LiRA; per seed.

    Raises:
        InvalidParameterError: a bad argument (the message names it).
        InvalidRequestError: some forget ids are forgotten and others are not.
        UnknownSampleError: an id the strategy never trained on.
        NotFittedError: an unfitted strategy without ``seeds``.
    """
    if not isinstance(strategy, UnlearningStrategy):
        raise InvalidParameterError(
            f"strategy must be an expunge strategy (e.g. expunge.SISA(...)); got "
            f"{type(strategy).__name__}."
        )
    if not isinstance(test, IndexedDataset) or len(test) == 0:
        raise InvalidParameterError(
            "test must be a non-empty IndexedDataset (e.g. the second value of load_dataset)."
        )
    if train is not None and not isinstance(train, IndexedDataset):
        raise InvalidParameterError(
            f"train must be an IndexedDataset or None; got {type(train).__name__}."
        )
    ids = as_id_array(forget_ids, what="forget_ids")
    if ids.size == 0:
        raise InvalidRequestError("forget_ids is empty: pass at least one sample id.")
    if np.unique(ids).size != ids.size:
        raise InvalidRequestError("forget_ids contains duplicates; pass each id once.")
    ids = np.sort(ids)
    if not (reference is None or reference == "retrain"
            or isinstance(reference, UnlearningStrategy)):
        raise InvalidParameterError(
            f"reference must be None, 'retrain' or a strategy; got {reference!r}."
        )
    if not isinstance(forget, bool):
        raise InvalidParameterError(f"forget must be True or False; got {forget!r}.")
    fitted_on = train if train is not None else (
        strategy.training_data if strategy.is_fitted else None)
    if fitted_on is not None and fitted_on.input_shape != test.input_shape:
        raise InvalidParameterError(
            f"test inputs have shape {test.input_shape} but the strategy's training data has "
            f"shape {fitted_on.input_shape}: pass the test split of the same dataset."
        )
    chosen = _check_attacks(attacks)
    options = _Options(
        attacks=chosen,
        shadow_models=_check_int(shadow_models, "shadow_models", 4),
        shadow_epochs=_check_int(shadow_epochs, "shadow_epochs", 1, allow_none=True),
        svc_max_samples=_check_int(svc_max_samples, "svc_max_samples", 10, allow_none=True),
        cache_reference=bool(cache_reference),
    )
    timer = _Timer()
    progress = Progress(bool(show_progress))
    runs: list[_Run] = []
    with progress.running():
        if seeds is None:
            runs.append(_run_once(strategy, train, test, ids, reference, forget, None,
                                  _seed_of(strategy), options, timer, progress))
        else:
            seed_list = [_check_int(s, "each seed", 0) for s in seeds]
            if not seed_list:
                raise InvalidParameterError("seeds is empty; pass None or at least one seed.")
            data = train if train is not None else (
                strategy.training_data if strategy.is_fitted else None)
            if data is None:
                raise InvalidParameterError(
                    "seeds= refits the strategy: pass the original training data as train=."
                )
            for seed in seed_list:
                copy = _copy_with(strategy, seed=seed)
                with timer("fit + forget (seeds)"):
                    copy.fit(data)
                    report = copy.forget(ids)
                ref = (_copy_with(reference, seed=seed)
                       if isinstance(reference, UnlearningStrategy) else reference)
                runs.append(_run_once(copy, data, test, ids, ref, False, report, seed,
                                      options, timer, progress))
                copy.close()
    return _build_report(strategy, runs, test, ids, options, timer)


# ============================================================================ one run
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
    if not (torch.equal(a.y, b.y) and torch.equal(a.X, b.X)):
        raise DatasetError(
            "train= does not hold the same samples as the strategy's training data (labels or "
            "inputs differ for shared ids): pass the training data the strategy was fitted on."
        )


def _forget_cost(strategy: UnlearningStrategy, ids: np.ndarray,
                 report: ForgetReport | None) -> tuple[dict[str, Any] | None, list[str]]:
    """Seconds / samples retrained / passes of the request(s) that forgot ``ids``."""
    if report is not None:
        return report.to_dict(), []
    wanted = set(ids.tolist())
    entries = [e for e in strategy.ledger.entries("forget") if wanted & set(e.ids)]
    if not entries:
        return None, []
    covered = set().union(*(set(e.ids) for e in entries))
    notes = []
    if covered - wanted:
        notes.append(
            f"cost: the {len(entries)} request(s) that forgot these ids also forgot "
            f"{len(covered - wanted)} other id(s); their whole cost is reported."
        )
    return {
        "request_ids": [e.request_id for e in entries],
        "seconds": sum(e.seconds for e in entries),
        "samples_retrained": sum(e.samples_retrained for e in entries),
        "sample_passes": sum(e.sample_passes for e in entries),
    }, notes


def _subsample(ds: IndexedDataset, size: int | None, key: int) -> IndexedDataset:
    if size is None or len(ds) <= size:
        return ds
    return ds.select(ds.ids[np.sort(keyed_order(key, ds.ids)[:size])])


def _accuracy(p: np.ndarray, y: np.ndarray) -> float | None:
    return float(np.mean(p.argmax(axis=1) == y)) if y.size else None


def _gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else abs(a - b)


def _run_once(
    strategy: UnlearningStrategy, train: IndexedDataset | None, test: IndexedDataset,
    ids: np.ndarray, reference_arg: str | UnlearningStrategy | None, forget: bool,
    forget_report: ForgetReport | None, seed: int, options: _Options, timer: _Timer,
    progress: Progress,
) -> _Run:
    notes: list[str] = []
    data = strategy.training_data  # raises NotFittedError when unfitted
    present = data.contains(ids)
    if forget:
        forget_set = data.select(ids) if present.all() else None
        forget_report = strategy.forget(ids)  # raises, changing nothing, unless all present
        assert forget_set is not None
        status, retained = "forgotten by evaluate", strategy.training_data
    elif present.all():
        status = "not forgotten yet"
        forget_set, retained = data.select(ids), data.drop(ids)
        notes.append("status: the model still holds the forget set (not forgotten yet); the "
                     "numbers are a before-forgetting baseline.")
    elif not present.any():
        forgotten = np.isin(ids, strategy.forgotten_ids)
        if not forgotten.all():
            raise UnknownSampleError(
                f"Ids {ids[~forgotten][:10].tolist()} were never in this strategy's training "
                "data (neither retained nor forgotten); check forget_ids."
            )
        status = "forgotten" if forget_report is None else "forgotten by evaluate"
        forget_set, retained = _select_from_train(train, ids), data
    else:
        raise InvalidRequestError(
            f"Ids {ids[present][:10].tolist()} are still in the training data but "
            f"{ids[~present][:10].tolist()} were already forgotten; evaluate one state at a "
            "time: forget the rest first, or pass only one group."
        )
    _check_train_matches(train, data, retained.ids, seed)
    if train is not None and present.all():
        _check_train_matches(train, forget_set, ids, seed)
    store_bytes = store_bytes_excluding_cache(strategy.store_)

    retained_y = retained.y.numpy()
    forget_classes = np.unique(forget_set.y.numpy())
    removed_class = (int(forget_classes[0]) if forget_classes.size == 1
                     and not (retained_y == forget_classes[0]).any() else None)

    # ------------------------------------------------------------- reference
    ref: Reference | None = None
    with timer("reference"):
        if reference_arg == "retrain":
            ref = retrain_reference(strategy, retained, cache=options.cache_reference)
        elif isinstance(reference_arg, UnlearningStrategy):
            ref = strategy_reference(reference_arg, retained, ids)

    # ----------------------------------------------------------- predictions
    model = model_view(strategy)
    splits = {"forget": forget_set, "retain": retained, "test": test}
    labels = {k: v.y.numpy() for k, v in splits.items()}
    with timer("predictions"):
        P = {"model": {k: model.predict_proba(v.X).detach().double().numpy()
                       for k, v in splits.items()}}
        if ref is not None:
            P["reference"] = {k: ref.view.predict_proba(v.X).detach().double().numpy()
                              for k, v in splits.items()}
    if any((p == 0).any() for side in P.values() for p in side.values()):
        notes.append(f"some probabilities are exactly 0 (e.g. SISA's vote shares): losses and "
                     f"m-entropy clip them at {LOSS_EPS:g}.")
    sides = list(P)

    rows: list[MetricRow] = []

    def row(key: str, section: str, name: str, values: Mapping[str, float | None],
            kind: str, good: str, gap: bool = True, single: bool = False) -> None:
        m, r = values.get("model"), values.get("reference")
        rows.append(MetricRow(key=key, section=section, name=name, model=m, reference=r,
                              gap=_gap(m, r) if gap else None, kind=kind, good=good,
                              single=single))

    # -------------------------------------------------------------- accuracy
    with timer("accuracy"):
        acc = {s: {k: _accuracy(P[s][k], labels[k]) for k in splits} for s in sides}
        ua: dict[str, float | None] = {}
        for s in sides:
            forget_acc = acc[s]["forget"]
            ua[s] = None if forget_acc is None else 1.0 - forget_acc
        row("UA", "Accuracy", "UA (1 - forget accuracy)", ua, "percent", GOOD["UA"])
        row("RA", "Accuracy", "RA (retain accuracy)", {s: acc[s]["retain"] for s in sides},
            "percent", GOOD["RA"])
        row("TA", "Accuracy", "TA (test accuracy)", {s: acc[s]["test"] for s in sides},
            "percent", GOOD["TA"])
        per_class = {}
        for s in sides:
            predictions = P[s]["test"].argmax(axis=1)
            per_class[s] = [
                float(np.mean(predictions[labels["test"] == c] == c))
                if (labels["test"] == c).any() else None for c in range(test.n_classes)
            ]
        if removed_class is not None:
            mask = labels["test"] == removed_class
            row("removed_class_TA", "Accuracy", f"TA on the removed class {removed_class}",
                {s: _accuracy(P[s]["test"][mask], labels["test"][mask]) for s in sides},
                "percent", GOOD["removed_class_TA"])
            row("other_classes_TA", "Accuracy", "TA on the other classes",
                {s: _accuracy(P[s]["test"][~mask], labels["test"][~mask]) for s in sides},
                "percent", GOOD["other_classes_TA"])

    # --------------------------------------------------------------- attacks
    features: dict[tuple[str, str, str], np.ndarray] = {}

    def feature(name: str, side: str, split: str) -> np.ndarray:
        if (name, side, split) not in features:
            function = FEATURES[name][0]
            features[(name, side, split)] = function(P[side][split], labels[split])
        return features[(name, side, split)]

    roc: dict[str, Any] = {}
    mia = "Membership inference"

    def membership_rows(key: str, title: str, result: dict[str, MembershipMetrics],
                        power: dict[str, float]) -> None:
        values = {s: result[s] for s in result}
        row(f"mia.{key}.auc", mia, f"{title}: AUC (forget vs test)",
            {s: v.auc for s, v in values.items()}, "score", _GOOD_MIA_AUC)
        row(f"mia.{key}.best_bacc", mia, f"{title}: best balanced accuracy",
            {s: v.best_balanced_accuracy for s, v in values.items()}, "score", _GOOD_BACC)
        row(f"mia.{key}.tpr_at_1pct", mia, f"{title}: TPR @ 1% FPR",
            {s: v.tpr_at_1pct_fpr for s, v in values.items()}, "score", _GOOD_TPR1)
        row(f"mia.{key}.tpr_at_0.1pct", mia, f"{title}: TPR @ 0.1% FPR",
            {s: v.tpr_at_01pct_fpr for s, v in values.items()}, "score", _GOOD_TPR01)
        if power:
            row(f"mia.{key}.power_auc", mia, f"{title}: AUC (retain vs test, attack power)",
                power, "score", _GOOD_POWER, gap=False)
        roc[key] = {"title": f"{title} (forget vs test)", **{
            s: {"fpr": v.roc_fpr, "tpr": v.roc_tpr} for s, v in values.items()}}

    tpr_na = [t for t, need in (("1%", 100), ("0.1%", 1000)) if len(test) < need]
    if tpr_na and any(a in options.attacks for a in (*THRESHOLD_ATTACKS, "lira")):
        notes.append(f"TPR @ {' and '.join(tpr_na)} FPR: n/a, the test set has only "
                     f"{len(test)} non-members (need 100 for 1%, 1000 for 0.1%).")

    for name in THRESHOLD_ATTACKS:
        if name not in options.attacks:
            continue
        with timer(f"mia: {name} threshold"):
            result = {s: threshold_attack(name, feature(name, s, "forget"),
                                          feature(name, s, "test")) for s in sides}
            power = {s: threshold_attack(name, feature(name, s, "retain"),
                                         feature(name, s, "test")).auc for s in sides}
            membership_rows(name, f"{_FEATURE_TITLES[name]} threshold", result, power)

    efficacy: dict[str, float | None] = {}
    if "svc" in options.attacks:
        with timer("mia: svc"):
            cap = options.svc_max_samples
            n_side = min(len(retained), len(test), cap) if cap else min(len(retained), len(test))
            members = _subsample(retained, n_side, derive_key(seed, "svc", "retain"))
            nonmembers = _subsample(test, n_side, derive_key(seed, "svc", "test"))
            m_pos, n_pos = retained.positions(members.ids), test.positions(nonmembers.ids)
            for s in sides:
                efficacy[s] = svc_mia_efficacy(
                    confidence(P[s]["retain"][m_pos], labels["retain"][m_pos]),
                    confidence(P[s]["test"][n_pos], labels["test"][n_pos]),
                    confidence(P[s]["forget"], labels["forget"]),
                )
            row("mia.svc.efficacy", mia, "MIA-Efficacy (SVC on confidence)", efficacy,
                "percent", GOOD["svc"])
            notes.append(f"MIA-Efficacy: SVC(C=3, rbf, gamma='auto') trained on {n_side} "
                         f"retained vs {n_side} test samples (keyed subsets).")

    if "logistic" in options.attacks:
        with timer("mia: logistic"):
            if min(len(forget_set), len(test)) < MIN_PER_CLASS:
                notes.append(f"logistic attack: n/a, needs at least {MIN_PER_CLASS} forget and "
                             "test samples.")
                row("mia.logistic.accuracy", mia, "Logistic on loss (kit): CV accuracy",
                    {}, "score", GOOD["logistic.accuracy"])
            else:
                results = {s: logistic_loss_attack(
                    feature("loss", s, "forget"), feature("loss", s, "test"),
                    member_ids=forget_set.ids, nonmember_ids=test.ids, seed=seed,
                ) for s in sides}
                row("mia.logistic.accuracy", mia, "Logistic on loss (kit): CV accuracy",
                    {s: r.accuracy for s, r in results.items()}, "score",
                    GOOD["logistic.accuracy"])
                row("mia.logistic.auc", mia, "Logistic on loss (kit): CV AUC",
                    {s: r.auc for s, r in results.items()}, "score", GOOD["logistic.auc"])
                n = next(iter(results.values())).n_per_class
                notes.append(f"logistic attack: {n} forget vs {n} test losses (balanced), "
                             "StratifiedShuffleSplit(n_splits=10, random_state=0).")

    if any(a in options.attacks for a in SHADOW_ATTACKS):
        _shadow_attacks(strategy, retained, forget_set, test, ids, P, sides, seed, options,
                        timer, progress, row, membership_rows, notes, roc)

    # avg gap (SalUn's): UA, MIA-Efficacy, RA, TA
    if ref is not None:
        parts = [r.gap for r in rows if r.key in ("UA", "RA", "TA", "mia.svc.efficacy")]
        used = "UA, RA, TA" + (", MIA-Efficacy" if "mia.svc.efficacy" in
                               [r.key for r in rows] else "")
        present_parts = [p for p in parts if p is not None]
        rows.insert(
            [r.section for r in rows].count("Accuracy"),
            MetricRow(key="avg_gap", section="Accuracy", name=f"Avg. Gap ({used})",
                      model=float(np.mean(present_parts)) if present_parts else None,
                      kind="percent", good=GOOD["avg_gap"], single=True),
        )

    # ------------------------------------------------------------- distances
    if ref is not None:
        with timer("distances"):
            dist = "Distance to reference"
            for split in splits:
                p, q = P["model"][split], P["reference"][split]
                if p.shape[0] == 0:
                    continue
                rows.append(MetricRow(f"dist.agreement.{split}", dist,
                                      f"prediction agreement ({split})",
                                      prediction_agreement(p, q), kind="percent",
                                      good=GOOD["agreement"], single=True))
                rows.append(MetricRow(f"dist.l1.{split}", dist, f"mean L1 of softmax ({split})",
                                      mean_l1_distance(p, q), kind="distance", good=GOOD["l1"],
                                      single=True))
                rows.append(MetricRow(f"dist.js.{split}", dist, f"JS divergence ({split})",
                                      js_divergence(p, q), kind="distance", good=GOOD["js"],
                                      single=True))
            l2, why = parameter_l2(model.module, ref.view.module)
            rows.append(MetricRow("dist.param_l2", dist, "parameter L2 distance", l2,
                                  kind="distance", good=GOOD["param_l2"], single=True))
            if why:
                notes.append(f"parameter L2 distance {why}.")

    # ------------------------------------------------------------------ cost
    with timer("cost"):
        cost, cost_notes = _forget_cost(strategy, ids, forget_report)
        notes += cost_notes
        section = "Cost"
        fit_entry = strategy.ledger.entries("fit")[0]
        ref_seconds = ref.seconds if ref is not None else None
        model_seconds = None if cost is None else float(cost["seconds"])
        rows.append(MetricRow("cost.forget_seconds", section, "forget seconds (reference: "
                              "retrain from scratch)", model_seconds, ref_seconds,
                              kind="seconds", good=GOOD["forget_seconds"]))
        rows.append(MetricRow(
            "cost.speedup", section, "speed-up over retraining",
            ref_seconds / model_seconds if ref_seconds and model_seconds else None,
            kind="ratio", good=GOOD["speedup"], single=True))
        rows.append(MetricRow("cost.samples_retrained", section, "samples retrained",
                              None if cost is None else float(cost["samples_retrained"]),
                              None if ref is None else float(ref.samples_retrained),
                              kind="count", good=GOOD["samples_retrained"]))
        rows.append(MetricRow("cost.sample_passes", section, "sample passes (samples x epochs)",
                              None if cost is None else float(cost["sample_passes"]),
                              None if ref is None else float(ref.sample_passes),
                              kind="count", good=GOOD["sample_passes"]))
        rows.append(MetricRow("cost.store_bytes", section, "store bytes (cache excluded)",
                              float(store_bytes),
                              None if ref is None or ref.store_bytes is None
                              else float(ref.store_bytes), kind="bytes",
                              good=GOOD["store_bytes"]))
        rows.append(MetricRow("cost.fit_seconds", section, "fit seconds", fit_entry.seconds,
                              ref_seconds, kind="seconds", good=GOOD["fit_seconds"]))
        # where a strategy records its one-off precompute: the fit's ledger details, or
        # the fitted model's info (PUMA keeps it there, carried across requests)
        precompute = fit_entry.details.get("precompute_seconds")
        if precompute is None:
            precompute = strategy.fitted_.info.get("precompute_seconds")
        if precompute is not None or strategy.guarantee == "approximate":
            rows.append(MetricRow("cost.precompute_seconds", section,
                                  "precompute seconds (at fit)",
                                  None if precompute is None else float(precompute),
                                  kind="seconds", good=GOOD["precompute_seconds"],
                                  single=True))
        if cost is None:
            notes.append("cost: n/a, the model has not forgotten the ids (no forget request "
                         "covers them).")

    # ---------------------------------------------------------------- curves
    log_losses = {(s, split): np.log10(np.maximum(feature("loss", s, split), 1e-30))
                  for s in sides for split in ("forget", "test")}
    everything = np.concatenate([v for v in log_losses.values() if v.size])
    low, high = np.floor(everything.min()), np.ceil(everything.max())
    edges = np.linspace(low, max(high, low + 1.0), 41)
    loss_hist: dict[str, Any] = {"edges": edges.tolist()}
    for s in sides:
        loss_hist[s] = {split: np.histogram(log_losses[(s, split)], bins=edges)[0].tolist()
                        for split in ("forget", "test")}
    curves = {
        "loss_hist": loss_hist,
        "roc": roc,
        "per_class": {"classes": list(range(test.n_classes)), **per_class},
    }
    return _Run(
        seed=seed, status=status, fingerprint=strategy.fingerprint(), rows=rows,
        n_forget=len(forget_set), n_retain=len(retained), removed_class=removed_class,
        reference=None if ref is None else ref.description,
        forget_report=cost, curves=curves, notes=notes,
    )


def _pool(retained: IndexedDataset, forget_set: IndexedDataset,
          test: IndexedDataset) -> tuple[IndexedDataset, IndexedDataset]:
    """``D_r + D_f + D_te`` with test ids moved out of the way if they collide."""
    full = IndexedDataset.concat([retained, forget_set])
    test_pool = test
    if np.isin(test.ids, full.ids).any():
        offset = int(max(full.ids.max(), test.ids.max())) + 1
        test_pool = IndexedDataset(test.X, test.y, offset + np.arange(len(test), dtype=np.int64),
                                   n_classes=test.n_classes)
    n_classes = max(full.n_classes, test.n_classes)
    full = IndexedDataset(full.X, full.y, full.ids, n_classes=n_classes)
    test_pool = IndexedDataset(test_pool.X, test_pool.y, test_pool.ids, n_classes=n_classes)
    return IndexedDataset.concat([full, test_pool]), test_pool


def _shadow_attacks(
    strategy: UnlearningStrategy, retained: IndexedDataset, forget_set: IndexedDataset,
    test: IndexedDataset, ids: np.ndarray, P: dict[str, dict[str, np.ndarray]],
    sides: list[str], seed: int, options: _Options, timer: _Timer, progress: Progress,
    row: Any, membership_rows: Any, notes: list[str], roc: dict[str, Any],
) -> None:
    """LiRA (forget vs test, and retain vs test for power) and U-LiRA on the forget set."""
    pool, test_pool = _pool(retained, forget_set, test)
    retain_targets = _subsample(retained, len(test), derive_key(seed, "lira", "retain"))
    targets = IndexedDataset.concat([
        IndexedDataset(d.X, d.y, d.ids, n_classes=pool.n_classes)
        for d in (forget_set, test_pool, retain_targets)])
    n_f, n_t = len(forget_set), len(test_pool)
    seg_f, seg_t, seg_r = slice(0, n_f), slice(n_f, n_f + n_t), slice(n_f + n_t, None)
    changes = {} if options.shadow_epochs is None else {"epochs": options.shadow_epochs}

    def make_shadow(k: int) -> UnlearningStrategy:
        return _copy_with(strategy, seed=derive_key(seed, "lira-shadow-seed", k) >> 2, **changes)

    with_ulira = "ulira" in options.attacks
    mia = "Membership inference"
    with timer("shadow models (LiRA/U-LiRA)"):
        shadows = train_shadows(make_shadow, pool, targets, n_shadows=options.shadow_models,
                                seed=seed, forget_ids=ids if with_ulira else None,
                                progress=progress)
    r_pos = retained.positions(retain_targets.ids)
    phi = {s: np.concatenate([
        logit_scaled_confidence(P[s]["forget"], forget_set.y.numpy()),
        logit_scaled_confidence(P[s]["test"], test.y.numpy()),
        logit_scaled_confidence(P[s]["retain"][r_pos], retain_targets.y.numpy()),
    ]) for s in sides}
    epochs = ("the same epochs" if options.shadow_epochs is None
              else f"{options.shadow_epochs} epochs")
    notes.append(
        f"LiRA/U-LiRA: {shadows.n_shadows} shadow {strategy.name} models, each fitted on "
        f"~{shadows.shadow_size:.0f} samples (half of D_f + D_r + D_te) with {epochs};"
        f" fit {shadows.fit_seconds:.1f} s"
        + (f", forget {shadows.forget_seconds:.1f} s" if with_ulira else "") + " in all."
    )
    if "lira" in options.attacks:
        with timer("mia: lira"):
            is_member = np.concatenate([np.ones(n_f, bool), np.zeros(n_t, bool)])
            result, power = {}, {}
            for s in sides:
                scores = likelihood_ratio_scores(phi[s], shadows.phi_fit, shadows.membership)
                result[s] = membership_metrics(
                    np.concatenate([scores[seg_f], scores[seg_t]]), is_member)
                power[s] = membership_metrics(
                    np.concatenate([scores[seg_r], scores[seg_t]]),
                    np.concatenate([np.ones(len(retain_targets), bool), np.zeros(n_t, bool)]),
                ).auc
            membership_rows("lira", f"LiRA ({shadows.n_shadows} shadows)", result, power)
    if with_ulira:
        with timer("mia: ulira"):
            assert shadows.phi_forgotten is not None
            after, unlearned = shadows.phi_forgotten[:, seg_f], shadows.forgotten[:, seg_f]
            scores, is_unlearned = ulira_leave_one_out(after, unlearned)
            held_out = membership_metrics(scores, is_unlearned)
            name = f"U-LiRA ({shadows.n_shadows} shadows)"
            single = {"gap": False, "single": True}
            row("mia.ulira.auc", mia, f"{name}: AUC, unlearned vs retrained shadows",
                {"model": held_out.auc}, "score", GOOD["ulira.auc"], **single)
            row("mia.ulira.accuracy", mia, f"{name}: accuracy at ratio 1",
                {"model": float(np.mean((scores > 0) == is_unlearned))}, "score",
                GOOD["ulira.accuracy"], **single)
            row("mia.ulira.tpr_at_1pct", mia, f"{name}: TPR @ 1% FPR",
                {"model": held_out.tpr_at_1pct_fpr}, "score", _GOOD_TPR1, **single)
            row("mia.ulira.tpr_at_0.1pct", mia, f"{name}: TPR @ 0.1% FPR",
                {"model": held_out.tpr_at_01pct_fpr}, "score", _GOOD_TPR01, **single)
            roc["ulira"] = {"title": f"{name}: unlearned vs retrained shadows",
                            "model": {"fpr": held_out.roc_fpr, "tpr": held_out.roc_tpr}}


# ============================================================================ report
def _build_report(strategy: UnlearningStrategy, runs: list[_Run], test: IndexedDataset,
                  ids: np.ndarray, options: _Options, timer: _Timer) -> EvaluationReport:
    import sklearn

    first = runs[0]
    notes = list(dict.fromkeys(n for run in runs for n in run.notes))
    return EvaluationReport(
        strategy=strategy.name,
        guarantee=strategy.guarantee,
        params=strategy.recorded_params(),
        fingerprint=first.fingerprint,
        status=first.status,
        n_forget=first.n_forget,
        n_retain=first.n_retain,
        n_test=len(test),
        forget_ids_sha256=sha256_ids(ids),
        removed_class=first.removed_class,
        reference=first.reference,
        attacks=list(options.attacks),
        seeds=[run.seed for run in runs],
        metrics=aggregate_rows([run.rows for run in runs]),
        runs=[{
            "seed": run.seed, "status": run.status, "fingerprint": run.fingerprint,
            "forget_report": run.forget_report, "reference": run.reference,
            "metrics": [r.__dict__ for r in run.rows],
        } for run in runs],
        timings={k: round(v, 6) for k, v in timer.seconds.items()},
        curves=first.curves,
        notes=notes,
        versions={"expunge": __version__, "torch": torch.__version__,
                  "scikit-learn": sklearn.__version__},
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


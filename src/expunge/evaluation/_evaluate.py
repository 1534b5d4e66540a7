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
* ``seeds=`` treats ``strategy`` as a template: per training seed a fresh copy is fitted on
  ``train``, forgets ``forget_ids`` (per unlearning seed, when given) and is evaluated
  against a reference with the same training seed; the report gives mean ± std and a 95 %
  confidence interval over training seeds.

Splits: ``D_f`` = the forget samples, ``D_r`` = the strategy's training data without them
(= what it retains), ``D_te`` = ``test``. The metric families live in ``_families/``; their
definitions and sources are in ``docs/evaluation.md`` and ALGORITHMS.md section 5.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from expunge._hashing import sha256_ids
from expunge._progress import Progress
from expunge._version import __version__
from expunge.data import IndexedDataset, as_id_array
from expunge.evaluation._cache import EvaluationCache
from expunge.evaluation._families._context import Options, Timer
from expunge.evaluation._families.across_runs import klom_rows
from expunge.evaluation._families.membership import THRESHOLD_ATTACKS
from expunge.evaluation._families.representation import CHECKS
from expunge.evaluation._reference import copy_with
from expunge.evaluation._report import EvaluationReport, MetricRow, aggregate_rows
from expunge.evaluation._run import Run, run_once
from expunge.exceptions import InvalidParameterError, InvalidRequestError
from expunge.strategies.base import UnlearningStrategy

ATTACKS = (*THRESHOLD_ATTACKS, "svc", "logistic", "lira", "ulira", "rmia", "klom")
#: the population attacks; the others train shadow models or need several runs: opt-in
DEFAULT_ATTACKS = (*THRESHOLD_ATTACKS, "svc", "logistic")

Seeds = Sequence[int] | Sequence[tuple[int, int]] | Mapping[str, Sequence[int]]


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


def _check_checks(checks: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(checks, str):
        checks = CHECKS if checks == "all" else [c.strip() for c in checks.split(",")
                                                 if c.strip()]
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise InvalidParameterError(
            f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}, or 'all'."
        )
    return tuple(c for c in CHECKS if c in checks)


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


def _seed_pairs(seeds: Seeds) -> list[tuple[int, int | None]]:
    """(training seed, unlearning seed or None) per run, from the forms ``seeds`` takes."""
    if isinstance(seeds, Mapping):
        unknown = sorted(set(seeds) - {"train", "unlearn"})
        if unknown or "train" not in seeds:
            raise InvalidParameterError(
                f"seeds as a mapping takes 'train' (and optionally 'unlearn') lists; got keys "
                f"{sorted(seeds)}. Example: seeds={{'train': [0, 1, 2], 'unlearn': [0, 1]}}."
            )
        train = [_check_int(s, "each training seed", 0) for s in seeds["train"]]
        unlearn = [_check_int(s, "each unlearning seed", 0) for s in seeds.get("unlearn", [])]
        pairs = [(t, u) for t in train for u in (unlearn or [None])]
    else:
        pairs = []
        for item in seeds:
            if isinstance(item, (tuple, list)) and len(item) == 2:
                pairs.append((_check_int(item[0], "each training seed", 0),
                              _check_int(item[1], "each unlearning seed", 0)))
            else:
                pairs.append((_check_int(item, "each seed", 0), None))
    if not pairs:
        raise InvalidParameterError("seeds is empty; pass None or at least one seed.")
    return pairs


def _reopen_overrides(strategy: UnlearningStrategy) -> dict[str, Any]:
    """Parameters a manifest cannot hold (callables, modules): passed again on reopen."""
    return {k: v for k, v in strategy.get_params().items() if callable(v)}


def _seeded_runs(strategy: UnlearningStrategy, data: IndexedDataset, test: IndexedDataset,
                 ids: np.ndarray, reference: str | UnlearningStrategy | None,
                 pairs: list[tuple[int, int | None]], options: Options, timer: Timer,
                 progress: Progress) -> list[Run]:
    """Fit once per training seed, forget once per unlearning seed, evaluate each."""
    import expunge

    if any(u is not None for _, u in pairs) and "unlearn_seed" not in strategy.get_params():
        raise InvalidParameterError(
            f"{type(strategy).__name__} has no unlearning randomness (no 'unlearn_seed' "
            "parameter): its forget is a function of the fitted model and the ids. Pass only "
            "training seeds, e.g. seeds=[0, 1, 2]."
        )
    runs = []
    by_train: dict[int, list[int | None]] = {}
    for t, u in pairs:
        by_train.setdefault(t, []).append(u)
    for t, unlearn_seeds in by_train.items():
        ref = (copy_with(reference, seed=t) if isinstance(reference, UnlearningStrategy)
               else reference)
        with tempfile.TemporaryDirectory(prefix="expunge-eval-") as tmp:
            fitted_dir = Path(tmp) / "fit"
            if len(unlearn_seeds) > 1:  # fit once, then one copy per unlearning seed
                with timer("fit + forget (seeds)"):
                    fitted = copy_with(strategy, seed=t)
                    fitted.store = fitted_dir
                    fitted.fit(data)
                    fitted.close()
            for k, u in enumerate(unlearn_seeds):
                change = {} if u is None else {"unlearn_seed": u}
                with timer("fit + forget (seeds)"):
                    if len(unlearn_seeds) > 1:
                        path = Path(tmp) / f"unlearn-{k}"
                        shutil.copytree(fitted_dir, path)
                        copy = expunge.open(path, **_reopen_overrides(strategy), **change)
                    else:
                        copy = copy_with(strategy, seed=t, **change)
                        copy.fit(data)
                    report = copy.forget(ids)
                runs.append(run_once(copy, data, test, ids, ref, False, report, t, options,
                                     timer, progress, unlearn_seed=u))
                copy.close()
    return runs


# ============================================================================ public
def evaluate(
    strategy: UnlearningStrategy,
    *,
    test: IndexedDataset,
    forget_ids: Iterable[int] | np.ndarray | torch.Tensor,
    train: IndexedDataset | None = None,
    reference: str | UnlearningStrategy | None = None,
    attacks: str | Sequence[str] = DEFAULT_ATTACKS,
    checks: str | Sequence[str] = (),
    seeds: Seeds | None = None,
    forget: bool = False,
    shadow_models: int = 8,
    shadow_epochs: int | None = None,
    svc_max_samples: int | None = 5000,
    cache_reference: bool = True,
    cache: EvaluationCache | None = None,
    shadow_recipe: str = "strategy",
    show_progress: bool = False,
) -> EvaluationReport:
    """Measure how well ``strategy`` forgot ``forget_ids``, next to a retrained reference.

    Args:
        strategy: a fitted strategy (or, with ``seeds``, a template to fit per seed).
        test: held-out data (``D_te``): test accuracy, the attacks' non-members, RMIA's
            population and the linear probe's training data.
        forget_ids: the ids to judge (``D_f``).
        train: the *original* training data, forget samples included. Needed when the
            strategy has already forgotten them (their inputs are gone from it) and for
            ``seeds``; otherwise ``strategy.training_data`` is used.
        reference: ``None`` (no gaps), ``"retrain"`` (Retrain with the same model and
            training settings on ``D_r``, cached in the strategy's store) or a strategy
            (fitted on ``D_r`` now if unfitted; a fitted one must not hold forget ids).
        attacks: names from ``ATTACKS``, ``"default"`` or ``"all"``; default: the threshold
            attacks (loss, confidence, entropy, m_entropy), ``"svc"`` and ``"logistic"``.
            ``"lira"``, ``"ulira"`` and ``"rmia"`` share ``shadow_models`` shadow models
            (their cost is reported); ``"klom"`` compares the runs' unlearned models with
            their retrained references (use it with ``seeds``).
        checks: ``"probe"`` (linear probe on hidden features), ``"relearn"`` (steps to
            relearn ``D_f``), or ``"all"``.
        seeds: rerun fit + forget + evaluation per seed. ``[0, 1, 2]``: training seeds;
            ``{"train": [0, 1, 2], "unlearn": [0, 1]}``: every pair, fitting once per
            training seed and forgetting once per unlearning seed (strategies with an
            ``unlearn_seed`` parameter); or explicit ``[(train, unlearn), ...]`` pairs.
            Rows then hold the mean, the standard deviation over runs and a 95 % t-interval
            over training seeds (unlearning seeds averaged within each).
        forget: call ``strategy.forget(forget_ids)`` first (recorded in its ledger).
        shadow_models: N for LiRA / U-LiRA / RMIA (>= 4; each sample is in N/2 shadows).
        shadow_epochs: epochs for the shadows (default: the strategy's own).
        svc_max_samples: cap on each side of the SVC attack's training set (``None`` = the
            papers' full sets; the RBF SVC costs ~n^2).
        cache_reference: store/load ``reference="retrain"`` in the strategy's store.
        cache: an :class:`EvaluationCache` shared with other calls: retrained references
            and shadow models with the same recipe, seed and data are trained once.
        shadow_recipe: ``"strategy"`` (shadows are copies of the evaluated strategy; for
            strategies that fit as Retrain does, Retrain) or ``"retrain"`` (Retrain with
            the shared training parameters for every strategy, so one set of reference
            models attacks every method; U-LiRA always uses the strategy's own).
        show_progress: progress bars for shadow training.

    Returns:
        An :class:`EvaluationReport`.

    Cost: two forward passes over ``D_f``, ``D_r`` and ``D_te`` per model; one training run
    for the reference (none when cached); ``shadow_models`` fits on half of
    ``D_f + D_r + D_te`` for LiRA/RMIA (none when cached), plus as many ``forget``
    requests for U-LiRA; a probe fit and up to 200 SGD steps per model for the checks;
    per run.

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
    if shadow_recipe not in ("strategy", "retrain"):
        raise InvalidParameterError(
            f"shadow_recipe must be 'strategy' or 'retrain'; got {shadow_recipe!r}.")
    if cache is not None and not isinstance(cache, EvaluationCache):
        raise InvalidParameterError(
            f"cache must be an expunge.evaluation.EvaluationCache or None; got "
            f"{type(cache).__name__}."
        )
    fitted_on = train if train is not None else (
        strategy.training_data if strategy.is_fitted else None)
    if fitted_on is not None and fitted_on.input_shape != test.input_shape:
        raise InvalidParameterError(
            f"test inputs have shape {test.input_shape} but the strategy's training data has "
            f"shape {fitted_on.input_shape}: pass the test split of the same dataset."
        )
    pairs = None if seeds is None else _seed_pairs(seeds)
    options = Options(
        attacks=_check_attacks(attacks), checks=_check_checks(checks),
        shadow_models=_check_int(shadow_models, "shadow_models", 4),
        shadow_epochs=_check_int(shadow_epochs, "shadow_epochs", 1, allow_none=True),
        svc_max_samples=_check_int(svc_max_samples, "svc_max_samples", 10, allow_none=True),
        cache_reference=bool(cache_reference),
        # runs of one evaluation share references and shadows even without a given cache
        cache=cache if cache is not None else (EvaluationCache() if pairs else None),
        shadow_recipe=shadow_recipe,
    )
    timer = Timer()
    progress = Progress(bool(show_progress))
    with progress.running():
        if pairs is None:
            runs = [run_once(strategy, train, test, ids, reference, forget, None,
                             _seed_of(strategy), options, timer, progress)]
        else:
            data = train if train is not None else fitted_on
            if data is None:
                raise InvalidParameterError(
                    "seeds= refits the strategy: pass the original training data as train=."
                )
            runs = _seeded_runs(strategy, data, test, ids, reference, pairs, options, timer,
                                progress)
    return _build_report(strategy, runs, test, ids, options, timer)


# ============================================================================ report
def _margins_to_json(margins: dict[str, Any]) -> dict[str, Any]:
    return {split: {k: np.asarray(v).tolist() for k, v in values.items()}
            for split, values in margins.items()}


def _margins_from_json(margins: dict[str, Any]) -> dict[str, Any]:
    return {split: {k: np.asarray(v, dtype=np.int64 if k == "ids" else np.float64)
                    for k, v in values.items()} for split, values in margins.items()}


def _build_report(strategy: UnlearningStrategy, runs: list[Run], test: IndexedDataset,
                  ids: np.ndarray, options: Options, timer: Timer) -> EvaluationReport:
    import sklearn

    first = runs[0]
    metrics, notes = _aggregate(runs, "klom" in options.attacks, timer)
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
        unlearn_seeds=[run.unlearn_seed for run in runs],
        checks=list(options.checks),
        metrics=metrics,
        runs=[{
            "seed": run.seed, "unlearn_seed": run.unlearn_seed, "status": run.status,
            "fingerprint": run.fingerprint, "forget_report": run.forget_report,
            "reference": run.reference, "metrics": [r.__dict__ for r in run.rows],
            "notes": run.notes, "n_forget": run.n_forget, "n_retain": run.n_retain,
            **({"margins": _margins_to_json(run.margins)} if run.margins else {}),
        } for run in runs],
        timings={k: round(v, 6) for k, v in timer.seconds.items()},
        curves=first.curves,
        notes=notes,
        versions={"expunge": __version__, "torch": torch.__version__,
                  "scikit-learn": sklearn.__version__},
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _aggregate(runs: list[Run], with_klom: bool, timer: Timer
               ) -> tuple[list[MetricRow], list[str]]:
    """Rows over runs (mean, std, 95 % CI over training seeds) and the across-run rows."""
    notes = list(dict.fromkeys(n for run in runs for n in run.notes))
    metrics = aggregate_rows([run.rows for run in runs], groups=[run.seed for run in runs])
    if with_klom:
        with timer("klom"):
            metrics += klom_rows([run.margins for run in runs], notes)
    if len(runs) > 1:
        n_train = len({run.seed for run in runs})
        notes.append(
            f"intervals: mean ± standard deviation over {len(runs)} runs; 95% CI = "
            + (f"t-interval over {n_train} training seeds (unlearning seeds averaged within "
               "each)" if n_train > 1 else "t-interval over the unlearning seeds of one "
               "training seed (it does not cover training-seed variation)") + ".")
    return metrics, notes


def combine_reports(reports: Sequence[EvaluationReport]) -> EvaluationReport:
    """One report from single-run reports of the same strategy and forget set.

    For benchmarks that fit each model once and evaluate it on several forget sets: run
    :func:`evaluate` once per (training seed, unlearning seed) and combine. Rows get the
    mean, std and 95 % CI over training seeds as with ``seeds=``; KLoM (when the runs had
    the ``"klom"`` attack) compares all runs' unlearned models with their references.

    Raises:
        InvalidParameterError: no reports, or reports of different strategies, forget sets
            or test sets.
    """
    if not reports:
        raise InvalidParameterError("combine_reports needs at least one report.")
    first = reports[0]
    for report in reports[1:]:
        if (report.strategy, report.forget_ids_sha256, report.n_test) != (
                first.strategy, first.forget_ids_sha256, first.n_test):
            raise InvalidParameterError(
                "combine_reports combines runs of one strategy on one forget set and test "
                f"set; got {report.strategy!r} (forget ids {report.forget_ids_sha256[:12]}) "
                f"with {first.strategy!r} (forget ids {first.forget_ids_sha256[:12]})."
            )
    runs = [Run(
        seed=int(r["seed"]), unlearn_seed=r.get("unlearn_seed"), status=r["status"],
        fingerprint=r["fingerprint"], rows=[MetricRow(**row) for row in r["metrics"]],
        n_forget=int(r.get("n_forget", first.n_forget)),
        n_retain=int(r.get("n_retain", first.n_retain)),
        removed_class=first.removed_class, reference=r.get("reference"),
        forget_report=r.get("forget_report"), notes=list(r.get("notes", [])),
        margins=_margins_from_json(r["margins"]) if r.get("margins") else {},
    ) for report in reports for r in report.runs]
    timer = Timer()
    for report in reports:
        for family, seconds in report.timings.items():
            timer.seconds[family] = timer.seconds.get(family, 0.0) + seconds
    metrics, notes = _aggregate(runs, any("klom" in r.attacks for r in reports), timer)
    return EvaluationReport(**{
        **{f: getattr(first, f) for f in (
            "strategy", "guarantee", "params", "fingerprint", "status", "n_forget",
            "n_retain", "n_test", "forget_ids_sha256", "removed_class", "reference", "attacks",
            "checks", "curves", "versions")},
        "seeds": [run.seed for run in runs], "unlearn_seeds": [run.unlearn_seed for run in runs],
        "metrics": metrics, "runs": [r for report in reports for r in report.runs],
        "timings": {k: round(v, 6) for k, v in timer.seconds.items()}, "notes": notes,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })

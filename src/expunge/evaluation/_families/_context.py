"""What every metric family gets: one run's splits, predictions and reference, and where
its rows, notes and curves go."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from expunge._progress import Progress
from expunge.data import IndexedDataset
from expunge.evaluation._features import FEATURES
from expunge.evaluation._metrics import MembershipMetrics
from expunge.evaluation._reference import ModelView, Reference
from expunge.evaluation._report import MetricRow
from expunge.strategies.base import ForgetReport, UnlearningStrategy

if TYPE_CHECKING:
    from expunge.evaluation._cache import EvaluationCache

MIA = "Membership inference"

# one line per metric: what a good value is, relative to the reference
GOOD_MIA_AUC = ("close to the reference's (about 0.5 for a random forget set); above = forget "
                "samples still look like members, below = they look less familiar than unseen "
                "data (over-forgetting, also detectable)")
GOOD_BACC = "close to the reference's (0.5 = chance)"
GOOD_TPR1 = ("close to the reference's (0.01 = chance at 1% FPR); higher = some forget samples "
             "are identified with confidence")
GOOD_TPR01 = ("close to the reference's (0.001 = chance at 0.1% FPR); higher = some forget "
              "samples are identified with confidence")
GOOD_POWER = ("well above 0.5 for both models: the attack detects real members, so its "
              "forget-set numbers mean something")


@dataclass(frozen=True)
class Options:
    """The evaluation's settings, validated once."""

    attacks: tuple[str, ...]
    checks: tuple[str, ...]
    shadow_models: int
    shadow_epochs: int | None
    svc_max_samples: int | None
    cache_reference: bool
    cache: EvaluationCache | None = None
    shadow_recipe: str = "strategy"


class Timer:
    """Seconds per metric family, summed over runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, family: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[family] = self.seconds.get(family, 0.0) + time.perf_counter() - started


def gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else abs(a - b)


@dataclass
class RunContext:
    """One run: the strategy as it is now, ``D_f``/``D_r``/``D_te``, both models'
    probabilities on them, and the rows, notes, curves and timings being collected.

    ``P[side][split]`` holds float64 probabilities for ``side`` in :attr:`sides`
    (``"model"``, and ``"reference"`` when there is one).
    """

    strategy: UnlearningStrategy
    forget_set: IndexedDataset
    retained: IndexedDataset
    test: IndexedDataset
    ids: np.ndarray
    seed: int
    options: Options
    timer: Timer
    progress: Progress
    model: ModelView
    ref: Reference | None
    P: dict[str, dict[str, np.ndarray]]
    forget_report: ForgetReport | None
    removed_class: int | None
    status: str
    store_bytes: int
    rows: list[MetricRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    roc: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] | None = None
    _features: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict)

    @property
    def splits(self) -> dict[str, IndexedDataset]:
        return {"forget": self.forget_set, "retain": self.retained, "test": self.test}

    @property
    def labels(self) -> dict[str, np.ndarray]:
        return {k: v.y.numpy() for k, v in self.splits.items()}

    @property
    def sides(self) -> list[str]:
        return list(self.P)

    def feature(self, name: str, side: str, split: str) -> np.ndarray:
        """A membership feature (``"loss"``, ``"confidence"``...) of one side on one split."""
        if (name, side, split) not in self._features:
            function = FEATURES[name][0]
            self._features[(name, side, split)] = function(self.P[side][split],
                                                           self.labels[split])
        return self._features[(name, side, split)]

    def row(self, key: str, section: str, name: str, values: Mapping[str, float | None],
            kind: str, good: str, gap_: bool = True, single: bool = False) -> None:
        m, r = values.get("model"), values.get("reference")
        self.rows.append(MetricRow(key=key, section=section, name=name, model=m, reference=r,
                                   gap=gap(m, r) if gap_ else None, kind=kind, good=good,
                                   single=single))

    def membership_rows(self, key: str, title: str, result: Mapping[str, MembershipMetrics],
                        power: Mapping[str, float | None]) -> None:
        """AUC, best balanced accuracy, TPR at 1 % / 0.1 % FPR (and power) of one attack."""
        self.row(f"mia.{key}.auc", MIA, f"{title}: AUC (forget vs test)",
                 {s: v.auc for s, v in result.items()}, "score", GOOD_MIA_AUC)
        self.row(f"mia.{key}.best_bacc", MIA, f"{title}: best balanced accuracy",
                 {s: v.best_balanced_accuracy for s, v in result.items()}, "score", GOOD_BACC)
        self.row(f"mia.{key}.tpr_at_1pct", MIA, f"{title}: TPR @ 1% FPR",
                 {s: v.tpr_at_1pct_fpr for s, v in result.items()}, "score", GOOD_TPR1)
        self.row(f"mia.{key}.tpr_at_0.1pct", MIA, f"{title}: TPR @ 0.1% FPR",
                 {s: v.tpr_at_01pct_fpr for s, v in result.items()}, "score", GOOD_TPR01)
        if power:
            self.row(f"mia.{key}.power_auc", MIA, f"{title}: AUC (retain vs test, attack power)",
                     power, "score", GOOD_POWER, gap_=False)
        self.roc[key] = {"title": f"{title} (forget vs test)", **{
            s: {"fpr": v.roc_fpr, "tpr": v.roc_tpr} for s, v in result.items()}}

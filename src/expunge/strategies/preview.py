"""Cost preview: what a forget request would do, before doing it (``m.preview(ids)``).

For the exact strategies the preview runs the request's own planning code (the block plans,
the chain keys, the reuse of every unchanged checkpoint, the accounting) with training
replaced by counting, so ``sample_passes``, the sub-models and blocks retrained and the
purged store entries are *exactly* what the request will report (tested for every exact
strategy). Seconds are estimated from this store's own history (the ledger records the
seconds and sample-passes of every request). For approximate strategies there is nothing
to count in advance: the preview estimates seconds from past requests and lists what is
certain to be purged (the data buckets that hold the ids, the caches).

Cost: the planning of one request without its training; for ARCANE, a re-selection of each
class whose selected samples are requested (seconds on MNIST), as the request itself does.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from expunge.store import LedgerEntry
from expunge.strategies._replay import dry_forget, is_exact_engine
from expunge.strategies._stored_data import training_data_blobs
from expunge.strategies.base import CACHE_PREFIX, UnlearningStrategy

#: how many recent requests the time estimate learns from
HISTORY = 50


@dataclass(frozen=True)
class ForgetPreview:
    """What a request would do. ``exact`` says whether the counts are exact predictions.

    Attributes:
        ids: the requested ids (sorted).
        strategy, guarantee: the store's strategy and the guarantee the request would carry.
        exact: ``True`` when ``sample_passes``, ``submodels_retrained``, ``from_block`` and
            ``purged`` are exactly what the request will report (exact strategies).
        submodels_retrained: sub-models (shards, classes) that would train again.
        from_block: for each, the first block retrained (``{sub-model: block}``).
        blocks_retrained: blocks trained again, summed over sub-models.
        samples_retrained: distinct samples trained on again.
        sample_passes: forward+backward passes the request would spend (``None`` when it
            cannot be known in advance).
        estimated_seconds: wall-clock estimate from this store's history (``None`` without
            history), and ``estimate_basis`` how it was made.
        purged: store entries that would be deleted (for approximate strategies: those
            certain to be, see ``purged_complete``).
    """

    ids: list[int]
    strategy: str
    guarantee: str
    exact: bool
    submodels_retrained: list[int]
    from_block: dict[str, int]
    blocks_retrained: int
    samples_retrained: int | None
    sample_passes: int | None
    estimated_seconds: float | None
    estimate_basis: str
    purged: list[str]
    purged_complete: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _forget_history(entries: list[LedgerEntry]) -> list[tuple[int, float]]:
    return [(e.sample_passes, e.seconds) for e in entries if e.kind == "forget"][-HISTORY:]


def estimate_seconds(entries: list[LedgerEntry], passes: int | None) -> tuple[float | None, str]:
    """Seconds for a request of ``passes`` sample-passes, learnt from the ledger.

    ``seconds = overhead + rate * passes``. With at least three past requests of two or more
    different costs: a least-squares line through them. Otherwise ``rate`` is the fit's
    seconds per sample-pass and ``overhead`` the median of what past requests took beyond
    their passes (0 before the first request). Without passes (approximate strategies): the
    median duration of past requests.
    """
    history = _forget_history(entries)
    if passes is None:
        if not history:
            return None, "no past request to learn from"
        median = statistics.median(s for _, s in history)
        return median, f"median of the last {len(history)} request(s)"
    points = [(p, s) for p, s in history if p > 0]
    if len(points) >= 3 and len({p for p, _ in points}) >= 2:
        x = np.array([p for p, _ in points], dtype=np.float64)
        y = np.array([s for _, s in points], dtype=np.float64)
        rate, overhead = np.polyfit(x, y, 1)
        if rate > 0:
            overhead = max(float(overhead), 0.0)
            return overhead + float(rate) * passes, (
                f"line through the last {len(points)} retraining request(s): "
                f"{overhead:.3f} s + {rate * 1e6:.3f} µs per sample-pass")
    fits = [e for e in entries if e.kind == "fit" and e.sample_passes > 0]
    if not fits:
        return None, "no timed training in the ledger"
    rate = fits[-1].seconds / fits[-1].sample_passes
    residuals = [s - rate * p for p, s in history]
    overhead = max(statistics.median(residuals), 0.0) if residuals else 0.0
    basis = f"the fit's {rate * 1e6:.3f} µs per sample-pass"
    if residuals:
        basis += f" + {overhead:.3f} s overhead (median of {len(residuals)} past request(s))"
    return overhead + rate * passes, basis


def preview_forget(strategy: UnlearningStrategy, request: np.ndarray) -> ForgetPreview:
    """The preview of forgetting the validated, sorted ids ``request`` (see module doc)."""
    store = strategy.store_
    kept = ~np.isin(strategy.data_.ids, request)
    retained = strategy.data_.where(kept)
    strategy._check_retained(retained)  # what forget refuses, the preview refuses
    original = strategy._data_key(store)
    new_data = set(training_data_blobs(retained.ids, original))
    # a previous request's pending rewrites (a disk error) are finished, not purged, by this one
    current = store.list_blobs() - store.pending_rewrite_sources()
    entries = strategy.ledger.entries()
    if is_exact_engine(strategy):
        run = dry_forget(strategy, request, retained)
        stats, live = run.stats, run.live_blobs
        from_block = {str(k): int(b) for k, b in stats.details.get("from_block", {}).items()}
        blocks = sum(run.n_blocks[int(k)] - b for k, b in from_block.items())
        seconds, basis = estimate_seconds(entries, stats.sample_passes)
        return ForgetPreview(
            ids=request.tolist(), strategy=strategy.name, guarantee=strategy._guarantee_now(),
            exact=True, submodels_retrained=list(stats.submodels_retrained),
            from_block=from_block, blocks_retrained=blocks,
            samples_retrained=stats.samples_retrained, sample_passes=stats.sample_passes,
            estimated_seconds=seconds, estimate_basis=basis,
            purged=sorted(current - live - new_data), purged_complete=True,
            details={k: v for k, v in stats.details.items() if k != "from_block"},
        )
    old_data = set(training_data_blobs(strategy.data_.ids, original))
    certain = (old_data - new_data) | {b for b in current if b.startswith(CACHE_PREFIX)}
    seconds, basis = estimate_seconds(entries, None)
    return ForgetPreview(
        ids=request.tolist(), strategy=strategy.name, guarantee=strategy._guarantee_now(),
        exact=False, submodels_retrained=[], from_block={}, blocks_retrained=0,
        samples_retrained=None, sample_passes=None, estimated_seconds=seconds,
        estimate_basis=basis, purged=sorted(certain & current), purged_complete=False,
        details={"note": f"{strategy.name} is approximate: its cost is not known before it "
                         "runs; the model and curvature caches it replaces are purged too"},
    )

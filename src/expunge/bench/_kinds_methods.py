"""Experiment kinds specific to one method's knobs: PUMA (E3, E5, E6) and ARCANE (A4-A6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import expunge
from expunge.bench._context import Context
from expunge.bench._kinds import _plt, _save, accuracy, kind, single_requests
from expunge.data import random_forget_ids
from expunge.evaluation import sample_loss, threshold_attack


# --------------------------------------------------------------------------- E3
@kind("membership", keys=["strategy"], columns=[
    ("strategy", "strategy", "s"), ("UA", "UA", ".4f"), ("UA_ref", "UA retrain", ".4f"),
    ("loss_auc_before", "loss-MIA AUC before", ".3f"),
    ("loss_auc", "loss-MIA AUC", ".3f"), ("loss_auc_ref", "… retrain", ".3f"),
    ("svc", "MIA-efficacy (SVC)", ".3f"), ("svc_ref", "… retrain", ".3f"),
    ("logistic", "kit logistic acc.", ".3f"), ("logistic_ref", "… retrain", ".3f"),
    ("avg_gap", "Avg. Gap", ".4f"), ("forget_seconds", "forget s", ".2f"),
])
def membership(ctx: Context) -> dict[str, Any]:
    """Forget a random set, then attack it: the harness's MIAs on the model and on Retrain."""
    train, test = ctx.data()
    ids = random_forget_ids(train, fraction=float(ctx.spec.settings.get("fraction", 0.01)),
                            seed=ctx.seed)
    attacks = ctx.spec.settings.get("attacks", ["loss", "confidence", "entropy", "m_entropy",
                                                "svc", "logistic"])
    rows = []
    for label in ctx.spec.strategies:
        strategy, _ = ctx.fitted_copy(label)
        # the membership signal there was to remove: the same loss attack on the model
        # before the request (forget set = members vs the test set); ~0.5 means no attack
        # can tell a good unlearning method from a bad one on this model
        before = _loss_auc(strategy, train.select(ids), test)
        report = expunge.evaluate(strategy, train=train, test=test, forget_ids=ids,
                                  reference="retrain", attacks=attacks, forget=True)
        by_key = {row.key: row for row in report.metrics}

        def pick(key: str, side: str = "model", by_key: dict[str, Any] = by_key) -> float:
            row = by_key.get(key)
            value = None if row is None else getattr(row, side)
            return float("nan") if value is None else float(value)

        rows.append({
            "strategy": label, "UA": pick("UA"), "UA_ref": pick("UA", "reference"),
            "loss_auc_before": before, "loss_auc": pick("mia.loss.auc"),
            "loss_auc_ref": pick("mia.loss.auc", "reference"),
            "svc": pick("mia.svc.efficacy"), "svc_ref": pick("mia.svc.efficacy", "reference"),
            "logistic": pick("mia.logistic.accuracy"),
            "logistic_ref": pick("mia.logistic.accuracy", "reference"),
            "avg_gap": pick("avg_gap"), "forget_seconds": pick("cost.forget_seconds"),
        })
        strategy.close()
        ctx.log(f"  {label}: UA {rows[-1]['UA']:.4f} vs retrain {rows[-1]['UA_ref']:.4f}")
    return {"rows": rows}


def _losses(strategy: Any, data: Any) -> np.ndarray:
    """Per-sample cross-entropy of ``strategy`` on ``data`` (the harness's loss feature)."""
    return sample_loss(strategy.predict_proba(data.X).numpy(), data.y.numpy())


def _loss_auc(strategy: Any, members: Any, non_members: Any) -> float:
    """AUC of the harness's loss-threshold attack (the same as its ``mia.loss.auc``)."""
    return threshold_attack("loss", _losses(strategy, members),
                            _losses(strategy, non_members)).auc


# --------------------------------------------------------------------------- E5
def _plot_eta(rows: list[dict[str, Any]], spec: dict[str, Any], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for curve in dict.fromkeys(r["curve"] for r in rows):
        mine = sorted((r for r in rows if r["curve"] == curve), key=lambda r: r["fraction"])
        style = "k--" if curve == "retrain" else "-o"
        ax.plot([100 * r["fraction"] for r in mine], [r["test_after"] for r in mine], style,
                label=curve, ms=4)
    ax.set_xlabel("removal rate (% of the training set)")
    ax.set_ylabel("test accuracy after removal")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=9)
    _save(plt, fig, path)


@kind("eta_sweep", keys=["curve", "fraction"], plot=_plot_eta, columns=[
    ("curve", "curve", "s"), ("fraction", "removed", "%"),
    ("test_after", "TA after", ".4f"), ("test_gap", "TA gap to retrain", "+.4f"),
    ("forget_acc", "forget acc.", ".4f"), ("reweighted", "re-weighted samples", ",.0f"),
    ("forget_seconds", "forget s", ".2f"),
])
def eta_sweep(ctx: Context) -> dict[str, Any]:
    """PUMA's resistance: accuracy against the removal rate, one curve per eta.

    ``eta`` acts only at forget time, so every curve starts from the same fitted model
    (reopened with another ``eta``); the naive-influence baseline and Retrain are curves too.
    """
    train, test = ctx.data()
    settings = ctx.spec.settings
    rows = []
    for fraction in settings["fractions"]:
        ids = random_forget_ids(train, fraction=fraction, seed=ctx.seed)
        forget_set = train.select(ids)
        curves: list[tuple[str, str, dict[str, Any]]] = [
            (f"PUMA eta={eta:g}", settings.get("puma", "puma"), {"eta": float(eta)})
            for eta in settings["etas"]
        ]
        curves += [(label, label, {}) for label in settings.get("baselines", [])]
        for curve, label, reopen in curves:
            strategy, _ = ctx.fitted_copy(label, reopen=reopen)
            report = strategy.forget(ids)
            rows.append({
                "curve": curve, "fraction": fraction, "test_after": accuracy(strategy, test),
                "forget_acc": accuracy(strategy, forget_set),
                "reweighted": float(report.details.get("n_reweighted", 0)),
                "forget_seconds": report.seconds,
            })
            strategy.close()
            ctx.log(f"  {curve} {fraction:.3g}: TA {rows[-1]['test_after']:.4f}")
    for row in rows:
        ref = next((r for r in rows if r["curve"] == ctx.spec.reference
                    and r["fraction"] == row["fraction"]), None)
        row["test_gap"] = row["test_after"] - ref["test_after"] if ref else float("nan")
    return {"rows": rows}


# --------------------------------------------------------------------------- E6
def _plot_mislabel(rows: list[dict[str, Any]], spec: dict[str, Any], path: Path,
                   title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        style = "k:" if row["method"] == "optimal" else ("--" if row["method"] == "random" else "-")
        ax.plot(row["curve_x"], row["curve_y"], style, label=row["method"])
    ax.set_xlabel("fraction of training data inspected (most suspicious first)")
    ax.set_ylabel("fraction of flipped labels found")
    ax.set_xlim(0, max(rows[0]["curve_x"]))
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    _save(plt, fig, path)


def _found_curve(ranked: np.ndarray, flipped: set[int], grid: np.ndarray) -> list[float]:
    hits = np.cumsum([int(i) in flipped for i in ranked])
    n = len(ranked)
    return [float(hits[max(round(g * n) - 1, 0)] / max(len(flipped), 1)) if g > 0 else 0.0
            for g in grid]


@kind("mislabel", keys=["method"], plot=_plot_mislabel, columns=[
    ("method", "ranking", "s"), ("found_at_5", "found @ 5 % inspected", ".3f"),
    ("found_at_10", "found @ 10 %", ".3f"), ("found_at_20", "found @ 20 %", ".3f"),
    ("area", "area under curve (0-30 %)", ".3f"), ("seconds", "seconds", ".2f"),
])
def mislabel(ctx: Context) -> dict[str, Any]:
    """Flip a known fraction of labels, rank training samples, count flips found.

    Flips land in PUMA's training split only (``settings.clean_validation``, default true):
    the criterion is "loss on trusted data", as when a small audited set is at hand. With
    ``settings.noisy_validation_row`` (default true) a second PUMA ranking uses the same
    training labels but a validation split flipped at the same rate, to show how much the
    criterion's own label noise costs the ranking.
    """
    import time

    train, _ = ctx.data()
    settings = ctx.spec.settings
    rng = np.random.default_rng(ctx.seed + 3000)
    n_flip = round(float(settings.get("flip_fraction", 0.05)) * len(train))
    flip_pos = rng.choice(len(train), size=n_flip, replace=False)
    y = train.y.numpy().copy()
    y_flipped = y.copy()
    y_flipped[flip_pos] = (y[flip_pos] + rng.integers(1, train.n_classes, size=n_flip)) \
        % train.n_classes
    label = settings.get("puma", "puma")
    in_val = np.isin(train.ids, ctx.make(label).validation_ids(train))
    clean_val = y_flipped.copy()
    clean_val[in_val] = y[in_val]  # the training split's labels are the same in both
    variants = {"PUMA harmfulness": clean_val if settings.get("clean_validation", True)
                else y_flipped}
    if settings.get("clean_validation", True) and settings.get("noisy_validation_row", True):
        variants["PUMA harmfulness, noisy validation"] = y_flipped

    def puma_ranking(labels: np.ndarray
                     ) -> tuple[Any, Any, np.ndarray, np.ndarray, float, float]:
        """Fit PUMA on ``labels``; (strategy, data, scored ids, ranking, fit s, score s)."""
        noisy = train.with_labels(labels)
        strategy = ctx.make(label)
        started = time.perf_counter()
        strategy.fit(noisy)
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        scored_ids, scores = expunge.harmfulness_scores(strategy)
        ranked = scored_ids[np.lexsort((scored_ids, -scores))]
        return strategy, noisy, scored_ids, ranked, fit_seconds, time.perf_counter() - started

    (first, *others) = variants.items()
    strategy, noisy, scored_ids, ranked, fit_seconds, seconds = puma_ranking(first[1])
    rankings: dict[str, tuple[np.ndarray, float]] = {first[0]: (ranked, seconds)}
    # loss and random rank the same training split, with the same model
    losses = _losses(strategy, noisy.select(scored_ids))
    strategy.close()
    baselines = {"loss": (scored_ids[np.lexsort((scored_ids, -losses))], 0.0),
                 "random": (rng.permutation(scored_ids), 0.0)}
    for method, labels in others:  # the training split's labels are the same: same model
        other, _, _, ranked, _, seconds = puma_ranking(labels)
        other.close()
        rankings[method] = (ranked, seconds)
    rankings.update(baselines)
    # only samples PUMA trained on are ranked (its validation split has no score)
    flipped = {int(i) for i in train.ids[flip_pos]} & {int(i) for i in scored_ids}
    n_scored = len(scored_ids)
    grid = np.linspace(0, float(settings.get("max_inspected", 0.3)), 31)
    rows = []
    for method, (ranked, seconds) in rankings.items():
        curve = _found_curve(ranked, flipped, grid)
        rows.append({"method": method, "curve_x": grid.tolist(), "curve_y": curve,
                     "seconds": seconds, "fit_seconds": fit_seconds})
    optimal = [min(1.0, g * n_scored / max(len(flipped), 1)) for g in grid]
    rows.append({"method": "optimal", "curve_x": grid.tolist(), "curve_y": optimal,
                 "seconds": 0.0, "fit_seconds": 0.0})
    for row in rows:
        xs, ys = np.array(row["curve_x"]), np.array(row["curve_y"])
        for pct in (5, 10, 20):
            row[f"found_at_{pct}"] = float(np.interp(pct / 100, xs, ys))
        row["area"] = float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)) / xs[-1])
    found = {r["method"]: r["found_at_10"] for r in rows}
    ctx.log(f"  PUMA finds {found['PUMA harmfulness']:.2f} of flips in 10 % inspected "
            f"(loss {found['loss']:.2f}, random {found['random']:.2f})")
    return {"rows": rows}


# ------------------------------------------------------------------------ A4/A5
def _plot_param(rows: list[dict[str, Any]], spec: dict[str, Any], path: Path, title: str) -> None:
    plt = _plt()
    passes = "mean_passes" if "mean_passes" in rows[0] else "single_passes"
    fields = [f for f in ("test_acc", "fit_seconds", passes) if f in rows[0]]
    fig, axes = plt.subplots(1, len(fields), figsize=(4 * len(fields), 3.3))
    xs = [str(r["value"]).replace(" (reference)", "\n(ref.)") for r in rows]
    colors = ["grey" if r["strategy"] != rows[0]["strategy"] else "C0" for r in rows]
    for ax, f in zip(np.atleast_1d(axes), fields, strict=True):
        ax.bar(xs, [r[f] for r in rows], color=colors)
        ax.set_xlabel(rows[0]["param"])
        values = [r[f] for r in rows]
        if f.endswith("passes"):  # the reference is 10-1000x the rest
            ax.set_yscale("log" if min(values) > 0 else "symlog")
        elif f == "test_acc":
            ax.set_ylim(max(0.0, min(values) - 0.05), 1.0)
        ax.set_title({"test_acc": "test accuracy", "fit_seconds": "fit seconds",
                      "single_passes": "sample-passes per request (median)",
                      "mean_passes": "sample-passes per request (mean)"}[f], fontsize=9)
    fig.suptitle(title, fontsize=9)
    _save(plt, fig, path)


@kind("param_sweep", keys=["value"], plot=_plot_param, columns=[
    ("param", "parameter", "s"), ("value", "value", "s"), ("test_acc", "TA", ".4f"),
    ("fit_seconds", "fit s", ".2f"), ("single_seconds", "median s / id", ".3f"),
    ("mean_seconds", "mean s / id", ".3f"),
    ("single_passes", "median sample-passes / id", ",.0f"),
    ("mean_passes", "mean sample-passes / id", ",.0f"),
    ("mean_retrained", "mean samples retrained / id", ",.0f"),
    ("untouched", "requests retraining nothing", ".0%"),
])
def param_sweep(ctx: Context) -> dict[str, Any]:
    """One strategy parameter swept: accuracy, fit time, and the cost of single requests."""
    train, test = ctx.data()
    settings = ctx.spec.settings
    label, param = settings.get("strategy", next(iter(ctx.spec.strategies))), settings["param"]
    rng = np.random.default_rng(ctx.seed + 4000)
    singles = rng.choice(train.ids, size=int(settings.get("requests", 10)), replace=False)

    def measure(name: str, value: Any, **overrides: Any) -> dict[str, Any]:
        strategy, fit_seconds = ctx.fitted_copy(name, **overrides)
        test_acc = accuracy(strategy, test)
        costs = single_requests(strategy, singles)
        strategy.close()
        ctx.log(f"  {param}={value}: TA {test_acc:.4f}, {costs['single_passes']:.0f} passes")
        return {"param": param, "value": value, "strategy": name, "test_acc": test_acc,
                "fit_seconds": fit_seconds, **costs}

    # "none" may need more than param=None (ARCANE: no cap = selection off)
    rows = [measure(label, value, **(dict(settings.get("none_overrides", {param: None}))
                                     if value == "none" else {param: value}))
            for value in settings["values"]]
    rows += [measure(baseline, f"{baseline} (reference)")
             for baseline in settings.get("baselines", [ctx.spec.reference])]
    return {"rows": rows}


# --------------------------------------------------------------------------- A6
class SkewedPrior:
    """A deletion prior from metadata: a keyed ``hot`` fraction of ids is ``ratio`` times
    more likely to be deleted (think: users who opted out of retention). Module-level and
    picklable, so process executors can ship it."""

    def __init__(self, seed: int, hot_fraction: float, ratio: float) -> None:
        self.seed, self.hot_fraction, self.ratio = seed, hot_fraction, ratio

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        from expunge._hashing import derive_key, keyed_uniform

        hot = keyed_uniform(derive_key(self.seed, "hot-users"), np.asarray(ids)) < self.hot_fraction
        return np.where(hot, self.ratio, 1.0).astype(np.float64)


def _plot_sorting(rows: list[dict[str, Any]], spec: dict[str, Any], path: Path,
                  title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for row in rows:
        ax.plot(range(1, len(row["cumulative_passes"]) + 1), row["cumulative_passes"],
                "k--" if row["variant"] == "retrain" else "-", label=row["variant"])
    ax.set_xlabel("requests so far (one id each, drawn from the deletion prior)")
    ax.set_ylabel("cumulative sample-passes retrained")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    _save(plt, fig, path)


@kind("sorting", keys=["variant"], plot=_plot_sorting, columns=[
    ("variant", "variant", "s"), ("total_passes", "sample-passes, all requests", ",.0f"),
    ("total_seconds", "seconds, all requests", ".1f"),
    ("untouched", "requests retraining nothing", ".0%"),
    ("test_acc", "TA after", ".4f"),
])
def sorting(ctx: Context) -> dict[str, Any]:
    """ARCANE with and without sorting under a skewed prior, against naive retraining."""
    train, test = ctx.data()
    settings = ctx.spec.settings
    prior = SkewedPrior(ctx.seed, float(settings.get("hot_fraction", 0.1)),
                        float(settings.get("ratio", 20.0)))
    weights = prior(train.ids)
    rng = np.random.default_rng(ctx.seed + 5000)
    requests = rng.choice(train.ids, size=int(settings.get("requests", 20)), replace=False,
                          p=weights / weights.sum())
    label = settings.get("strategy", "arcane")
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("sorting on", label, {"sorting": True, "deletion_prior": prior}),
        ("sorting off", label, {"sorting": False, "deletion_prior": prior}),
    ]
    variants += [(name, name, {}) for name in settings.get("baselines", ["retrain"])]
    rows = []
    for variant, name, overrides in variants:
        strategy, _ = ctx.fitted_copy(name, **overrides)
        reports = [strategy.forget([int(i)]) for i in requests]
        rows.append({
            "variant": variant if name != ctx.spec.reference else name,
            "cumulative_passes": np.cumsum([r.sample_passes for r in reports]).tolist(),
            "total_passes": float(sum(r.sample_passes for r in reports)),
            "total_seconds": float(sum(r.seconds for r in reports)),
            "untouched": sum(r.sample_passes == 0 for r in reports) / len(reports),
            "test_acc": accuracy(strategy, test),
        })
        strategy.close()
        ctx.log(f"  {variant}: {rows[-1]['total_passes']:.0f} sample-passes")
    return {"rows": rows}

"""Attacks that need reference models: LiRA, U-LiRA and RMIA, on one shadow pool."""

from __future__ import annotations

import numpy as np

from expunge._hashing import derive_key
from expunge.data import IndexedDataset
from expunge.evaluation._families._context import GOOD_TPR01, GOOD_TPR1, MIA, RunContext
from expunge.evaluation._families.membership import subsample
from expunge.evaluation._features import logit_scaled_confidence
from expunge.evaluation._metrics import membership_metrics
from expunge.evaluation._shadow_pool import build_shadow_pool, pool_of
from expunge.evaluation.attacks import likelihood_ratio_scores, ulira_leave_one_out
from expunge.evaluation.attacks._rmia import rmia_scores

SHADOW_ATTACKS = ("lira", "ulira", "rmia")
GOOD = {
    "ulira.auc": ("0.5 = the strategy's unlearned models cannot be told from its retrained "
                  "ones on the forget samples (exact strategies: 0.5 up to noise)"),
    "ulira.accuracy": "0.5 = indistinguishable from retraining (Hayes et al. 2024)",
}


def shadow_rows(ctx: RunContext) -> None:
    """LiRA, U-LiRA and RMIA rows from one shadow pool (trained once per run)."""
    attacks = ctx.options.attacks
    if not any(a in attacks for a in SHADOW_ATTACKS):
        return
    forget_set, retained, test = ctx.forget_set, ctx.retained, ctx.test
    original = IndexedDataset.concat([retained, forget_set])
    pool, test_pool_ids = pool_of(original, test)
    retain_targets = subsample(retained, len(test), derive_key(ctx.seed, "lira", "retain"))
    targets = IndexedDataset.concat([
        IndexedDataset(d.X, d.y, i, n_classes=pool.n_classes, transform=d.transform)
        for d, i in ((forget_set, forget_set.ids), (test, test_pool_ids),
                     (retain_targets, retain_targets.ids))])
    n_f, n_t = len(forget_set), len(test)
    seg_f, seg_t, seg_r = slice(0, n_f), slice(n_f, n_f + n_t), slice(n_f + n_t, None)
    changes: dict[str, object] = ({} if ctx.options.shadow_epochs is None
                                  else {"epochs": ctx.options.shadow_epochs})
    with_ulira = "ulira" in attacks
    with ctx.timer("shadow models"):
        shadows, after, forget_seconds = build_shadow_pool(
            ctx.strategy, pool, n_shadows=ctx.options.shadow_models, seed=ctx.seed,
            changes=changes, cache=None if with_ulira else ctx.options.cache,
            progress=ctx.progress, recipe=ctx.options.shadow_recipe,
            forget=(ctx.ids, targets.where(np.arange(len(targets)) < n_f)) if with_ulira
            else None)
    columns = shadows.columns(targets.ids)
    epochs = ("the same epochs" if ctx.options.shadow_epochs is None
              else f"{ctx.options.shadow_epochs} epochs")
    kind_of = ("retrain" if ctx.options.shadow_recipe == "retrain" and not with_ulira
               else ctx.strategy.name)
    ctx.notes.append(
        f"shadow models: {shadows.n_shadows} shadow {kind_of} models (Retrain's recipe "
        f"for strategies that fit like it), each fitted on "
        f"~{shadows.shadow_size:.0f} samples "
        f"(half of D_f + D_r + D_te) with {epochs}; fit {shadows.fit_seconds:.1f} s in all"
        + (f" ({shadows.cached} from the evaluation cache)" if shadows.cached else "")
        + (f", forget {forget_seconds:.1f} s" if with_ulira else "") + ".")
    r_pos = retained.positions(retain_targets.ids)
    labels = {"forget": forget_set.y.numpy(), "test": test.y.numpy(),
              "retain": retain_targets.y.numpy()}
    if "lira" in attacks:
        with ctx.timer("mia: lira"):
            phi = {s: np.concatenate([
                logit_scaled_confidence(ctx.P[s]["forget"], labels["forget"]),
                logit_scaled_confidence(ctx.P[s]["test"], labels["test"]),
                logit_scaled_confidence(ctx.P[s]["retain"][r_pos], labels["retain"]),
            ]) for s in ctx.sides}
            _membership(ctx, "lira", f"LiRA ({shadows.n_shadows} shadows)",
                        {s: likelihood_ratio_scores(phi[s], shadows.phi[:, columns],
                                                    shadows.membership[:, columns])
                         for s in ctx.sides}, seg_f, seg_t, seg_r, len(retain_targets))
    if "rmia" in attacks:
        with ctx.timer("mia: rmia"):
            p_refs = shadows.p_label[:, columns]
            population = columns[seg_t]  # the test set: never trained on by the model
            scores = {}
            for s in ctx.sides:
                p = np.concatenate([
                    ctx.P[s]["forget"][np.arange(n_f), labels["forget"]],
                    ctx.P[s]["test"][np.arange(n_t), labels["test"]],
                    ctx.P[s]["retain"][r_pos, labels["retain"]],
                ])
                in_population = np.full(p.size, -1)
                in_population[seg_t] = np.arange(n_t)
                scores[s] = rmia_scores(p, p_refs, p[seg_t], shadows.p_label[:, population],
                                        in_population=in_population)
            _membership(ctx, "rmia", f"RMIA ({shadows.n_shadows} references)", scores,
                        seg_f, seg_t, seg_r, len(retain_targets))
            ctx.notes.append(
                f"RMIA: online, gamma=1, reference models = the {shadows.n_shadows} shadow "
                f"models; population = the {n_t} test samples (each compared with the others).")
    if with_ulira and after is not None:
        with ctx.timer("mia: ulira"):
            _ulira_rows(ctx, after, shadows.membership[:, columns[seg_f]], shadows.n_shadows)


def _membership(ctx: RunContext, key: str, title: str, scores: dict[str, np.ndarray],
                seg_f: slice, seg_t: slice, seg_r: slice, n_retain: int) -> None:
    n_f, n_t = seg_f.stop, seg_t.stop - seg_t.start
    is_member = np.concatenate([np.ones(n_f, bool), np.zeros(n_t, bool)])
    result, power = {}, {}
    for s, score in scores.items():
        result[s] = membership_metrics(np.concatenate([score[seg_f], score[seg_t]]), is_member)
        power[s] = membership_metrics(
            np.concatenate([score[seg_r], score[seg_t]]),
            np.concatenate([np.ones(n_retain, bool), np.zeros(n_t, bool)])).auc
    ctx.membership_rows(key, title, result, power)


def _ulira_rows(ctx: RunContext, after: np.ndarray, unlearned: np.ndarray,
                n_shadows: int) -> None:
    scores, is_unlearned = ulira_leave_one_out(after, unlearned)
    held_out = membership_metrics(scores, is_unlearned)
    name = f"U-LiRA ({n_shadows} shadows)"
    single = {"gap_": False, "single": True}
    ctx.row("mia.ulira.auc", MIA, f"{name}: AUC, unlearned vs retrained shadows",
            {"model": held_out.auc}, "score", GOOD["ulira.auc"], **single)
    ctx.row("mia.ulira.accuracy", MIA, f"{name}: accuracy at ratio 1",
            {"model": float(np.mean((scores > 0) == is_unlearned))}, "score",
            GOOD["ulira.accuracy"], **single)
    ctx.row("mia.ulira.tpr_at_1pct", MIA, f"{name}: TPR @ 1% FPR",
            {"model": held_out.tpr_at_1pct_fpr}, "score", GOOD_TPR1, **single)
    ctx.row("mia.ulira.tpr_at_0.1pct", MIA, f"{name}: TPR @ 0.1% FPR",
            {"model": held_out.tpr_at_01pct_fpr}, "score", GOOD_TPR01, **single)
    ctx.roc["ulira"] = {"title": f"{name}: unlearned vs retrained shadows",
                        "model": {"fpr": held_out.roc_fpr, "tpr": held_out.roc_tpr}}

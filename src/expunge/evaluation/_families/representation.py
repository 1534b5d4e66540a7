"""What the weights still hold: a linear probe on hidden features (Gao et al., arXiv
2604.08271, "the illusion of unlearning") and relearn time (ERASURE's ``RelearnTime``;
the UDS meta-evaluation)."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from expunge._hashing import derive_key, keyed_order, keyed_uniform
from expunge.evaluation._families._context import RunContext
from expunge.training import batched_forward

SECTION = "Representation"
CHECKS = ("probe", "relearn")
#: samples the probe trains on at most (a keyed half of the test set, capped)
PROBE_MAX_TRAIN = 5000
#: relearn: minibatch size, step cap, and the learning rate when the strategy has none
RELEARN_BATCH, RELEARN_MAX_STEPS, RELEARN_LR = 32, 200, 0.01
GOOD = {
    "probe.forget": ("close to the reference's: a linear readout of the hidden features "
                     "classifies the forget samples no better than for a model that never "
                     "saw them; far above = the features still hold them"),
    "probe.test": "close to the reference's (a control: features of unseen data)",
    "relearn.steps": ("close to the reference's; far fewer steps = the forget set is still "
                      "latent in the weights and returns after a few updates"),
}


def hidden_features(module: nn.Module, X: torch.Tensor) -> np.ndarray:
    """Inputs of the last module with parameters (the penultimate representation)."""
    owners = [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
    captured: list[torch.Tensor] = []
    handle = owners[-1].register_forward_pre_hook(
        lambda _m, args: captured.append(args[0].detach().reshape(args[0].shape[0], -1)))
    try:
        batched_forward(module, X)
    finally:
        handle.remove()
    return torch.cat(captured).double().numpy() if captured else np.empty((0, 0))


def _modules(ctx: RunContext) -> dict[str, nn.Module]:
    modules = {"model": ctx.model.module}
    if ctx.ref is not None:
        modules["reference"] = ctx.ref.view.module
    return {s: m for s, m in modules.items() if m is not None}


def probe_rows(ctx: RunContext) -> None:
    """Train a logistic-regression probe on the hidden features of a keyed half of the test
    set; report its accuracy on ``D_f`` and on the other half (control)."""
    if "probe" not in ctx.options.checks:
        return
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    modules = _modules(ctx)
    if "model" not in modules:
        ctx.notes.append("linear probe: n/a, the model is not one network (an ensemble).")
        return
    with ctx.timer("probe"):
        test = ctx.test
        first_half = keyed_uniform(derive_key(ctx.seed, "probe-split"), test.ids) < 0.5
        fit_rows = np.flatnonzero(first_half)
        if fit_rows.size > PROBE_MAX_TRAIN:
            fit_rows = np.sort(fit_rows[keyed_order(derive_key(ctx.seed, "probe-cap"),
                                                    test.ids[fit_rows])[:PROBE_MAX_TRAIN]])
        control = np.flatnonzero(~first_half)
        y_test, y_forget = test.y.numpy(), ctx.forget_set.y.numpy()
        forget_acc, test_acc = {}, {}
        for side, module in modules.items():
            train_x = hidden_features(module, test.inputs(fit_rows))
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
            probe.fit(train_x, y_test[fit_rows])
            forget_acc[side] = float(np.mean(
                probe.predict(hidden_features(module, ctx.forget_set.inputs())) == y_forget))
            test_acc[side] = float(np.mean(probe.predict(
                hidden_features(module, test.inputs(control))) == y_test[control]))
        ctx.row("probe.forget_acc", SECTION, "linear probe on hidden features: forget accuracy",
                forget_acc, "percent", GOOD["probe.forget"])
        ctx.row("probe.test_acc", SECTION, "linear probe: accuracy on held-out test (control)",
                test_acc, "percent", GOOD["probe.test"])
        ctx.notes.append(f"linear probe: standardised logistic regression on the inputs of the "
                         f"last layer, trained on {fit_rows.size} test samples (a keyed half), "
                         f"control = the other {control.size}.")


def relearn_steps(module: nn.Module, X: torch.Tensor, y: torch.Tensor, ids: np.ndarray, *,
                  target: float, lr: float, seed: int) -> int | None:
    """SGD steps on the forget set (batch 32, keyed order) until its accuracy reaches
    ``target``; ``None`` if not within the step cap. Works on a copy."""
    student = copy.deepcopy(module)
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    order: np.ndarray = np.empty(0, dtype=np.int64)
    at, epoch = 0, 0

    def accuracy() -> float:
        return float((batched_forward(student, X).argmax(dim=1) == y).double().mean())

    for step in range(RELEARN_MAX_STEPS + 1):
        if accuracy() >= target - 1e-12:
            return step
        if at >= order.size:
            order, at = keyed_order(derive_key(seed, "relearn", epoch), ids), 0
            epoch += 1
        batch = torch.from_numpy(order[at : at + RELEARN_BATCH])
        at += RELEARN_BATCH
        student.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(student(X[batch]), y[batch]).backward()
        optimizer.step()
    return None


def relearn_rows(ctx: RunContext) -> None:
    """Steps of fine-tuning on ``D_f`` until it is classified as well as the retained data."""
    if "relearn" not in ctx.options.checks:
        return
    modules = _modules(ctx)
    if "model" not in modules:
        ctx.notes.append("relearn time: n/a, the model is not one network (an ensemble).")
        return
    with ctx.timer("relearn"):
        lr = ctx.strategy.get_params().get("lr", RELEARN_LR)
        lr = float(lr) if isinstance(lr, (int, float)) else RELEARN_LR
        steps: dict[str, float | None] = {}
        capped = []
        for side, module in modules.items():
            target = float(np.mean(ctx.P[side]["retain"].argmax(axis=1) == ctx.labels["retain"]))
            found = relearn_steps(module, ctx.forget_set.inputs(), ctx.forget_set.y,
                                  ctx.forget_set.ids, target=target, lr=lr, seed=ctx.seed)
            if found is None:
                capped.append(side)
            steps[side] = float(RELEARN_MAX_STEPS if found is None else found)
        ctx.row("relearn.steps", SECTION, "relearn time: SGD steps on D_f to reach RA",
                steps, "count", GOOD["relearn.steps"])
        ctx.notes.append(
            f"relearn time: plain SGD (lr {lr:g}, batch {RELEARN_BATCH}, keyed order) on the "
            f"forget set until its accuracy reaches the side's own retain accuracy"
            + (f"; {', '.join(capped)} did not within {RELEARN_MAX_STEPS} steps (counted as "
               f"{RELEARN_MAX_STEPS})" if capped else "") + ".")

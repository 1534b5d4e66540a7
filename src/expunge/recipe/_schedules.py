"""Learning-rate schedules as functions of a sub-model's training progress.

A schedule is ``multiplier(progress)``: the factor applied to the base ``lr`` at a step whose
midpoint lies at ``progress`` in ``(0, 1)`` of the sub-model's **whole** training budget.
Progress is counted in epochs, never in steps, because the number of steps is not a
property of the recipe: SISA's cumulative slices lose steps as data is forgotten, and a
schedule over a total step count would change every earlier slice's learning rates (and
checkpoints) whenever any later slice shrinks. With ``E_b`` epochs before block ``b``, ``E``
epochs in the budget and ``S_b = ceil(n_b / batch_size)`` steps per epoch of block ``b``::

    progress(b, e, s) = (E_b + e + (s + 0.5) / S_b) / E

is a function of (block, epoch, step-in-block) and of the size of block ``b``'s own training
set, all of which the block's checkpoint key already covers: a request that leaves a block
unchanged leaves its learning rates unchanged, and a restarted block sees the rates
``fit(D.drop(F))`` would (docs/guarantees.md). ``E_b`` and ``E`` come from the strategy's
epoch plan, which depends on its parameters alone.

The midpoint keeps both ends useful: no step gets a zero rate at the start of a warm-up or at
the end of a cosine decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Schedule = Callable[[float], float]

#: the built-in schedules' names
SCHEDULES = ("constant", "step", "cosine", "onecycle")

#: "step": multiply by STEP_GAMMA at each of these fractions of the budget (torch's
#: MultiStepLR with milestones at 50 % and 75 %, the ResNet-paper recipe)
STEP_MILESTONES = (0.5, 0.75)
STEP_GAMMA = 0.1
#: "onecycle": torch.optim.lr_scheduler.OneCycleLR's defaults (cosine annealing, two phases)
ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4


def progress(epochs_before: int, epoch: int, step: int, steps_per_epoch: int,
             total_epochs: int) -> float:
    """Where the midpoint of a step lies in the budget (see the module docstring)."""
    return (epochs_before + epoch + (step + 0.5) / steps_per_epoch) / total_epochs


def _cosine(start: float, end: float, fraction: float) -> float:
    """Cosine interpolation from ``start`` (fraction 0) to ``end`` (fraction 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def lr_multiplier(name: str, warmup: float, p: float) -> float:
    """The built-in schedule ``name``'s factor at progress ``p`` with warm-up fraction ``warmup``.

    * ``"constant"``: 1;
    * ``"step"``: ``0.1`` after 50 % and again after 75 % of the budget;
    * ``"cosine"``: ``(1 + cos(pi q)) / 2`` over the post-warm-up fraction ``q``, down to 0;
    * ``"onecycle"``: torch's OneCycleLR: cosine from ``1/25`` up to 1 over the warm-up
      (``warmup``, or 30 % when it is 0), then cosine down to ``1/(25 * 10^4)``.

    Every schedule but ``"onecycle"`` (which has its own ramp) is multiplied during the first
    ``warmup`` of the budget by the linear warm-up ``p / warmup``.
    """
    if name == "onecycle":
        start = warmup if warmup > 0 else ONECYCLE_PCT_START
        low = 1.0 / ONECYCLE_DIV_FACTOR
        if p < start:
            return _cosine(low, 1.0, p / start)
        return _cosine(1.0, low / ONECYCLE_FINAL_DIV_FACTOR, (p - start) / (1.0 - start))
    ramp = warmup_ramp(warmup, p)
    if name == "constant":
        return ramp
    if name == "step":
        return ramp * STEP_GAMMA ** sum(p >= m for m in STEP_MILESTONES)
    if name == "cosine":
        q = max(0.0, (p - warmup) / (1.0 - warmup))
        return ramp * _cosine(1.0, 0.0, q)
    raise ValueError(f"unknown schedule {name!r}")  # validated by the parameter constraints


def warmup_ramp(warmup: float, p: float) -> float:
    """The linear warm-up factor ``min(1, p / warmup)`` (1 without warm-up)."""
    return min(1.0, p / warmup) if warmup > 0 else 1.0


def resolve_schedule(schedule: str | Schedule, warmup: float) -> Schedule:
    """``progress -> multiplier`` for a built-in name or a user callable.

    A user callable receives the progress and returns the factor (times the warm-up ramp);
    it must be a pure function of its argument: it runs in worker processes too, and
    exactness rests on it.
    """
    if callable(schedule):
        user = schedule
        return lambda p: warmup_ramp(warmup, p) * float(user(p))
    name = str(schedule)
    return lambda p: lr_multiplier(name, warmup, p)

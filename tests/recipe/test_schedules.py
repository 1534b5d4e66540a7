"""Learning-rate schedules: closed forms, and the step-level rates the loop really uses."""

from __future__ import annotations

import math

import pytest
import torch

from expunge.exceptions import InvalidParameterError
from expunge.recipe import RecipeStep, lr_multiplier, progress, resolve_schedule


def test_constant_and_warmup_closed_form():
    assert lr_multiplier("constant", 0.0, 0.3) == 1.0
    assert lr_multiplier("constant", 0.2, 0.05) == pytest.approx(0.25)
    assert lr_multiplier("constant", 0.2, 0.2) == 1.0
    assert lr_multiplier("constant", 0.2, 0.9) == 1.0


def test_step_drops_tenfold_at_half_and_three_quarters():
    assert [lr_multiplier("step", 0.0, p) for p in (0.1, 0.49, 0.5, 0.7, 0.75, 0.99)] == \
        pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_closed_form_with_and_without_warmup():
    for p in (0.0, 0.25, 0.5, 0.9):
        assert lr_multiplier("cosine", 0.0, p) == pytest.approx(0.5 * (1 + math.cos(math.pi * p)))
    # after a 20 % warm-up the cosine runs over the remaining 80 %
    assert lr_multiplier("cosine", 0.2, 0.6) == pytest.approx(0.5)
    assert lr_multiplier("cosine", 0.2, 0.1) == pytest.approx(0.5 * 1.0)  # ramp 0.5, cos 1


def test_onecycle_matches_torchs_phases():
    low, final = 1 / 25, 1 / (25 * 1e4)
    assert lr_multiplier("onecycle", 0.0, 1e-12) == pytest.approx(low)
    assert lr_multiplier("onecycle", 0.0, 0.3) == pytest.approx(1.0)
    assert lr_multiplier("onecycle", 0.0, 1.0) == pytest.approx(final)
    assert lr_multiplier("onecycle", 0.0, 0.15) == pytest.approx((low + 1) / 2)
    assert lr_multiplier("onecycle", 0.5, 0.5) == pytest.approx(1.0)  # warmup sets the peak


def test_onecycle_agrees_with_torch_onecycle_lr():
    """torch's OneCycleLR at step t of T peaks at step 0.3T - 1 and ends at T - 1: the same
    curve as ours at progress t/(T-1) with the peak at (0.3T - 1)/(T - 1)."""
    total = 101
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=total)
    for t in range(total):
        ours = lr_multiplier("onecycle", (0.3 * total - 1) / (total - 1), t / (total - 1))
        assert opt.param_groups[0]["lr"] == pytest.approx(ours, rel=1e-6, abs=1e-9)
        opt.step()
        sched.step()


def test_progress_counts_epochs_not_steps():
    # midpoint of step 1 of 4 in the 2nd epoch of a block after 3 epochs, budget 10
    assert progress(3, 1, 1, 4, 10) == pytest.approx((3 + 1 + 1.5 / 4) / 10)
    # a block with fewer samples (fewer steps) covers the same span of the budget
    first = progress(3, 0, 0, 2, 10), progress(3, 0, 1, 2, 10)
    assert first[0] > 0.3 and first[1] < 0.4


def test_user_schedule_is_multiplied_by_the_warmup():
    schedule = resolve_schedule(lambda p: 2.0, 0.5)
    assert schedule(0.25) == pytest.approx(1.0) and schedule(0.75) == 2.0


def test_step_applies_the_rate_and_refuses_a_bad_factor():
    step = RecipeStep(base_lr=0.1, schedule=resolve_schedule("cosine", 0.0), epochs_before=0,
                      total_epochs=1)
    # 2 steps per epoch: midpoints at 0.25 and 0.75
    assert step.lr_at(0, 0, 2) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    bad = RecipeStep(base_lr=0.1, schedule=lambda p: -1.0, epochs_before=0, total_epochs=1)
    with pytest.raises(InvalidParameterError, match=r"returned -1.0.*finite number >= 0"):
        bad.lr_at(0, 0, 1)

"""Devices and precision: resolution, deterministic mode, the platform in manifest and ledger.

CI has no GPU: these check the CPU paths and the bookkeeping; what runs on CUDA/MPS is
listed as unchecked in docs/recipes.md.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import expunge
import expunge.strategies.exact._recipe_options as recipe_options
from expunge.exceptions import InvalidParameterError, NondeterminismWarning
from expunge.recipe import deterministic, resolve_device


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_refused_before_anything_is_written(small_digits, tmp_path):
    with pytest.raises(InvalidParameterError, match=r"device='cuda'.*device='cpu'"):
        resolve_device("cuda")
    with pytest.raises(InvalidParameterError, match="device='cuda'"):
        expunge.SISA("logreg", device="cuda", store=tmp_path / "s").fit(small_digits)
    assert not (tmp_path / "s").exists()
    assert resolve_device("auto").type in ("cpu", "mps")


def test_deterministic_mode_is_on_inside_and_restored_after():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic(torch.device("meta")):  # any non-CPU device takes the same path
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled() == before
    with deterministic(torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() == before


def test_precision_is_recorded_and_a_platform_change_is_reported(small_digits, tmp_path,
                                                                 monkeypatch):
    store = tmp_path / "s"
    strategy = expunge.Retrain("logreg", epochs=1, precision="bf16", store=store).fit(small_digits)
    compute = json.loads((store / "manifest.json").read_text())["compute"]
    assert compute["precision"] == "bf16" and compute["platform"].endswith("; bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same platform: no warning
        report = strategy.forget([int(small_digits.ids[0])])
    assert report.details["platform"] == compute["platform"]
    assert "fit_platform" not in report.details
    monkeypatch.setattr(recipe_options, "platform", lambda device, precision: "another GPU")
    with pytest.warns(NondeterminismWarning, match="fitted on .*bf16.*'another GPU'"):
        report = strategy.forget([int(small_digits.ids[1])])
    assert report.details["fit_platform"] == compute["platform"]
    assert report.details["platform"] == "another GPU"
    assert strategy.ledger.entries()[-1].details["fit_platform"] == compute["platform"]

"""Every recipe option keeps Retrain and SISA bitwise history independent, alone and combined:
``fit(D).forget(F)`` is ``fit(D.drop(F))`` bit for bit (fingerprint and predictions), after
each of several requests, including requests that restart SISA from a late slice (so that
earlier slices' checkpoints, trained under the same schedule, are reused)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import expunge


def keyed_noise(x: torch.Tensor, keys: np.ndarray) -> torch.Tensor:
    """A user augmentation: Gaussian noise seeded by each sample's key."""
    noise = [torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(int(k)))
             for k in keys]
    return x + 0.1 * torch.stack(noise)


def margin_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.multi_margin_loss(logits, targets)


def half_then_quarter(p: float) -> float:
    return 1.0 if p < 0.5 else 0.25


OPTIONS = {
    "adamw": {"optimizer": "adamw", "weight_decay": 0.01, "lr": 0.01},
    "step": {"lr_schedule": "step"},
    "cosine+warmup": {"lr_schedule": "cosine", "warmup": 0.3},
    "onecycle": {"lr_schedule": "onecycle"},
    "callable schedule": {"lr_schedule": half_then_quarter},
    "label_smoothing": {"label_smoothing": 0.1},
    "loss": {"loss": margin_loss},
    "max_grad_norm": {"max_grad_norm": 0.05},
    "crop": {"augment": "crop"},
    "flip": {"augment": "flip"},
    "crop+flip": {"augment": "crop+flip"},
    "callable augment": {"augment": keyed_noise},
    "bf16": {"precision": "bf16"},
    "fp16": {"precision": "fp16"},
    "auto device": {"device": "auto"},
    "combined": {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01,
                 "lr_schedule": "onecycle", "warmup": 0.2, "label_smoothing": 0.05,
                 "max_grad_norm": 1.0, "augment": "crop+flip", "precision": "bf16"},
}

BASE = {
    "retrain": {"model": "logreg", "epochs": 3, "batch_size": 32, "lr": 0.1, "momentum": 0.9},
    "sisa": {"model": "logreg", "epochs": 3, "batch_size": 16, "lr": 0.1, "momentum": 0.9,
             "n_shards": 2, "n_slices": 3},
}


def make(name: str, options: dict) -> expunge.UnlearningStrategy:
    return expunge.get_strategy(name)(**{**BASE[name], **options})


def requests_for(name: str, data) -> list[list[int]]:
    ids = data.ids
    if name == "retrain":
        return [[int(ids[0])], [int(ids[10]), int(ids[200])]]
    strategy = make(name, {})
    _, slices = strategy.partition(ids)
    last = [int(i) for i in ids[slices == 2][:1]]  # restarts one shard from its last slice
    middle = [int(i) for i in ids[slices == 1][:2]]
    return [last, middle]


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("name", ["retrain", "sisa"])
def test_option_keeps_forget_equal_to_fit_without(name, option, small_digits):
    if option == "auto device" and torch.cuda.is_available():
        pytest.skip("auto resolves to CUDA here; bitwise equality is checked on CPU")
    options = OPTIONS[option]
    strategy = make(name, options).fit(small_digits)
    plain = make(name, {}).fit(small_digits)
    assert strategy.fingerprint() != plain.fingerprint() or option == "auto device", \
        "the option changed nothing: the test would not see it"
    dropped: list[int] = []
    restarts = []
    for request in requests_for(name, small_digits):
        report = strategy.forget(request)
        restarts += list(report.details.get("from_block", {}).values())
        dropped += request
        twin = make(name, options).fit(small_digits.drop(dropped))
        assert strategy.fingerprint() == twin.fingerprint()
        assert torch.equal(strategy.predict_proba(small_digits.X),
                           twin.predict_proba(small_digits.X))
    if name == "sisa":  # earlier slices were reused, so the schedule did not restart them
        assert max(restarts) > 0


def test_a_request_in_a_late_slice_keeps_the_early_slices_checkpoints(small_digits, tmp_path):
    """With a schedule over the whole budget, the first slices' checkpoints survive a request
    in the last slice unchanged (they are reused, not retrained)."""
    strategy = make("sisa", {**OPTIONS["combined"], "store": tmp_path / "s"}).fit(small_digits)
    before = set(strategy.store_.list_blobs())
    request = requests_for("sisa", small_digits)[0]
    report = strategy.forget(request)
    after = set(strategy.store_.list_blobs())
    assert list(report.details["from_block"].values()) == [2]
    kept = {b for b in before & after if b.startswith("ckpt/")}
    assert len(kept) == 2 * 3 - 1  # every checkpoint but the last slice of the one shard


@pytest.mark.slow  # a process pool starts: ~15-60 s on the shared 2-core machine
def test_a_process_pool_computes_the_same_bits_with_the_recipe(small_digits):
    """Workers train blocks with the recipe's hooks too (module-level callables pickle)."""
    options = {**OPTIONS["combined"], "augment": keyed_noise, "lr_schedule": half_then_quarter}
    serial = make("sisa", options).fit(small_digits)
    pooled = make("sisa", {**options, "executor": "process", "n_jobs": 2}).fit(small_digits)
    assert pooled.fingerprint() == serial.fingerprint()
    request = requests_for("sisa", small_digits)[0]
    serial.forget(request)
    pooled.forget(request)
    assert pooled.fingerprint() == serial.fingerprint()

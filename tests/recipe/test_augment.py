"""Keyed augmentation: per-sample keys, the built-in crop and flip, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import expunge
from expunge.data import IndexedDataset
from expunge.exceptions import DatasetError, InvalidParameterError
from expunge.recipe import crop_padding, random_crop, random_flip, sample_keys


def test_a_samples_key_depends_on_its_own_coordinates_only():
    ids = np.arange(100, dtype=np.int64)
    keys = sample_keys(7, 1, 2, 3, ids)
    assert keys.dtype == np.uint64 and len(set(keys.tolist())) == 100
    # dropping other samples leaves a sample's key alone
    assert np.array_equal(sample_keys(7, 1, 2, 3, ids[::3]), keys[::3])
    for other in [(8, 1, 2, 3), (7, 0, 2, 3), (7, 1, 1, 3), (7, 1, 2, 4)]:
        assert not np.array_equal(sample_keys(*other, ids), keys)


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16) + 1
    keys = sample_keys(0, 0, 0, 0, np.arange(2))
    out = random_crop(x, keys)
    pad = crop_padding(16, 16)
    assert pad == 2 and out.shape == x.shape
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    for n in range(2):  # some offset (dy, dx) reproduces the row exactly
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if torch.equal(padded[n, :, dy:dy + 16, dx:dx + 16], out[n])]
        assert len(matches) == 1
    # a sample's crop is the same whichever batch it is in
    assert torch.equal(random_crop(x[1:], keys[1:]), out[1:])


def test_crop_offsets_cover_every_shift_and_flip_is_fair():
    ids = np.arange(4000)
    keys = sample_keys(0, 0, 0, 0, ids)
    x = torch.zeros(len(ids), 1, 8, 8)
    x[:, :, 0, 0] = 1  # a marker pixel: where it lands gives the offset
    where = random_crop(x, keys)[:, 0].flatten(1).argmax(dim=1)
    assert len(set(where.tolist())) >= 2  # shifted into the image for dy, dx <= pad
    flipped = random_flip(x, keys)[:, 0, 0, -1] == 1
    assert 0.45 < flipped.float().mean().item() < 0.55
    assert torch.equal(random_flip(random_flip(x, keys), keys), x)  # same bit twice: identity


def test_built_ins_refuse_non_images_and_write_nothing(tmp_path):
    flat = IndexedDataset(torch.randn(40, 6), torch.arange(40) % 2)
    strategy = expunge.Retrain("logreg", augment="crop", store=tmp_path / "s", epochs=1)
    with pytest.raises(DatasetError, match=r"augment='crop' works on images.*\(N, 6\).*callable"):
        strategy.fit(flat)
    assert not (tmp_path / "s").exists()


def test_callable_gets_one_uint64_key_per_row_and_is_checked(small_digits):
    seen = []

    def record(x, keys):
        seen.append((x.shape[0], keys.dtype, len(keys)))
        return x

    expunge.Retrain("logreg", augment=record, epochs=1, batch_size=64).fit(small_digits)
    assert seen and all(n == k and dtype == np.uint64 for n, dtype, k in seen)
    with pytest.raises(InvalidParameterError,
                       match=r"returned \(1, 1, 8, 8\).*one row per input row"):
        expunge.Retrain("logreg", augment=lambda x, k: x[:1], epochs=1).fit(small_digits)


def test_bad_option_values_name_the_value_and_the_choices(small_digits):
    cases = [
        ({"augment": "rotate"}, "augment"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"warmup": 1.0}, "warmup"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"device": "tpu"}, "device"),
        ({"precision": "fp8"}, "precision"),
        ({"optimizer": "lion"}, "optimizer"),
    ]
    for options, name in cases:
        with pytest.raises(InvalidParameterError, match=rf"'{name}' parameter.*Got"):
            expunge.SISA("logreg", **options).fit(small_digits)
    with pytest.raises(InvalidParameterError, match="label_smoothing=0.1.*loss="):
        expunge.Retrain("logreg", label_smoothing=0.1, loss=torch.nn.functional.nll_loss
                        ).fit(small_digits)
    with pytest.raises(InvalidParameterError, match=r"loss=.*returned \(.*scalar tensor"):
        expunge.Retrain("logreg", epochs=1,
                        loss=lambda z, t: torch.nn.functional.cross_entropy(
                            z, t, reduction="none")).fit(small_digits)

"""ARCANE's feature maps: closed forms, keyed by the seed, row-independent bits, both paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from expunge.exceptions import InvalidParameterError
from expunge.strategies.exact import _features
from expunge.strategies.exact._features import FeatureMap, resolve_kind

pytest.importorskip("numba")


def images(n: int = 40, channels: int = 1, size: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, channels, size, size), dtype=np.float32)


def test_conv_features_are_relu_conv_then_average_pooling_on_a_4x4_grid():
    X = images(12, channels=2, size=20)
    fmap = FeatureMap("conv", 64, seed=1)  # 4 filters x 16 cells
    out = fmap.rowwise(X)
    assert out.shape == (12, 64) and out.dtype == np.float32
    filters = torch.from_numpy(fmap.filters(2))
    h = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(X), filters))  # 16x16 maps
    reference = torch.nn.functional.avg_pool2d(h, 4).flatten(1).numpy()  # windows of 16 // 4
    assert np.allclose(out, reference, atol=1e-5)
    W = fmap.filters(2).astype(np.float64) * math.sqrt(2 * 25)
    assert abs(W.mean()) < 0.2 and 0.7 < W.std() < 1.3  # N(0, 1/(C k²)) entries


def test_relu_and_projection_features_match_their_closed_forms():
    X = np.random.default_rng(1).normal(size=(30, 7))
    relu = FeatureMap("relu", 20, seed=2)
    expected = np.maximum(X @ relu.matrix(7) + relu.bias(), 0.0)
    assert np.allclose(relu.rowwise(X), expected, atol=1e-6)
    projection = FeatureMap("projection", 5, seed=2)
    assert np.allclose(projection.rowwise(X), X @ projection.matrix(7), atol=1e-6)
    assert np.array_equal(FeatureMap("pixels").rowwise(X), X.astype(np.float32))


@pytest.mark.parametrize("kind, dim", [("conv", 512), ("relu", 64), ("projection", 16)])
def test_maps_are_keyed_by_the_seed_and_row_independent(kind, dim):
    X = images(30, size=12) if kind == "conv" else np.random.default_rng(3).random((30, 9))
    a = FeatureMap(kind, dim, seed=0).rowwise(X)
    assert np.array_equal(a, FeatureMap(kind, dim, seed=0).rowwise(X))
    assert not np.array_equal(a, FeatureMap(kind, dim, seed=1).rowwise(X))
    for rows in (slice(7, 8), slice(3, 29), [29, 0, 15]):
        assert np.array_equal(FeatureMap(kind, dim, seed=0).rowwise(X[rows]), a[rows])


def test_compiled_kernels_equal_the_numpy_fallback_bitwise():
    X = images(25, channels=3, size=13, seed=4)
    filters = FeatureMap("conv", 128, seed=5).filters(3)
    assert np.array_equal(np.asarray(_features._conv_compiled(X, filters)),
                          _features._conv_numpy(X, filters, batch=7))
    T = np.random.default_rng(6).normal(size=(50, 11))
    W = FeatureMap("relu", 33, seed=7).matrix(11)
    b = FeatureMap("relu", 33, seed=7).bias()
    assert np.array_equal(np.asarray(_features._linear_compiled(T, W, b, True)),
                          _features._linear_numpy(T, W, b))
    assert np.array_equal(np.asarray(_features._linear_compiled(T, W, np.zeros(33), False)),
                          _features._linear_numpy(T, W, None))


def test_auto_picks_conv_for_images_and_relu_otherwise():
    assert resolve_kind("auto", (1, 28, 28)) == "conv"
    assert resolve_kind("auto", (3, 8, 8)) == "conv"
    assert resolve_kind("auto", (1, 4, 4)) == "relu"  # too small for 5x5 filters on a grid
    assert resolve_kind("auto", (108,)) == "relu"
    assert resolve_kind("pixels", (1, 28, 28)) == "pixels"


def test_bad_maps_are_refused():
    with pytest.raises(InvalidParameterError, match="multiple of 16"):
        FeatureMap("conv", 100)
    with pytest.raises(InvalidParameterError, match="image inputs"):
        FeatureMap("conv").check_input((108,))
    with pytest.raises(InvalidParameterError, match="Unknown feature map"):
        FeatureMap("fourier")


def test_empty_inputs_give_empty_features():
    assert FeatureMap("conv", 512).rowwise(np.zeros((0, 1, 28, 28), np.float32)).shape == (0, 512)
    assert FeatureMap("relu", 8).rowwise(np.zeros((0, 5))).shape == (0, 8)

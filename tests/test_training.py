"""The training loop, the epoch schedule and keyed hashing, against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expunge._hashing import derive_key, keyed_order, keyed_uniform
from expunge.exceptions import InvalidParameterError, UnknownModelError, UnsupportedModelError
from expunge.models import available_models, build_model, seeded_init
from expunge.training import EpochKey, TrainConfig, epoch_schedule, make_optimizer, train_epochs


@pytest.mark.parametrize("epochs, slices", [(20, 5), (20, 1), (10, 4), (7, 3), (3, 6), (50, 20)])
def test_epoch_schedule_matches_the_reference_formula(epochs, slices):
    avg = 2 * epochs / (slices + 1)
    reference = [int(np.floor((r + 1) * avg)) - int(np.floor(r * avg)) for r in range(slices)]
    assert epoch_schedule(epochs, slices) == reference
    # the total budget is about e full-shard epochs: sum_r e_r (r+1)/R ~ e
    budget = sum(e * (r + 1) / slices for r, e in enumerate(reference))
    assert abs(budget - epochs) <= epochs * 0.5 / slices + 1


def test_sisa_example_from_the_spec():
    assert epoch_schedule(20, 5) == [6, 7, 7, 6, 7]


def test_keyed_order_is_position_free():
    ids = np.arange(500, dtype=np.int64) * 7 + 3
    key = derive_key(1, "order", 0, 0, 0)
    full = ids[keyed_order(key, ids)]
    removed = {10, 17, 451}
    kept = np.array([i for i in ids if i not in {ids[k] for k in removed}])
    shuffled = kept[np.random.default_rng(0).permutation(len(kept))]
    assert np.array_equal(shuffled[keyed_order(key, shuffled)],
                          np.array([i for i in full if i in set(kept.tolist())]))
    assert not np.array_equal(full, ids[keyed_order(derive_key(1, "order", 0, 0, 1), ids)])


def test_keyed_uniform_is_uniform_and_keyed():
    u = keyed_uniform(derive_key(0, "shard"), np.arange(100_000))
    assert u.min() >= 0 and u.max() < 1
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert counts.min() > 9_500 and counts.max() < 10_500
    assert derive_key(0, "shard") != derive_key(0, "slice") != derive_key(1, "shard")


def test_training_is_deterministic_and_sees_each_sample_once_per_epoch():
    X = torch.randn(50, 4)
    y = (X[:, 0] > 0).long()
    ids = np.arange(100, 150)
    seen: list[int] = []

    def counting_loss(module, xb, yb):
        seen.extend(int(v) for v in xb[:, 1].mul(1e6).round().tolist())
        return torch.nn.functional.cross_entropy(module(xb), yb)

    def run(loss=None):
        module = seeded_init(0, lambda: build_model("logreg", (4,), 2))
        config = TrainConfig(epochs=2, batch_size=8, lr=0.1, momentum=0.9)
        optimizer = make_optimizer(module, config)
        keys = [EpochKey(0, 0, 0, e) for e in range(2)]
        kwargs = {"loss_fn": loss} if loss else {}
        steps = train_epochs(module, optimizer, X, y, ids, config=config, keys=keys, **kwargs)
        return module, steps

    a, steps = run(counting_loss)
    b, _ = run()
    assert steps == 2 * 7
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    per_epoch = len(seen) // 2
    marks = X[:, 1].mul(1e6).round().long().tolist()
    assert sorted(seen[:per_epoch]) == sorted(marks) == sorted(seen[per_epoch:])
    assert seen[:per_epoch] != seen[per_epoch:]  # reshuffled between epochs


def test_dropout_is_keyed_not_global():
    X = torch.randn(40, 6)
    y = torch.randint(0, 3, (40,))
    config = TrainConfig(epochs=1, batch_size=8)

    def run(global_seed):
        torch.manual_seed(global_seed)  # the caller's global RNG must not matter
        module = seeded_init(0, lambda: build_model("mlp", (6,), 3, {"dropout": 0.5}))
        train_epochs(module, make_optimizer(module, config), X, y, np.arange(40),
                     config=config, keys=[EpochKey(0, 0, 0, 0)])
        return torch.cat([p.flatten() for p in module.parameters()])

    state = torch.random.get_rng_state()
    assert torch.equal(run(1), run(2))
    torch.random.set_rng_state(state)


def test_train_config_validation():
    with pytest.raises(InvalidParameterError,
                       match="optimizer must be 'sgd', 'adam' or 'adamw'; got 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="epochs must be an int >= 1; got 0"):
        TrainConfig(epochs=0)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (64,), (784,)])
def test_reference_models_build_for_supported_inputs(shape):
    for name in available_models():
        module = build_model(name, shape, 10)
        assert module(torch.zeros(3, *shape)).shape == (3, 10)


def test_model_errors_name_the_problem():
    with pytest.raises(UnknownModelError, match="'resnet'.*Available: lenet, logreg, mlp"):
        build_model("resnet", (4,), 2)
    with pytest.raises(UnsupportedModelError, match="lenet takes 1x28x28 or 1x8x8"):
        build_model("lenet", (1, 32, 32), 10)
    with pytest.raises(UnsupportedModelError, match="not an nn.Module"):
        build_model(lambda: "nope", (4,), 2)


def test_custom_factories_with_and_without_shape_arguments():
    no_args = build_model(lambda: torch.nn.Linear(4, 2), (4,), 2)
    with_args = build_model(lambda input_shape, n_classes: torch.nn.Linear(input_shape[0],
                                                                           n_classes), (4,), 3)
    assert no_args.out_features == 2 and with_args.out_features == 3

"""export() and load_exported(); model factories named by import strings (API and CLI)."""

from __future__ import annotations

import json
import sys
import uuid

import numpy as np
import pytest
import torch

import expunge
from expunge.cli import main
from expunge.exceptions import StoreMismatchError, UnknownModelError, UnsupportedModelError
from expunge.export import RECIPE_FILE, WEIGHTS_FILE, ExportedClassifier, load_exported

NETS = '''
import torch
from torch import nn


def make_net(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), 16),
                         nn.ReLU(), nn.Linear(16, n_classes))


def smooth_loss(logits, targets):
    return nn.functional.cross_entropy(logits, targets, label_smoothing=0.05)
'''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """A fresh importable module (its own name, so tests never share a cached import)."""
    name = f"nets_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(folder))
    return name, folder


CASES = {
    "retrain": {"model": "mlp", "epochs": 2, "batch_size": 32, "lr_schedule": "cosine"},
    "sisa vote": {"model": "mlp", "n_shards": 3, "n_slices": 2, "epochs": 2,
                  "aggregation": "vote", "augment": "flip"},
    "sisa mean": {"model": "logreg", "n_shards": 3, "n_slices": 2, "epochs": 2,
                  "aggregation": "mean"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_forward_is_exactly_predict_proba(case, digits, tmp_path):
    train, test = digits
    name = "retrain" if case == "retrain" else "sisa"
    strategy = expunge.get_strategy(name)(**CASES[case]).fit(train)
    strategy.forget(train.ids[:5])
    module = strategy.export()
    assert type(module) is ExportedClassifier and isinstance(module, torch.nn.Module)
    assert len(module.members) == (1 if name == "retrain" else 3)
    expected = strategy.predict_proba(test.X)
    assert torch.equal(module(test.X), expected)
    # written, and read back without pickle: safetensors + JSON
    strategy.export(tmp_path / "out")
    recipe = json.loads((tmp_path / "out" / RECIPE_FILE).read_text())
    assert recipe["strategy"] == name and recipe["fingerprint"] == strategy.fingerprint()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [RECIPE_FILE, WEIGHTS_FILE]
    loaded = load_exported(tmp_path / "out")
    assert torch.equal(loaded(test.X), expected)
    # the export is a copy: using it does not touch the live model
    with torch.no_grad():
        next(module.parameters()).add_(1.0)
    assert torch.equal(strategy.predict_proba(test.X), expected)


def test_export_scripts_and_traces(digits):
    train, test = digits
    strategy = expunge.SISA("mlp", n_shards=2, n_slices=1, epochs=1).fit(train)
    module = strategy.export()
    expected = strategy.predict_proba(test.X)
    assert torch.equal(torch.jit.script(module)(test.X), expected)
    assert torch.equal(torch.jit.trace(module, test.X[:4])(test.X), expected)


def test_export_of_a_custom_callable_model_needs_it_again(digits, tmp_path, nets):
    train, test = digits
    module_name, _ = nets
    factory = __import__(module_name).make_net
    strategy = expunge.Retrain(factory, epochs=1).fit(train)
    strategy.export(tmp_path / "out")
    with pytest.raises(StoreMismatchError, match=r"custom model.*make_net.*model=\.\.\."):
        load_exported(tmp_path / "out")
    with pytest.raises(StoreMismatchError, match="same function"):
        load_exported(tmp_path / "out", model=lambda input_shape, n_classes: None)
    assert torch.equal(load_exported(tmp_path / "out", model=factory)(test.X),
                       strategy.predict_proba(test.X))


def test_strategies_without_a_single_module_say_so(small_digits):
    arcane = expunge.get_strategy("arcane")
    strategy = arcane(**arcane._test_params()).fit(small_digits)
    with pytest.raises(UnsupportedModelError, match="cannot be exported.*retrain, sisa"):
        strategy.export()


def test_import_string_model_is_recorded_and_found_again(digits, tmp_path, nets):
    train, test = digits
    module_name, _ = nets
    spec = f"{module_name}:make_net"
    store = tmp_path / "s"
    strategy = expunge.Retrain(spec, loss=f"{module_name}:smooth_loss", epochs=1,
                               store=store).fit(train)
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["params"]["model"] == spec
    assert manifest["params"]["loss"] == f"{module_name}:smooth_loss"
    assert manifest["compute"]["device"] == "cpu" and "torch" in manifest["compute"]["platform"]
    strategy.close()
    reopened = expunge.open(store)  # no model= needed: the string finds the factory
    assert reopened.fingerprint() == strategy.fingerprint()
    reopened.forget(train.ids[:3])
    twin = expunge.Retrain(spec, loss=f"{module_name}:smooth_loss", epochs=1).fit(
        train.drop(train.ids[:3]))
    assert reopened.fingerprint() == twin.fingerprint()
    reopened.close()


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:make", r"Cannot import model='no_such_module_xyz:make'.*PYTHONPATH"),
    ("json:no_such_factory", r"module 'json' has no attribute 'no_such_factory'"),
    ("json:__doc__", "not a callable"),
])
def test_unimportable_model_fails_before_anything_is_written(spec, message, small_digits,
                                                             tmp_path):
    with pytest.raises(UnknownModelError, match=message):
        expunge.SISA(spec, store=tmp_path / "s").fit(small_digits)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", expunge.available_strategies())
def test_every_strategy_checks_a_model_import_string_first(name, small_digits, tmp_path):
    cls = expunge.get_strategy(name)
    with pytest.raises(UnknownModelError, match="Cannot import model='no_such_module_xyz:f'"):
        cls(**{**cls._test_params(), "model": "no_such_module_xyz:f"},
            store=tmp_path / "s").fit(small_digits)
    assert not (tmp_path / "s").exists()


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_fits_and_forgets_with_the_users_model(capsys, tmp_path, nets, monkeypatch):
    module_name, folder = nets
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(folder)])
    monkeypatch.chdir(folder)  # the CLI looks in the current directory, like python -m
    store = str(tmp_path / "s")
    code, _, err = run(capsys, "fit", "--strategy", "sisa", "--store", store, "--model",
                       f"{module_name}:make_net", "--n-shards", "2", "--n-slices", "2",
                       "--epochs", "2", "--lr-schedule", "cosine", "--augment", "crop+flip",
                       "--loss", f"{module_name}:smooth_loss", "--max-grad-norm", "2",
                       "--quiet")
    assert code == 0, err
    recorded = json.loads((tmp_path / "s" / "manifest.json").read_text())["params"]
    assert (recorded["augment"], recorded["max_grad_norm"]) == ("crop+flip", 2.0)
    assert recorded["loss"] == f"{module_name}:smooth_loss"
    code, out, err = run(capsys, "forget", "--store", store, "--ids", "1,2")
    assert code == 0 and "request #2" in out, err
    code, out, err = run(capsys, "export", "--store", store, "--out", str(tmp_path / "serve"))
    assert code == 0 and "exported to" in out, err
    strategy = expunge.open(store)
    test = strategy.training_data.X[:50]
    assert torch.equal(load_exported(tmp_path / "serve")(test), strategy.predict_proba(test))
    strategy.close()
    # elsewhere, without the module: a clear one-line error, exit code 2
    sys.modules.pop(module_name, None)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(folder)])
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "forget", "--store", store, "--ids", "3")
    assert code == 2
    assert f"Cannot import model='{module_name}:make_net'" in err and "PYTHONPATH" in err


def test_cli_imports_a_callable_recorded_by_the_python_api(capsys, tmp_path, nets, digits):
    module_name, _ = nets
    factory = __import__(module_name).make_net
    store = tmp_path / "s"
    expunge.Retrain(factory, epochs=1, store=store).fit(digits[0]).close()
    code, out, err = run(capsys, "forget", "--store", str(store), "--ids", "4")
    assert code == 0, err
    strategy = expunge.open(store, model=factory)
    assert np.array_equal(strategy.forgotten_ids, [4])
    strategy.close()

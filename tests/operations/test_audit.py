"""Replay audit: an honest store passes; any altered checkpoint fails."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import expunge
from expunge.exceptions import InvalidParameterError
from expunge.store import _layout as layout

EXACT = [n for n in expunge.available_strategies()
         if expunge.get_strategy(n).guarantee == "exact"]


def make(name: str, **overrides):
    cls = expunge.get_strategy(name)
    return cls(**{**cls._test_params(), **overrides})


def checkpoints(m) -> list[str]:
    return sorted(b for b in m.store_.list_blobs() if b.startswith("ckpt/"))


def alter(path, *, tensor: str | None = None, metadata: bool = False) -> bytes:
    """Change one value of one tensor (or the metadata) of a safetensors file in place;
    return the original bytes so that the caller can restore them."""
    original = path.read_bytes()
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata() or {})
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    if metadata:
        meta["info"] = meta.get("info", "{}")[:-1] + ', "x": 1}'
    else:
        name = tensor or next(k for k in sorted(tensors) if tensors[k].is_floating_point())
        flat = tensors[name].reshape(-1).clone()
        flat[0] = flat[0] + 1e-6 if flat[0] != 0 else 1e-30
        tensors[name] = flat.reshape(tensors[name].shape)
    save_file(tensors, str(path), metadata=meta)
    return original


@pytest.mark.parametrize("name", EXACT)
def test_an_honest_store_passes_after_requests_and_reopen(name, small_digits, tmp_path):
    m = make(name, store=tmp_path / "s").fit(small_digits)
    m.forget([int(small_digits.ids[0])])
    m.forget([int(i) for i in small_digits.ids[10:16]])
    m.close()
    m = expunge.open(tmp_path / "s")
    report = m.audit()
    assert report.replayable and report.passed, report.mismatches
    assert report.submodels_checked == list(range(report.submodels_total))
    assert report.checkpoints_checked == report.checkpoints_matched == len(checkpoints(m))
    assert report.detection_probability == 1.0 and report.sample_passes > 0
    m.close()


def test_every_altered_checkpoint_fails_the_audit(small_digits, tmp_path):
    m = make("sisa", store=tmp_path / "s").fit(small_digits)
    m.forget([int(small_digits.ids[3])])
    names = checkpoints(m)
    assert len(names) == 6
    for blob in names:
        path = layout.blob_path(tmp_path / "s", blob)
        original = alter(path)
        report = m.audit()
        path.write_bytes(original)
        assert report.passed is False, blob
        assert any(blob in line for line in report.mismatches), (blob, report.mismatches)
    assert m.audit().passed


@pytest.mark.parametrize("what", ["optimizer", "ids", "metadata"])
def test_optimizer_state_ids_and_metadata_are_compared_too(what, small_digits, tmp_path):
    m = make("sisa", store=tmp_path / "s").fit(small_digits)
    blob = checkpoints(m)[0]
    path = layout.blob_path(tmp_path / "s", blob)
    if what == "optimizer":
        with safe_open(str(path), framework="pt") as handle:
            name = next(k for k in handle.keys() if k.startswith("optim."))  # noqa: SIM118
        alter(path, tensor=name)
    elif what == "ids":
        with safe_open(str(path), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
            meta = handle.metadata()
        tensors["ids_trained"] = torch.cat([tensors["ids_trained"][:-1],
                                            torch.tensor([999_999])])
        save_file(tensors, str(path), metadata=meta)
    else:
        alter(path, metadata=True)
    report = m.audit()
    assert report.passed is False and report.mismatches


def test_a_request_that_skipped_retraining_fails_although_verify_passes(
        small_digits, tmp_path, monkeypatch):
    """Lazy "unlearning": a request that records new checkpoints without training them. The
    digests and the ledger are consistent (verify passes); only the replay can tell."""
    m = make("sisa", store=tmp_path / "s").fit(small_digits)
    with monkeypatch.context() as patch:  # the class's own block step (SISA overrides it)
        patch.setattr(type(m), "_train_block", lambda *args, **kwargs: None)
        m.forget([int(small_digits.ids[7])])
    assert m.verify() == 2
    report = m.audit()
    assert report.passed is False
    assert any("differs from the replay" in line for line in report.mismatches)


def test_a_model_trained_on_other_data_fails(small_digits, tmp_path):
    """A store whose checkpoints are those of another data set (e.g. one that never
    forgot a sample) fails, although each file is a genuine checkpoint."""
    honest = make("retrain", store=tmp_path / "a").fit(small_digits)
    cheat = make("retrain", store=tmp_path / "b").fit(small_digits)
    cheat.forget([5])
    # replace the forgetful store's checkpoint by the one trained with sample 5
    (blob,) = checkpoints(cheat)
    (kept,) = checkpoints(honest)
    layout.blob_path(tmp_path / "b", blob).write_bytes(
        layout.blob_path(tmp_path / "a", kept).read_bytes())
    report = cheat.audit()
    assert report.passed is False


def test_random_subsets_are_reproducible_and_cheaper(small_digits):
    m = make("sisa", n_shards=5, n_slices=2).fit(small_digits)
    full = m.audit()
    first = m.audit(2, seed=11)
    again = m.audit(2, seed=11)
    assert first.passed and first.submodels_checked == again.submodels_checked
    assert len(first.submodels_checked) == 2 and first.detection_probability == 0.4
    assert first.sample_passes < full.sample_passes
    drawn = m.audit(1)
    assert drawn.seed is not None
    assert m.audit(1, seed=drawn.seed).submodels_checked == drawn.submodels_checked
    assert m.audit([0, 4]).submodels_checked == [0, 4]
    for bad in (0, 6, "some", [7]):
        with pytest.raises(InvalidParameterError):
            m.audit(bad)


def test_approximate_strategies_report_no_replay_guarantee(small_digits):
    m = make("puma").fit(small_digits)
    report = m.audit()
    assert not report.replayable and report.passed is None
    assert "no replay guarantee" in report.note


def test_cli_audit(small_digits, tmp_path, capsys):
    from expunge.cli import main

    store = str(tmp_path / "s")
    assert main(["fit", "sisa", "--store", store, "--model", "logreg", "--n-shards", "3",
                 "--n-slices", "2", "--epochs", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["audit", "--store", store, "--submodels", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "2 of 3" in out
    m = expunge.open(store)
    first, last = checkpoints(m)[0], checkpoints(m)[-1]  # block 0 of sub-model 0; the last
    m.close()
    original = alter(layout.blob_path(tmp_path / "s", first))  # an intermediate checkpoint
    assert main(["audit", "--store", store, "--quiet"]) == 1
    assert "audit FAILED" in capsys.readouterr().err
    layout.blob_path(tmp_path / "s", first).write_bytes(original)
    alter(layout.blob_path(tmp_path / "s", last))  # a final one: the store refuses to open
    assert main(["audit", "--store", store, "--quiet"]) == 2
    assert "does not match the digest" in capsys.readouterr().err

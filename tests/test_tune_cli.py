"""`expunge tune`: the wrapper around the tuning spec (the protocol itself runs in
`bench all --quick`, see test_bench.py)."""

from __future__ import annotations

from expunge.cli import main


def test_tune_refuses_a_strategy_without_a_grid(tmp_path, capsys):
    assert main(["tune", "retrain", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "No tuning grid for ['retrain']" in err and "finetune" in err


def test_tune_refuses_a_spec_of_another_kind(tmp_path, capsys):
    from expunge.bench import spec_dir

    spec = spec_dir() / "e3_membership.toml"
    assert main(["tune", "--spec", str(spec), "--out", str(tmp_path)]) == 2
    assert "not a tuning spec" in capsys.readouterr().err
